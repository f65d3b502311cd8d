// The CUDA backend's host-side interface, included by the pybind11 module only when rnnkit is
// built with RNNKIT_CUDA=1. No CUDA type appears here, so the module compiles with a plain C++
// compiler; everything CUDA lives in this folder's .cu/.cpp files.
//
// The recurrent layers themselves are reached through backend.h (cuda/backend.h); this header
// holds what the bindings need besides: the probe, device memory for their arrays, the self-test.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rnnkit {
namespace cuda {

struct Status {
  bool available = false;  // a device, a working driver and cuBLAS are all there
  std::string reason;      // why not, or a description of the device when available
};

// Probes the driver, the devices and cuBLAS once per call; never throws. In the emulation build
// (RNNKIT_CUDA_EMULATE) always available, and the reason says it is an emulation.
Status status();
// True in the emulation build: "device" memory is host memory and kernels run on the CPU.
bool emulated();

// y = a*x + y on the device (copies in and out): the self-test kernel. Throws std::runtime_error
// with file:line when CUDA fails (e.g. no device).
std::vector<float> selftest_axpy(float a, const std::vector<float>& x, const std::vector<float>& y);

// Device memory for the bindings' arrays (device.h's, without its CUDA types): throws OutOfMemory
// or std::runtime_error with file:line.
void* device_alloc(std::size_t bytes, const char* what_for);
void device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, std::size_t bytes, void* stream);
void copy_to_host(void* dst, const void* src, std::size_t bytes, void* stream);  // synchronises
void copy_on_device(void* dst, const void* src, std::size_t bytes, void* stream);
// out [B,A,C] = in [A,B,C] with the two leading axes swapped (elements of 4 or 8 bytes); zeroing.
// Both synchronise.
void swap_leading_axes(const void* in, void* out, std::int64_t A, std::int64_t B, std::int64_t C, int elem_bytes);
void zero_device_bytes(void* dst, std::size_t bytes);

// Loads cuBLAS on first use (dlopen, honouring the module's RUNPATH). Returns "" on success, else
// the loader's error text. Thread-safe.
std::string load_cublas();

}  // namespace cuda
}  // namespace rnnkit
