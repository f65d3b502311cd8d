// The CUDA backend's portability layer: how a kernel is written, launched, and given memory, so that
// one source compiles two ways (docs/cuda.md, ../shared/notes/cuda-emulation.md):
//
//   * nvcc (RNNKIT_CUDA=1): kernels run on the GPU; memory is device memory; a stream is a CUDA
//     stream; launch errors throw with file:line;
//   * the host compiler (RNNKIT_CUDA_EMULATE=1): the same kernel bodies run over the same grid on
//     the CPU, block by block and thread by thread; "device" memory is host memory; a stream runs
//     its work at once, in order.
//
// A kernel is a small struct (a "body") with the arguments as members and
//   RNNKIT_DEVICE void operator()(const Thread& t) const
// doing one thread's work, usually a grid-stride loop over t.global() ... < work. The body reads its
// indices from `t`, never from CUDA's built-in variables, so the emulation can hand it any. A body
// with barriers (__syncthreads, a grid sync) is written as phases between them instead
// (launch_phases), which the emulation runs in lock step.
//
// Nothing here or in the bodies may use a CUDA API type in a header the bindings include: the
// bindings see only rnnkit_cuda.h.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "rnnkit/common.h"

#if defined(__CUDACC__)
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#define RNNKIT_DEVICE __device__ __forceinline__
#elif defined(RNNKIT_CUDA_EMULATE)
#define RNNKIT_DEVICE inline
#else
#error "cuda/device.h: compile with nvcc, or with RNNKIT_CUDA_EMULATE defined"
#endif

namespace rnnkit {
namespace cuda {

// A stream: cudaStream_t under nvcc (0 = the legacy default stream), unused in the emulation.
using Stream = void*;

// The stream this host thread's rnnkit work goes on (runtime.cu): the legacy default stream unless
// set (rnnkit.cuda.set_stream / rnnkit.cuda.stream; rnnkit.torch sets PyTorch's current stream
// around its calls). Read once at the start of each backend call.
Stream current_stream();
void set_current_stream(Stream stream);
// Throws std::runtime_error naming `what` when `stream` is being captured into a CUDA graph by the
// caller (torch.cuda.graph, say): rnnkit's calls allocate and synchronise, which capture forbids.
void refuse_external_capture(Stream stream, const char* what);

// graph.h: a loop being recorded or captured as a CUDA graph intercepts the launches below and
// the GEMMs and device copies; a node's kind is part of the record.
enum class NodeKind : unsigned char { kKernel = 1, kBlockKernel, kGemm32, kGemm64, kCopy, kZero, kGemmBf16 };
template <typename Body, typename Node>
bool intercept_launch(NodeKind kind, index_t blocks, int threads, std::size_t shared_bytes, const Body& body,
                      const char* file, int line, Node&& node);

// One thread's identity, in one dimension (every kernel of the backend is one-dimensional).
namespace emulate {
// The emulation's barrier (block_launch runs a block's threads as fibers; runtime.cu).
void block_barrier();
}  // namespace emulate

struct Thread {
  index_t block = 0;       // blockIdx.x
  index_t thread = 0;      // threadIdx.x
  index_t block_dim = 1;   // blockDim.x
  index_t grid_dim = 1;    // gridDim.x
  void* shared = nullptr;  // the block's shared memory (launch_blocks' shared_bytes), else null

