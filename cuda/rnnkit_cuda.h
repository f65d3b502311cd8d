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

// Tests: C = op(A) op(B) + beta C (row-major, A [m, k] or transposed [k, m], likewise B) through the
// device's precision="bfloat16" GEMM: both operands rounded on the device (bf16.h's ToBf16), then
// bf16 products summed in float32. Returns the new C.
std::vector<float> gemm_bf16_check(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                                   const std::vector<float>& a, const std::vector<float>& b, float beta,
                                   const std::vector<float>& c);

// Device memory for the bindings' arrays (device.h's, without its CUDA types): throws OutOfMemory
// or std::runtime_error with file:line.
void* device_alloc(std::size_t bytes, const char* what_for);
void device_free(void* p) noexcept;
// The caching pool under device_alloc (memory_pool.cu): bytes held for reuse, device allocations
// made so far, and releasing what it holds (a failed allocation releases it and retries first).
struct PoolStats {
  std::size_t cached_bytes = 0;     // freed blocks kept for reuse
  std::size_t in_use_bytes = 0;     // blocks handed out and not freed
  std::uint64_t device_allocations = 0;  // cudaMalloc calls (the emulation: host allocations)
  std::uint64_t reuses = 0;              // requests served from the pool
};
PoolStats pool_stats();
void empty_cache();
void copy_to_device(void* dst, const void* src, std::size_t bytes, void* stream);
void copy_to_host(void* dst, const void* src, std::size_t bytes, void* stream);  // synchronises
void copy_on_device(void* dst, const void* src, std::size_t bytes, void* stream);
// out [B,A,C] = in [A,B,C] with the two leading axes swapped (elements of 4 or 8 bytes); zeroing.
// Both synchronise.
void swap_leading_axes(const void* in, void* out, std::int64_t A, std::int64_t B, std::int64_t C, int elem_bytes);
void zero_device_bytes(void* dst, std::size_t bytes);
// Waits for a stream a producer names (__cuda_array_interface__'s "stream": a cudaStream_t, 1 or 2
// for the legacy and per-thread default streams). A no-op in the emulation.
void synchronize_stream(std::uintptr_t stream);

// The persistent small-batch forward (persistent.h): mode 0 "auto" (batches up to 16, where it
// fits), 1 "always" (wherever it can run), 2 "never"; process-wide. persistent_launches counts the
// launches that took it, so a caller can tell which path ran.
void set_persistent_mode(int mode);
int get_persistent_mode();
std::uint64_t persistent_launches();

// The stream this host thread's backend calls run on (a cudaStream_t; 0, the legacy default
// stream, unless set). Every call synchronises it before returning.
void* current_stream();
void set_current_stream(void* stream);
// CUDA graphs for the standard path's per-step launches (graph.h): on by default, process-wide;
// the counters are process-wide, `cached` is the calling thread's cache.
struct GraphStats {
  std::uint64_t launches = 0;        // graphs launched (cache hits, updates and new ones)
  std::uint64_t captures = 0;        // loops captured (cache misses)
  std::uint64_t updates = 0;         // captures that updated a cached graph of the same topology
  std::uint64_t instantiations = 0;  // captures instantiated as a new graph
  std::size_t cached = 0;
  std::size_t per_topology = 0;      // graphs of one topology kept before updates replace them
};
void set_graphs_enabled(bool on);
bool graphs_enabled();
GraphStats graph_stats();
void clear_graph_cache();  // the calling thread's
// Tests only: the most threads a LayerNorm row kernel's block may have (a power of two, 32 ...
// 1024; default 1024), so small rows exercise several lanes per thread.
void set_row_thread_cap(int threads);

// Loads cuBLAS on first use (dlopen, honouring the module's RUNPATH). Returns "" on success, else
// the loader's error text. Thread-safe.
std::string load_cublas();

}  // namespace cuda
}  // namespace rnnkit
