// The device probe and the self-test kernel (rnnkit_cuda.h): whether the backend can run here, and
// the smallest kernel that proves a build compiles, links and launches. In the emulation build the
// probe says so and the kernel runs on the host through the same launch helper.
#include <memory>
#include <stdexcept>

#include "device.h"
#include "rnnkit_cuda.h"

#if defined(__CUDACC__)
#include "check.h"
#endif

namespace rnnkit {
namespace cuda {
namespace {

struct Axpy {
  index_t n;
  float a;
  const float* x;
  float* y;
  RNNKIT_DEVICE void operator()(const Thread& t) const {
    for (index_t i = t.global(); i < n; i += t.stride()) y[i] = a * x[i] + y[i];
  }
};

}  // namespace

bool emulated() {
#if defined(__CUDACC__)
  return false;
#else
  return true;
#endif
}

Status status() {
  Status s;
#if defined(__CUDACC__)
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
#else
  s.available = true;
  s.reason = "emulation: the CUDA backend's kernels run on the host CPU (an RNNKIT_CUDA_EMULATE=1 build, "
             "for testing; no GPU is used)";
#endif
  return s;
}

std::vector<float> selftest_axpy(float a, const std::vector<float>& x, const std::vector<float>& y) {
  if (x.size() != y.size()) throw std::invalid_argument("selftest_axpy: x and y differ in length");
  const index_t n = static_cast<index_t>(x.size());
  std::vector<float> out(y);
  if (n == 0) return out;
  DeviceBuffer<float> dx(n, "selftest x"), dy(n, "selftest y");
  copy_to_device(dx.data(), x.data(), x.size() * sizeof(float), nullptr);
  copy_to_device(dy.data(), y.data(), y.size() * sizeof(float), nullptr);
  RNNKIT_LAUNCH(nullptr, n, (Axpy{n, a, dx.data(), dy.data()}));
  copy_to_host(out.data(), dy.data(), out.size() * sizeof(float), nullptr);
  return out;
}

}  // namespace cuda
}  // namespace rnnkit
