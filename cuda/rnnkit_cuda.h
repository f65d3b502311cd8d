// The CUDA backend's host-side interface, included by the pybind11 module only when rnnkit is
// built with RNNKIT_CUDA=1. No CUDA type appears here, so the module compiles with a plain C++
// compiler; everything CUDA lives in this folder's .cu/.cpp files.
//
// Today the backend is the build wiring plus a device probe, lazily loaded cuBLAS and one
// trivial kernel (a self-test that proves kernels compile, link and launch). The recurrent
// kernels arrive with the CUDA backend issue and will share the cells in cpp/include/rnnkit/cells.h.
#pragma once

#include <string>
#include <vector>

namespace rnnkit {
namespace cuda {

struct Status {
  bool available = false;  // a device, a working driver and cuBLAS are all there
  std::string reason;      // why not, or a description of the device when available
};

// Probes the driver, the devices and cuBLAS once per call; never throws.
Status status();

// y = a*x + y on the device (copies in and out): the self-test kernel. Throws std::runtime_error
// with file:line when CUDA fails (e.g. no device).
std::vector<float> selftest_axpy(float a, const std::vector<float>& x, const std::vector<float>& y);

// Loads cuBLAS on first use (dlopen, honouring the module's RUNPATH). Returns "" on success, else
// the loader's error text. Thread-safe.
std::string load_cublas();

}  // namespace cuda
}  // namespace rnnkit
