// Small helpers shared by the CPU loop files (layer_cpu.cpp, stack_cpu.cpp, network_cpu.cpp):
// Eigen maps over raw buffers, size-checked copies, and the seed mixer behind dropout masks and
// sampling. Internal to the CPU backend (not installed, not seen by nvcc).
#pragma once

#include <cstdint>
#include <cstring>

#include <Eigen/Core>

#include "rnnkit/common.h"

namespace rnnkit {
namespace cpu {

// n contiguous values as an Eigen array, so elementwise work runs on Eigen's SIMD loops.
template <typename S>
using Vec = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>;
template <typename S>
using ConstVec = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;

// memcpy/memset of n elements; n <= 0 does nothing (empty views may carry null pointers).
template <typename S>
void copy_n(S* dst, const S* src, index_t n) {
  if (n > 0) std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(S));
}

template <typename S>
void zero_n(S* dst, index_t n) {
  if (n > 0) std::memset(dst, 0, static_cast<std::size_t>(n) * sizeof(S));
}

// SplitMix64's finaliser: a well-mixed 64-bit value from a counter, so a stream of random numbers
// can be indexed (element i of a dropout mask) instead of generated in order.
inline std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace cpu
}  // namespace rnnkit
