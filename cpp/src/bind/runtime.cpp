// Bindings of the process-wide runtime: threads, deterministic mode, the large-buffer pool, and
// what this build is (compiler, Eigen, SIMD, BLAS, CUDA).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bind/common.h"
#include "bind/module.h"
#include "cpu/bf16_gemm.h"
#include "cpu/blas.h"
#include "cpu/buffer.h"
#include "cpu/build_info.h"
#include "cpu/peak_probe.h"
#include "cpu/team.h"
#include "rnnkit_cpu_features.h"

#ifdef RNNKIT_WITH_CUDA
#include "rnnkit_cuda.h"
#endif


namespace rnnkit {
namespace bind {
namespace {

py::tuple cuda_status() {
#ifdef RNNKIT_WITH_CUDA
  const cuda::Status s = cuda::status();
  return py::make_tuple(s.available, s.reason);
#else
  return py::make_tuple(false, std::string("rnnkit was built without CUDA "
                                           "(reinstall with RNNKIT_CUDA=1 to build the GPU backend)"));
#endif
}

py::dict build_info() {
  py::dict info;
  info["version"] = RNNKIT_VERSION;
#if defined(__clang__)
  info["compiler"] = concat("clang ", __clang_major__, ".", __clang_minor__, ".", __clang_patchlevel__);
#elif defined(__GNUC__)
  info["compiler"] = concat("gcc ", __GNUC__, ".", __GNUC_MINOR__, ".", __GNUC_PATCHLEVEL__);
#else
  info["compiler"] = "unknown";
#endif
#ifdef NDEBUG
  info["assertions"] = false;
#else
  info["assertions"] = true;
#endif
  info["eigen"] = cpu::eigen_version();
  info["simd"] = cpu::simd_info();
  info["arch"] = RNNKIT_ARCH;
  info["cpu_features"] = RNNKIT_CPU_FEATURES;
  info["blas"] = cpu::blas_info();
  info["blas_kernel"] = cpu::blas_kernel();
  info["cpu_vector_isa"] = cpu::cpu_vector_isa();
  info["bf16_kernel"] = cpu::bf16_kernel_name();  // precision="bfloat16"'s GEMM kernel
#ifdef RNNKIT_WITH_CUDA
  info["cuda_built"] = true;
  info["cuda_emulated"] = cuda::emulated();
#else
  info["cuda_built"] = false;
  info["cuda_emulated"] = false;
#endif
  return info;
}

}  // namespace

void register_runtime(py::module_& m) {
  using cpu::ThreadTeam;
  m.def("set_num_threads", [](int n) { ThreadTeam::instance().set_default_size(n); }, py::arg("n"),
        "Threads rnnkit's loops may use (process-wide; default 1).");
  m.def("get_num_threads", [] { return ThreadTeam::instance().default_size(); });
  m.def("set_deterministic", [](bool on) { ThreadTeam::instance().set_deterministic(on); }, py::arg("on"),
        "Results identical for every thread count (process-wide; default off).");
  m.def("get_deterministic", [] { return ThreadTeam::instance().deterministic(); });
  m.def("blas_num_threads", &cpu::get_blas_threads, "Threads of rnnkit's OpenBLAS (always 1).");
  m.def("empty_cache", &cpu::pool_empty, "Returns the large buffers rnnkit keeps for reuse to the system.");
  m.def("cached_bytes", &cpu::pool_kept_bytes, "Bytes of large buffers kept for reuse.");
  m.def("build_info", &build_info, "Compiler, Eigen, SIMD, BLAS and CUDA build details.");
  m.def("cuda_status", &cuda_status, "(available, reason): whether the CUDA backend can run here, and why not.");
#ifdef RNNKIT_WITH_CUDA
  m.def("cuda_selftest_axpy", [](float a, const std::vector<float>& x, const std::vector<float>& y) {
        py::gil_scoped_release release;
        return cuda::selftest_axpy(a, x, y);
      }, py::arg("a"), py::arg("x"), py::arg("y"),
      "a*x + y computed by a CUDA kernel (a self-test of the CUDA build).");
#endif
}

}  // namespace bind
}  // namespace rnnkit
