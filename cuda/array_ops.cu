// Elementwise array operations the bindings' DeviceArray needs besides copies (rnnkit_cuda.h): the
// swap of the two leading axes (batch_first <-> time-major layouts) and zeroing.
#include <cstdint>

#include "device.h"
#include "rnnkit_cuda.h"

namespace rnnkit {
namespace cuda {
namespace {

// out [B, A, C] from in [A, B, C]: element (a, b, c) moves to (b, a, c). One thread per output
// element (consecutive threads write consecutive c).
template <typename T>
struct SwapLeadingAxes {
  index_t A, B, C;
  const T* in;
  T* out;

  RNNKIT_DEVICE void operator()(const Thread& t) const {
    for (index_t i = t.global(); i < A * B * C; i += t.stride()) {
      const index_t c = i % C, ab = i / C, a = ab % A, b = ab / A;
      out[i] = in[(a * B + b) * C + c];
    }
  }
};

}  // namespace

void swap_leading_axes(const void* in, void* out, std::int64_t A, std::int64_t B, std::int64_t C, int elem_bytes) {
  if (elem_bytes == 4) {
    RNNKIT_LAUNCH(current_stream(), A * B * C,
                  (SwapLeadingAxes<std::uint32_t>{A, B, C, static_cast<const std::uint32_t*>(in),
                                                  static_cast<std::uint32_t*>(out)}));
  } else {
    RNNKIT_LAUNCH(current_stream(), A * B * C,
                  (SwapLeadingAxes<std::uint64_t>{A, B, C, static_cast<const std::uint64_t*>(in),
                                                  static_cast<std::uint64_t*>(out)}));
  }
  synchronize(current_stream());
}

void zero_device_bytes(void* dst, std::size_t bytes) {
  zero_on_device(dst, bytes, current_stream());
  synchronize(current_stream());
}

void synchronize_stream(std::uintptr_t stream) {
  // 1 and 2 (the legacy and per-thread default streams in both protocols) are CUDA's own handles
  // for them (cudaStreamLegacy, cudaStreamPerThread).
  synchronize(reinterpret_cast<Stream>(stream));
}

}  // namespace cuda
}  // namespace rnnkit
