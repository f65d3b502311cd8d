// cuBLAS, loaded at first use instead of linked: the CUDA build of rnnkit then imports on machines
// without cuBLAS, a GPU or a driver, and `rnnkit[cuda]` (the nvidia-cublas wheel) stays optional.
// cublas_v2.h is included for its types and signatures only; each entry point is looked up with
// dlsym into a pointer of the exact declared type.
#include <dlfcn.h>

#include <cublas_v2.h>

#include <mutex>
#include <stdexcept>
#include <string>

#include "cublas_lazy.h"
#include "rnnkit_cuda.h"

namespace rnnkit {
namespace cuda {
namespace {

CublasApi& api() {
  static CublasApi instance;
  return instance;
}

template <typename Fn>
bool bind(void* lib, const char* name, Fn& fn, std::string& error) {
  fn = reinterpret_cast<Fn>(dlsym(lib, name));
  if (fn == nullptr) error = std::string("missing symbol ") + name;
  return fn != nullptr;
}

void load_once() {
  CublasApi& a = api();
  // dlopen honours the module's RUNPATH ($ORIGIN/../nvidia/cu13/lib), where pip puts the wheel.
  void* lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* e = dlerror();
    a.error = e ? e : "dlopen(libcublas.so.13) failed";
    return;
  }
  bind(lib, "cublasCreate_v2", a.create, a.error) && bind(lib, "cublasDestroy_v2", a.destroy, a.error) &&
      bind(lib, "cublasSgemm_v2", a.sgemm, a.error) && bind(lib, "cublasDgemm_v2", a.dgemm, a.error) &&
      bind(lib, "cublasGemmEx", a.gemm_ex, a.error) &&
      bind(lib, "cublasSetStream_v2", a.set_stream, a.error) &&
      bind(lib, "cublasSetWorkspace_v2", a.set_workspace, a.error) &&
      bind(lib, "cublasGetStatusString", a.status_string, a.error);
}

}  // namespace

const CublasApi& cublas() {
  const std::string error = load_cublas();
  if (!error.empty()) throw std::runtime_error("cuBLAS could not be loaded (pip install 'rnnkit[cuda]'): " + error);
  return api();
}

std::string load_cublas() {
  static std::once_flag once;
  std::call_once(once, load_once);
  return api().error;
}

}  // namespace cuda
}  // namespace rnnkit
