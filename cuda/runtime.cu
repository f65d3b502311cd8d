// Device memory, copies and streams behind device.h: CUDA's runtime under nvcc, host memory in the
// emulation build. The one place the backend allocates; every failure throws (file:line and CUDA's
// own error text, or OutOfMemory with the request), and a failed call leaves nothing allocated.
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "device.h"

#if defined(__CUDACC__)
#include "check.h"
#else
#include <unistd.h>
#endif

namespace rnnkit {
namespace cuda {

#if defined(__CUDACC__)

void check_launch(const char* file, int line) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, "kernel launch", file, line);
}

void* device_alloc(std::size_t bytes, const char* what_for) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not sticky: clear it, the device stays usable
    throw OutOfMemory(bytes, concat(what_for, " (CUDA device memory)"));
  }
  if (err != cudaSuccess) throw_cuda_error(err, "cudaMalloc", __FILE__, __LINE__);
  return p;
}

void device_free(void* p) noexcept {
  if (p != nullptr) cudaFree(p);
}

void copy_to_device(void* dst, const void* src, std::size_t bytes, Stream stream) {
  if (bytes == 0) return;
  RNNKIT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)));
}

void copy_to_host(void* dst, const void* src, std::size_t bytes, Stream stream) {
  if (bytes == 0) return;
  RNNKIT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)));
  RNNKIT_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

void copy_on_device(void* dst, const void* src, std::size_t bytes, Stream stream) {
  if (bytes == 0) return;
  RNNKIT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream)));
}

void zero_on_device(void* dst, std::size_t bytes, Stream stream) {
  if (bytes == 0) return;
  RNNKIT_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, static_cast<cudaStream_t>(stream)));
}

void synchronize(Stream stream) { RNNKIT_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream))); }

void memory_info(std::size_t* free_bytes, std::size_t* total_bytes) {
  RNNKIT_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

#else  // RNNKIT_CUDA_EMULATE: host memory, streams that run at once

void* device_alloc(std::size_t bytes, const char* what_for) {
  // 256-byte alignment, as cudaMalloc guarantees (kernels may rely on it for vector loads).
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  if (p == nullptr) throw OutOfMemory(bytes, concat(what_for, " (emulated CUDA device memory)"));
  return p;
}

void device_free(void* p) noexcept { std::free(p); }

void copy_to_device(void* dst, const void* src, std::size_t bytes, Stream) {
  if (bytes != 0) std::memcpy(dst, src, bytes);
}
void copy_to_host(void* dst, const void* src, std::size_t bytes, Stream) {
  if (bytes != 0) std::memcpy(dst, src, bytes);
}
void copy_on_device(void* dst, const void* src, std::size_t bytes, Stream) {
  if (bytes != 0) std::memmove(dst, src, bytes);
}
void zero_on_device(void* dst, std::size_t bytes, Stream) {
  if (bytes != 0) std::memset(dst, 0, bytes);
}
void synchronize(Stream) {}

void memory_info(std::size_t* free_bytes, std::size_t* total_bytes) {
  const long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  *total_bytes = pages > 0 && page > 0 ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(page) : 0;
  *free_bytes = avail > 0 && page > 0 ? static_cast<std::size_t>(avail) * static_cast<std::size_t>(page) : 0;
}

#endif

}  // namespace cuda
}  // namespace rnnkit
