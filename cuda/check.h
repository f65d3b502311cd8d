// Error checks for CUDA and cuBLAS calls: failures throw std::runtime_error carrying file:line and
// the library's own error text (never exit()); pybind11 reports them as RuntimeError.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace rnnkit {
namespace cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr +
                           " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace rnnkit

#define RNNKIT_CUDA_CHECK(expr)                                                       \
  do {                                                                                \
    const cudaError_t rnnkit_err_ = (expr);                                           \
    if (rnnkit_err_ != cudaSuccess) {                                                 \
      ::rnnkit::cuda::throw_cuda_error(rnnkit_err_, #expr, __FILE__, __LINE__);       \
    }                                                                                 \
  } while (0)

// After every kernel launch: launch-configuration errors surface here, not at a later call.
#define RNNKIT_CUDA_CHECK_LAUNCH() RNNKIT_CUDA_CHECK(cudaGetLastError())
