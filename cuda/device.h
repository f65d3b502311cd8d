// The CUDA backend's portability layer: how a kernel is written, launched, and given memory, so that
// one source compiles two ways (docs/cuda.md, ../shared/notes/cuda-emulation.md):
//
//   * nvcc (RNNKIT_CUDA=1): kernels run on the GPU; memory is device memory; a stream is a CUDA
//     stream; launch errors throw with file:line;
//   * the host compiler (RNNKIT_CUDA_EMULATE=1): the same kernel bodies run over the same grid on
//     the CPU, block by block and thread by thread; "device" memory is host memory; a stream runs
//     its work at once, in order.
//
// A kernel is a small struct (a "body") with the arguments as members and
//   RNNKIT_DEVICE void operator()(const Thread& t) const
// doing one thread's work, usually a grid-stride loop over t.global() ... < work. The body reads its
// indices from `t`, never from CUDA's built-in variables, so the emulation can hand it any. A body
// with barriers (__syncthreads, a grid sync) is written as phases between them instead
// (launch_phases), which the emulation runs in lock step.
//
// Nothing here or in the bodies may use a CUDA API type in a header the bindings include: the
// bindings see only rnnkit_cuda.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include "rnnkit/common.h"

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#define RNNKIT_DEVICE __device__ __forceinline__
#elif defined(RNNKIT_CUDA_EMULATE)
#define RNNKIT_DEVICE inline
#else
#error "cuda/device.h: compile with nvcc, or with RNNKIT_CUDA_EMULATE defined"
#endif

namespace rnnkit {
namespace cuda {

// A stream: cudaStream_t under nvcc (0 = the legacy default stream), unused in the emulation.
using Stream = void*;

// One thread's identity, in one dimension (every kernel of the backend is one-dimensional).
struct Thread {
  index_t block = 0;       // blockIdx.x
  index_t thread = 0;      // threadIdx.x
  index_t block_dim = 1;   // blockDim.x
  index_t grid_dim = 1;    // gridDim.x

  RNNKIT_DEVICE index_t global() const { return block * block_dim + thread; }
  RNNKIT_DEVICE index_t stride() const { return grid_dim * block_dim; }
};

constexpr int kBlockThreads = 256;
// Enough blocks to fill a large GPU several times over; grid-stride loops cover the rest.
constexpr index_t kMaxBlocks = 4096;

inline index_t blocks_for(index_t work) {
  const index_t b = (work + kBlockThreads - 1) / kBlockThreads;
  return b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b);
}

#if defined(__CUDACC__)
template <typename Body>
__global__ void __launch_bounds__(kBlockThreads) run_body(Body body) {
  body(Thread{blockIdx.x, threadIdx.x, blockDim.x, gridDim.x});
}
void check_launch(const char* file, int line);  // cudaGetLastError, thrown with file:line
#endif

// Runs `body` over enough threads for `work` items (body loops grid-stride over them) on `stream`.
template <typename Body>
void launch(Stream stream, index_t work, const Body& body, const char* file, int line) {
  if (work <= 0) return;
  const index_t blocks = blocks_for(work);
#if defined(__CUDACC__)
  run_body<Body><<<static_cast<unsigned>(blocks), kBlockThreads, 0, static_cast<cudaStream_t>(stream)>>>(body);
  check_launch(file, line);
#else
  (void)stream;
  (void)file;
  (void)line;
  Thread t;
  t.block_dim = kBlockThreads;
  t.grid_dim = blocks;
  for (t.block = 0; t.block < blocks; ++t.block) {
    for (t.thread = 0; t.thread < kBlockThreads; ++t.thread) body(t);
  }
#endif
}

#define RNNKIT_LAUNCH(stream, work, body) ::rnnkit::cuda::launch((stream), (work), (body), __FILE__, __LINE__)

// ---- memory and streams (runtime.cpp) ---------------------------------------------------------
// Every failure throws: OutOfMemory for an allocation (with the byte count and purpose), else
// std::runtime_error with file:line and CUDA's error text.
void* device_alloc(std::size_t bytes, const char* what_for);
void device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, std::size_t bytes, Stream stream);
void copy_to_host(void* dst, const void* src, std::size_t bytes, Stream stream);  // synchronises
void copy_on_device(void* dst, const void* src, std::size_t bytes, Stream stream);
void zero_on_device(void* dst, std::size_t bytes, Stream stream);
void synchronize(Stream stream);
// Free and total device memory in bytes.
void memory_info(std::size_t* free_bytes, std::size_t* total_bytes);

// An owning device allocation of `count` elements of T, allocated once per call and carved into
// named views (the CPU's Buffer, on the device).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(index_t count, const char* what_for) { allocate(count, what_for); }
  ~DeviceBuffer() { device_free(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void allocate(index_t count, const char* what_for) {
    device_free(data_);
    data_ = nullptr;
    size_ = 0;
    if (count > 0) {
      data_ = static_cast<T*>(device_alloc(static_cast<std::size_t>(checked_mul(count, sizeof(T), what_for)),
                                           what_for));
    }
    size_ = count;
  }
  T* data() const { return data_; }
  index_t size() const { return size_; }

 private:
  T* data_ = nullptr;
  index_t size_ = 0;
};

}  // namespace cuda
}  // namespace rnnkit
