// The device probe and the self-test kernel (rnnkit_cuda.h): whether the backend can run here, and
// the smallest kernel that proves a build compiles, links and launches. In the emulation build the
// probe says so and the kernel runs on the host through the same launch helper.
#include <algorithm>
#include <memory>
#include <stdexcept>

#include "bf16.h"
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

std::vector<float> gemm_bf16_check(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                                   const std::vector<float>& a, const std::vector<float>& b, float beta,
                                   const std::vector<float>& c) {
  if (m < 0 || n < 0 || k < 0 || a.size() != static_cast<std::size_t>(m * k) ||
      b.size() != static_cast<std::size_t>(k * n) || c.size() != static_cast<std::size_t>(m * n)) {
    throw std::invalid_argument("gemm_bf16_check: expected A [m, k], B [k, n] and C [m, n] elements, got others");
  }
  std::vector<float> out(c);
  const Stream stream = current_stream();
  DeviceBuffer<float> da(m * k, "gemm check A"), db(k * n, "gemm check B"), dc(m * n, "gemm check C");
  DeviceBuffer<bf16_t> a16(m * k, "gemm check A (bf16)"), b16(k * n, "gemm check B (bf16)");
  if (m * k > 0) copy_to_device(da.data(), a.data(), a.size() * sizeof(float), stream);
  if (k * n > 0) copy_to_device(db.data(), b.data(), b.size() * sizeof(float), stream);
  if (m * n > 0) copy_to_device(dc.data(), c.data(), c.size() * sizeof(float), stream);
  // Stored A is [m, k] or, transposed, [k, m]; likewise B: the layouts the layer loops round.
  // (A leading dimension of at least 1: cuBLAS refuses 0 even when the matrix is empty.)
  const index_t a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
  round_rows(stream, da.data(), trans_a ? k : m, a_cols, a_cols, a16.data());
  round_rows(stream, db.data(), trans_b ? n : k, b_cols, b_cols, b16.data());
  gemm_rm(stream, trans_a ? Op::kT : Op::kN, trans_b ? Op::kT : Op::kN, m, n, k, 1.0f, a16.data(),
          std::max<index_t>(1, a_cols), b16.data(), std::max<index_t>(1, b_cols), beta, dc.data(), std::max<index_t>(1, n));
  if (m * n > 0) copy_to_host(out.data(), dc.data(), out.size() * sizeof(float), stream);
  synchronize(stream);
  return out;
}

}  // namespace cuda
}  // namespace rnnkit
