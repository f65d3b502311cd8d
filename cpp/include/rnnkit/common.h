// Shared basics for every backend of the rnnkit core: index type, the host/device annotation used
// by the cell math, checked size arithmetic, and the kinds of failure the library distinguishes.
//
//  * User errors (bad shapes, sizes, options) throw std::invalid_argument whose text names the
//    argument and says "expected ... got ..."; pybind11 turns them into ValueError.
//  * Allocation failures throw rnnkit::OutOfMemory with the byte count asked for; the module
//    registers it as MemoryError.
//  * Internal invariants use assert(): they can only fail through a bug in rnnkit itself.
// Nothing in the core ever calls exit() or abort() on user input.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define RNNKIT_HOSTDEVICE __host__ __device__ __forceinline__
#else
#define RNNKIT_HOSTDEVICE inline
#endif

namespace rnnkit {

using index_t = std::int64_t;

// Largest dimension of one GEMM call: the BLAS (scipy-openblas32) and cuBLAS take 32-bit ints.
constexpr index_t kMaxGemmDim = 2147483647;

// Concatenates its arguments with operator<< (used to build error messages).
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

// Throws std::invalid_argument("<what>: expected <expected>, got <got>").
template <typename E, typename G>
[[noreturn]] void throw_expected(const std::string& what, const E& expected, const G& got) {
  throw std::invalid_argument(concat(what, ": expected ", expected, ", got ", got));
}

// Raised when a buffer cannot be allocated; carries the request so the message can say how much.
class OutOfMemory : public std::bad_alloc {
 public:
  OutOfMemory(std::size_t bytes, const std::string& what_for)
      : message_(concat("rnnkit could not allocate ", bytes, " bytes for ", what_for)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

// a*b for sizes, refusing to wrap around: every buffer size goes through this.
// An overflowing size is reported as an impossible allocation (MemoryError in Python).
inline index_t checked_mul(index_t a, index_t b, const char* what) {
  assert(a >= 0 && b >= 0);
  if (a != 0 && b > std::numeric_limits<index_t>::max() / a) {
    throw OutOfMemory(std::numeric_limits<std::size_t>::max(), concat(what, " (size overflows 64 bits)"));
  }
  return a * b;
}

inline index_t checked_add(index_t a, index_t b, const char* what) {
  assert(a >= 0 && b >= 0);
  if (b > std::numeric_limits<index_t>::max() - a) {
    throw OutOfMemory(std::numeric_limits<std::size_t>::max(), concat(what, " (size overflows 64 bits)"));
  }
  return a + b;
}

// SplitMix64's finaliser: a well-mixed 64-bit value from a counter, so a stream of random numbers
// can be indexed (element i of a dropout mask, draw i of a sampler) instead of generated in order.
RNNKIT_HOSTDEVICE std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// bfloat16 as its bits (precision="bfloat16"): the upper half of a float32. One definition for
// both backends' rounding, so the CPU's GEMMs and the CUDA backend's see the same operands.
using bf16_t = std::uint16_t;

// float -> bf16, round to nearest even; NaN stays NaN (quiet), infinities stay infinite.
RNNKIT_HOSTDEVICE bf16_t to_bf16(float f) {
#if defined(__CUDA_ARCH__)
  std::uint32_t u = __float_as_uint(f);
#else
  std::uint32_t u;
  static_assert(sizeof u == sizeof f);
  __builtin_memcpy(&u, &f, sizeof u);
#endif
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<bf16_t>(u >> 16);
}
RNNKIT_HOSTDEVICE float from_bf16(bf16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
#endif
}

}  // namespace rnnkit