  RNNKIT_DEVICE index_t global() const { return block * block_dim + thread; }
  RNNKIT_DEVICE index_t stride() const { return grid_dim * block_dim; }
  // __syncthreads(): only in bodies launched by launch_blocks, reached by every thread of the block.
  RNNKIT_DEVICE void sync() const {
#if defined(__CUDACC__)
    __syncthreads();
#else
    emulate::block_barrier();
#endif
  }
};

constexpr int kBlockThreads = 256;
// Enough blocks to fill a large GPU several times over; grid-stride loops cover the rest.
constexpr index_t kMaxBlocks = 4096;

inline index_t blocks_for(index_t work) {
  const index_t b = (work + kBlockThreads - 1) / kBlockThreads;
  return b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b);
}

#if defined(__CUDACC__)
template <typename Body>
__global__ void __launch_bounds__(kBlockThreads) run_body(Body body) {
  body(Thread{blockIdx.x, threadIdx.x, blockDim.x, gridDim.x});
}
void check_launch(const char* file, int line);  // cudaGetLastError, thrown with file:line
#endif

// Runs `body` over enough threads for `work` items (body loops grid-stride over them) on `stream`.
template <typename Body>
void launch(Stream stream, index_t work, const Body& body, const char* file, int line) {
  if (work <= 0) return;
  const index_t blocks = blocks_for(work);
  if (intercept_launch(NodeKind::kKernel, blocks, kBlockThreads, 0, body, file, line,
                       [stream, work, body, file, line] { launch(stream, work, body, file, line); })) {
    return;
  }
#if defined(__CUDACC__)
  run_body<Body><<<static_cast<unsigned>(blocks), kBlockThreads, 0, static_cast<cudaStream_t>(stream)>>>(body);
  check_launch(file, line);
#else
  (void)stream;
  (void)file;
  (void)line;
  Thread t;
  t.block_dim = kBlockThreads;
  t.grid_dim = blocks;
  for (t.block = 0; t.block < blocks; ++t.block) {
    for (t.thread = 0; t.thread < kBlockThreads; ++t.thread) body(t);
  }
#endif
}

#define RNNKIT_LAUNCH(stream, work, body) ::rnnkit::cuda::launch((stream), (work), (body), __FILE__, __LINE__)

// Bodies whose threads cooperate within a block (Thread::sync, Thread::shared): `blocks` blocks of
// `threads` threads (a power of two, 32 ... kMaxBlockThreads) with `shared_bytes` of shared memory.
// The emulation runs each block's threads as fibers that switch at every barrier, so the threads
// of a block advance in lock step from barrier to barrier exactly as the CUDA model promises (no
// more): a body that reads another thread's value without a barrier between is wrong on both. A
// barrier some threads of a block skip (undefined on a GPU) is an error in the emulation.
constexpr int kMaxBlockThreads = 1024;

#if defined(__CUDACC__)
template <typename Body>
__global__ void __launch_bounds__(kMaxBlockThreads) run_block_body(Body body) {
  extern __shared__ __align__(16) unsigned char shared_memory[];
  body(Thread{blockIdx.x, threadIdx.x, blockDim.x, gridDim.x, shared_memory});
}
#else
namespace emulate {
// Runs fn(ctx, thread) for thread = 0 .. threads-1 as fibers of one block (runtime.cu).
void run_block_fibers(index_t threads, void (*fn)(void* ctx, index_t thread), void* ctx);
}  // namespace emulate
#endif

template <typename Body>
void launch_blocks(Stream stream, index_t blocks, int threads, std::size_t shared_bytes, const Body& body,
                   const char* file, int line) {
  if (blocks <= 0) return;
  assert(threads >= 32 && threads <= kMaxBlockThreads && (threads & (threads - 1)) == 0);
  if (intercept_launch(NodeKind::kBlockKernel, blocks, threads, shared_bytes, body, file, line,
                       [stream, blocks, threads, shared_bytes, body, file, line] {
                         launch_blocks(stream, blocks, threads, shared_bytes, body, file, line);
                       })) {
    return;
  }
#if defined(__CUDACC__)
  run_block_body<Body><<<static_cast<unsigned>(blocks), static_cast<unsigned>(threads), shared_bytes,
                         static_cast<cudaStream_t>(stream)>>>(body);
  check_launch(file, line);
#else
  (void)stream;
  (void)file;
  (void)line;
  // Aligned as the device's shared memory (at least 16 bytes).
  std::unique_ptr<std::max_align_t[]> shared(
      new std::max_align_t[(shared_bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t) + 1]);
  struct Ctx {
    const Body* body;
    Thread t;
  } ctx{&body, Thread{}};
  ctx.t.block_dim = threads;
  ctx.t.grid_dim = blocks;
  ctx.t.shared = shared.get();
  for (ctx.t.block = 0; ctx.t.block < blocks; ++ctx.t.block) {
    emulate::run_block_fibers(
        threads,
        [](void* p, index_t thread) {
          Ctx& c = *static_cast<Ctx*>(p);
          Thread t = c.t;
          t.thread = thread;
          (*c.body)(t);
        },
        &ctx);
  }
#endif
}

#define RNNKIT_LAUNCH_BLOCKS(stream, blocks, threads, shared_bytes, body) \
  ::rnnkit::cuda::launch_blocks((stream), (blocks), (threads), (shared_bytes), (body), __FILE__, __LINE__)

// ---- persistent kernels: one cooperative launch for a whole loop of steps ----------------------
// A body with
//   index_t steps() const
//   void load(const Thread&) const                 once, then a block barrier
//   void recurrent(index_t i, const Thread&) const step i's first phase, then a block barrier
//   void pointwise(index_t i, const Thread&) const step i's second phase, then a grid barrier
// runs as one cooperative launch (every block resident at once; the grid barrier is cooperative
// groups' grid sync). Nothing lives in registers from one phase to the next: what a later phase
// needs goes through shared or global memory, so the emulation can run each phase for every thread
// of every block in turn (lock step at every barrier; the block barriers become grid-wide ones,
// which is stronger than the GPU but asks nothing more of a correct body).
struct DeviceLimits {
  int multiprocessors = 0;
  std::size_t max_shared_bytes = 0;  // dynamic shared memory per block, opted in
  bool cooperative = false;
};
// The current device's (cached after the first call); the emulation's are a small pretend GPU.
const DeviceLimits& device_limits();

#if defined(__CUDACC__)
template <typename Body>
__global__ void __launch_bounds__(kMaxBlockThreads) run_persistent(Body body) {
  extern __shared__ __align__(16) unsigned char shared_memory[];
  const Thread th{blockIdx.x, threadIdx.x, blockDim.x, gridDim.x, shared_memory};
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  body.load(th);
  __syncthreads();
  for (index_t i = 0; i < body.steps(); ++i) {
    body.recurrent(i, th);
    __syncthreads();
    body.pointwise(i, th);
    grid.sync();
  }
}
// Whether `blocks` blocks of the kernel fit on the device at once (cudaOccupancy...), after opting
// in to `shared_bytes`.
bool persistent_fits(const void* kernel, index_t blocks, int threads, std::size_t shared_bytes);
void launch_cooperative(const void* kernel, index_t blocks, int threads, std::size_t shared_bytes, void** args,
                        Stream stream, const char* file, int line);
#endif

// Returns false, running nothing, when the grid cannot be resident at once (the caller takes
// another path); throws with file:line when the launch fails.
template <typename Body>
bool launch_persistent(Stream stream, index_t blocks, int threads, std::size_t shared_bytes, const Body& body,
                       const char* file, int line) {
  assert(blocks > 0 && threads > 0 && threads <= kMaxBlockThreads);
#if defined(__CUDACC__)
  const void* kernel = reinterpret_cast<const void*>(&run_persistent<Body>);
  if (!persistent_fits(kernel, blocks, threads, shared_bytes)) return false;
  Body copy = body;
  void* args[] = {&copy};
  launch_cooperative(kernel, blocks, threads, shared_bytes, args, stream, file, line);
#else
  (void)stream;
  (void)file;
  (void)line;
  const std::size_t words = (shared_bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t) + 1;
  std::vector<std::unique_ptr<std::max_align_t[]>> shared;
  for (index_t b = 0; b < blocks; ++b) shared.emplace_back(new std::max_align_t[words]);
  auto each_thread = [&](auto&& phase) {
    for (index_t b = 0; b < blocks; ++b) {
      for (index_t t = 0; t < threads; ++t) phase(Thread{b, t, threads, blocks, shared[static_cast<std::size_t>(b)].get()});
    }
  };
  each_thread([&](const Thread& th) { body.load(th); });
  for (index_t i = 0; i < body.steps(); ++i) {
    each_thread([&](const Thread& th) { body.recurrent(i, th); });
    each_thread([&](const Thread& th) { body.pointwise(i, th); });
  }
#endif
  return true;
}

#define RNNKIT_LAUNCH_PERSISTENT(stream, blocks, threads, shared_bytes, body) \
  ::rnnkit::cuda::launch_persistent((stream), (blocks), (threads), (shared_bytes), (body), __FILE__, __LINE__)

// A global-memory load that sees other blocks' stores from before the last grid barrier (__ldcg:
// through L2, around the multiprocessor's own, non-coherent L1).
template <typename S>
RNNKIT_DEVICE S load_coherent(const S* p) {
#if defined(__CUDACC__)
  return __ldcg(p);
#else
  return *p;
#endif
}

// ---- memory and streams (runtime.cpp) ---------------------------------------------------------
// Every failure throws: OutOfMemory for an allocation (with the byte count and purpose), else
// std::runtime_error with file:line and CUDA's error text.
// device_alloc/device_free go through the caching pool (memory_pool.cu): a freed block is kept for
// the next request of its size class, so a training loop allocates from the device once. Safe
// across streams because every backend call synchronises its stream before it returns (and so
// before its scratch is freed): a block handed out again has no work pending on it.
void* device_alloc(std::size_t bytes, const char* what_for);
void device_free(void* p) noexcept;
// The allocator under the pool (runtime.cu): cudaMalloc/cudaFree, or aligned host memory.
void* raw_device_alloc(std::size_t bytes, const char* what_for);
void raw_device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, std::size_t bytes, Stream stream);
void copy_to_host(void* dst, const void* src, std::size_t bytes, Stream stream);  // synchronises
void copy_on_device(void* dst, const void* src, std::size_t bytes, Stream stream);
void zero_on_device(void* dst, std::size_t bytes, Stream stream);
void synchronize(Stream stream);
// Free and total device memory in bytes.
void memory_info(std::size_t* free_bytes, std::size_t* total_bytes);

// An owning device allocation of `count` elements of T, allocated once per call and carved into
// named views (the CPU's Buffer, on the device).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(index_t count, const char* what_for) { allocate(count, what_for); }
  ~DeviceBuffer() { device_free(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void allocate(index_t count, const char* what_for) {
    device_free(data_);
    data_ = nullptr;
    size_ = 0;
    if (count > 0) {
      data_ = static_cast<T*>(device_alloc(static_cast<std::size_t>(checked_mul(count, sizeof(T), what_for)),
                                           what_for));
    }
    size_ = count;
  }
  T* data() const { return data_; }
  index_t size() const { return size_; }

 private:
  T* data_ = nullptr;
  index_t size_ = 0;
};

}  // namespace cuda
}  // namespace rnnkit

#include "graph.h"  // the interception launch() and launch_blocks() call
