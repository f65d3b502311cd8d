// The device probe and the self-test kernel: enough CUDA to prove that the optional backend
// compiles, links (static cudart) and launches. See rnnkit_cuda.h.
#include <cuda_runtime.h>

#include <memory>

#include "check.h"
#include "rnnkit_cuda.h"

namespace rnnkit {
namespace cuda {
namespace {

__global__ void axpy_kernel(int n, float a, const float* x, float* y) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

struct DeviceFree {
  void operator()(float* p) const { cudaFree(p); }
};
using DevicePtr = std::unique_ptr<float, DeviceFree>;

DevicePtr device_alloc(std::size_t n) {
  float* p = nullptr;
  RNNKIT_CUDA_CHECK(cudaMalloc(&p, n * sizeof(float)));
  return DevicePtr(p);
}

}  // namespace

Status status() {
  Status s;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    s.reason = std::string("no usable CUDA driver/device: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error so later probes start clean
    return s;
  }
  if (count == 0) {
    s.reason = "no CUDA device found";
    return s;
  }
  const std::string cublas_error = load_cublas();
  if (!cublas_error.empty()) {
    s.reason = "cuBLAS could not be loaded (pip install 'rnnkit[cuda]'): " + cublas_error;
    return s;
  }
  cudaDeviceProp prop{};
  RNNKIT_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  s.available = true;
  s.reason = std::string(prop.name) + " (compute capability " + std::to_string(prop.major) + "." +
             std::to_string(prop.minor) + ", " + std::to_string(count) + " device(s))";
  return s;
}

std::vector<float> selftest_axpy(float a, const std::vector<float>& x, const std::vector<float>& y) {
  if (x.size() != y.size()) throw std::invalid_argument("selftest_axpy: x and y differ in length");
  const std::size_t n = x.size();
  std::vector<float> out(y);
  if (n == 0) return out;
  DevicePtr dx = device_alloc(n);
  DevicePtr dy = device_alloc(n);
  RNNKIT_CUDA_CHECK(cudaMemcpy(dx.get(), x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  RNNKIT_CUDA_CHECK(cudaMemcpy(dy.get(), y.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  const int threads = 256;
  const int blocks = static_cast<int>((n + threads - 1) / threads);
  axpy_kernel<<<blocks, threads>>>(static_cast<int>(n), a, dx.get(), dy.get());
  RNNKIT_CUDA_CHECK_LAUNCH();
  RNNKIT_CUDA_CHECK(cudaMemcpy(out.data(), dy.get(), n * sizeof(float), cudaMemcpyDeviceToHost));
  return out;
}

}  // namespace cuda
}  // namespace rnnkit
