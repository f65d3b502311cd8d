// Device memory, copies and streams behind device.h: CUDA's runtime under nvcc, host memory in the
// emulation build. The one place the backend allocates (memory_pool.cu keeps what it frees); every failure throws (file:line and CUDA's
// own error text, or OutOfMemory with the request), and a failed call leaves nothing allocated.
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "device.h"

#if defined(__CUDACC__)
#include "check.h"
#else
#include <ucontext.h>
#include <unistd.h>

#include <cassert>
#include <memory>
#include <vector>
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/common_interface_defs.h>
#endif
#endif
#endif

namespace rnnkit {
namespace cuda {

namespace {
thread_local Stream t_current_stream = nullptr;

// A device-to-device copy or a zeroing inside a graphed loop (graph.h): recorded, or kept as a node.
struct CopyArgs {
  void* dst;
  const void* src;
  std::size_t bytes;
};
bool intercept_copy(void* dst, const void* src, std::size_t bytes, Stream stream) {
  return intercept_call(NodeKind::kCopy, bytes, CopyArgs{dst, src, bytes},
                        [=] { copy_on_device(dst, src, bytes, stream); });
}
struct ZeroArgs {
  void* dst;
  std::size_t bytes;
};
bool intercept_zero(void* dst, std::size_t bytes, Stream stream) {
  return intercept_call(NodeKind::kZero, bytes, ZeroArgs{dst, bytes}, [=] { zero_on_device(dst, bytes, stream); });
}
}  // namespace

Stream current_stream() { return t_current_stream; }
void set_current_stream(Stream stream) { t_current_stream = stream; }

void refuse_external_capture(Stream stream, const char* what) {
#if defined(__CUDACC__)
  if (active_recorder() != nullptr) return;  // rnnkit's own capture (graph.h) runs on its stream
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  RNNKIT_CUDA_CHECK(cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status));
  if (status != cudaStreamCaptureStatusNone) {
    throw std::runtime_error(concat(what, ": expected a stream that is not being captured into a CUDA graph, got one "
                                    "that is (rnnkit's calls allocate and synchronise, which capture forbids; they "
                                    "graph their own per-step launches: rnnkit.cuda.set_graphs)"));
  }
#else
  (void)stream;
  (void)what;
#endif
}

#if defined(__CUDACC__)

void check_launch(const char* file, int line) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, "kernel launch", file, line);
}

void* raw_device_alloc(std::size_t bytes, const char* what_for) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // not sticky: clear it, the device stays usable
    throw OutOfMemory(bytes, concat(what_for, " (CUDA device memory)"));
  }
  if (err != cudaSuccess) throw_cuda_error(err, "cudaMalloc", __FILE__, __LINE__);
  return p;
}

void raw_device_free(void* p) noexcept {
  if (p != nullptr) cudaFree(p);
}

void copy_to_device(void* dst, const void* src, std::size_t bytes, Stream stream) {
  if (bytes == 0) return;
  refuse_in_graph("a host-to-device copy");
  RNNKIT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)));
}

void copy_to_host(void* dst, const void* src, std::size_t bytes, Stream stream) {
  if (bytes == 0) return;
  refuse_in_graph("a device-to-host copy");
  RNNKIT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)));
  RNNKIT_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

void copy_on_device(void* dst, const void* src, std::size_t bytes, Stream stream) {
  if (bytes == 0 || intercept_copy(dst, src, bytes, stream)) return;
  RNNKIT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, static_cast<cudaStream_t>(stream)));
}

void zero_on_device(void* dst, std::size_t bytes, Stream stream) {
  if (bytes == 0 || intercept_zero(dst, bytes, stream)) return;
  RNNKIT_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, static_cast<cudaStream_t>(stream)));
}

void synchronize(Stream stream) {
  refuse_in_graph("synchronising a stream");
  RNNKIT_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

void memory_info(std::size_t* free_bytes, std::size_t* total_bytes) {
  RNNKIT_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

const DeviceLimits& device_limits() {
  static const DeviceLimits limits = [] {
    DeviceLimits l;
    int device = 0, sms = 0, smem = 0, coop = 0;
    RNNKIT_CUDA_CHECK(cudaGetDevice(&device));
    RNNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    RNNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    RNNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
    l.multiprocessors = sms;
    l.max_shared_bytes = static_cast<std::size_t>(smem);
    l.cooperative = coop != 0;
    return l;
  }();
  return limits;
}

bool persistent_fits(const void* kernel, index_t blocks, int threads, std::size_t shared_bytes) {
  const DeviceLimits& l = device_limits();
  if (!l.cooperative || shared_bytes > l.max_shared_bytes) return false;
  RNNKIT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(shared_bytes)));
  int per_sm = 0;
  RNNKIT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared_bytes));
  return static_cast<index_t>(per_sm) * l.multiprocessors >= blocks;
}

void launch_cooperative(const void* kernel, index_t blocks, int threads, std::size_t shared_bytes, void** args,
                        Stream stream, const char* file, int line) {
  const cudaError_t err = cudaLaunchCooperativeKernel(kernel, dim3(static_cast<unsigned>(blocks)),
                                                      dim3(static_cast<unsigned>(threads)), args, shared_bytes,
                                                      static_cast<cudaStream_t>(stream));
  if (err != cudaSuccess) throw_cuda_error(err, "cudaLaunchCooperativeKernel", file, line);
  check_launch(file, line);
}

#else  // RNNKIT_CUDA_EMULATE: host memory, streams that run at once

void* raw_device_alloc(std::size_t bytes, const char* what_for) {
  // 256-byte alignment, as cudaMalloc guarantees (kernels may rely on it for vector loads).
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  if (p == nullptr) throw OutOfMemory(bytes, concat(what_for, " (emulated CUDA device memory)"));
  return p;
}

void raw_device_free(void* p) noexcept { std::free(p); }

void copy_to_device(void* dst, const void* src, std::size_t bytes, Stream) {
  if (bytes == 0) return;
  refuse_in_graph("a host-to-device copy");
  std::memcpy(dst, src, bytes);
}
void copy_to_host(void* dst, const void* src, std::size_t bytes, Stream) {
  if (bytes == 0) return;
  refuse_in_graph("a device-to-host copy");
  std::memcpy(dst, src, bytes);
}
void copy_on_device(void* dst, const void* src, std::size_t bytes, Stream stream) {
  if (bytes == 0 || intercept_copy(dst, src, bytes, stream)) return;
  std::memmove(dst, src, bytes);
}
void zero_on_device(void* dst, std::size_t bytes, Stream stream) {
  if (bytes == 0 || intercept_zero(dst, bytes, stream)) return;
  std::memset(dst, 0, bytes);
}
void synchronize(Stream) { refuse_in_graph("synchronising a stream"); }

const DeviceLimits& device_limits() {
  // A small pretend GPU, so that test shapes spread over several blocks.
  static const DeviceLimits limits{4, 227 * 1024, true};
  return limits;
}

void memory_info(std::size_t* free_bytes, std::size_t* total_bytes) {
  const long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  *total_bytes = pages > 0 && page > 0 ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(page) : 0;
  *free_bytes = avail > 0 && page > 0 ? static_cast<std::size_t>(avail) * static_cast<std::size_t>(page) : 0;
}

// ---- fibers: a block's threads between barriers -------------------------------------------------
// Each thread of the block is a ucontext fiber with a stack of its own. The scheduler resumes every
// unfinished fiber once per round, in thread order; a fiber runs until it reaches a barrier
// (block_barrier switches back) or returns. After a round every live thread waits at the same
// barrier, so the next round starts them all past it: lock step at the barriers, any order between.
namespace emulate {
namespace {

#if defined(__SANITIZE_ADDRESS__)
#define RNNKIT_FIBERS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RNNKIT_FIBERS_ASAN 1
#endif
#endif

// Bodies are small, but the sanitizer build's frames are several times larger than -O2's.
constexpr std::size_t kFiberStackBytes = 256 * 1024;

struct Team {
  ucontext_t scheduler;
  std::vector<ucontext_t> fibers;
  std::vector<char> finished;
  index_t current = 0;
  void (*fn)(void*, index_t) = nullptr;
  void* ctx = nullptr;
#if defined(RNNKIT_FIBERS_ASAN)
  const void* scheduler_stack = nullptr;
  std::size_t scheduler_stack_size = 0;
#endif
};

thread_local Team* g_team = nullptr;
// Stacks reused from launch to launch (this thread's; grown on demand, never shrunk).
thread_local std::vector<std::unique_ptr<char[]>> g_stacks;

// The sanitizer must be told of every switch, or it reports the other stack's frames as errors.
void before_switch(void** fake_stack, const void* bottom, std::size_t size) {
#if defined(RNNKIT_FIBERS_ASAN)
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#else
  (void)fake_stack, (void)bottom, (void)size;
#endif
}
void after_switch(void* fake_stack, const void** old_bottom, std::size_t* old_size) {
#if defined(RNNKIT_FIBERS_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack, old_bottom, old_size);
#else
  (void)fake_stack, (void)old_bottom, (void)old_size;
#endif
}

void fiber_main() {
  Team* team = g_team;
#if defined(RNNKIT_FIBERS_ASAN)
  after_switch(nullptr, &team->scheduler_stack, &team->scheduler_stack_size);
#else
  after_switch(nullptr, nullptr, nullptr);
#endif
  const index_t me = team->current;
  team->fn(team->ctx, me);
  team->finished[static_cast<std::size_t>(me)] = 1;
#if defined(RNNKIT_FIBERS_ASAN)
  before_switch(nullptr, team->scheduler_stack, team->scheduler_stack_size);  // this fiber ends
#endif
  // returning resumes uc_link, the scheduler
}

__attribute__((noinline)) void make_fiber(Team& team, std::size_t i) {
  ucontext_t& f = team.fibers[i];
  getcontext(&f);
  f.uc_stack.ss_sp = g_stacks[i].get();
  f.uc_stack.ss_size = kFiberStackBytes;
  f.uc_link = &team.scheduler;
  makecontext(&f, fiber_main, 0);
}

// Runs fiber i until its next barrier or its end. Out of line: nothing of the caller's frame lives
// across the switch in a register (swapcontext returns twice, as setjmp does).
__attribute__((noinline)) void resume(Team& team, std::size_t i) {
  team.current = static_cast<index_t>(i);
  void* fake_stack = nullptr;
  before_switch(&fake_stack, g_stacks[i].get(), kFiberStackBytes);
  swapcontext(&team.scheduler, &team.fibers[i]);
  after_switch(fake_stack, nullptr, nullptr);
}

}  // namespace

void block_barrier() {
  Team* team = g_team;
  assert(team != nullptr && "Thread::sync() outside launch_blocks");
  ucontext_t& self = team->fibers[static_cast<std::size_t>(team->current)];
  void* fake_stack = nullptr;
#if defined(RNNKIT_FIBERS_ASAN)
  before_switch(&fake_stack, team->scheduler_stack, team->scheduler_stack_size);
#endif
  swapcontext(&self, &team->scheduler);
#if defined(RNNKIT_FIBERS_ASAN)
  after_switch(fake_stack, &team->scheduler_stack, &team->scheduler_stack_size);
#else
  after_switch(fake_stack, nullptr, nullptr);
#endif
}

void run_block_fibers(index_t threads, void (*fn)(void*, index_t), void* ctx) {
  if (g_team != nullptr) throw std::logic_error("emulation: a block launched from inside a block");
  Team team;
  team.fn = fn;
  team.ctx = ctx;
  const std::size_t n = static_cast<std::size_t>(threads);
  team.fibers.resize(n);
  team.finished.assign(n, 0);
  while (g_stacks.size() < n) g_stacks.emplace_back(new char[kFiberStackBytes]);
  for (std::size_t i = 0; i < n; ++i) make_fiber(team, i);
  g_team = &team;
  bool divergent = false;
  for (std::size_t live = n; live > 0;) {
    for (std::size_t i = 0; i < n; ++i) {
      if (!team.finished[i]) resume(team, i);
    }
    std::size_t now_live = 0;
    for (char f : team.finished) now_live += f ? 0 : 1;
    // Some threads returned while others wait at a barrier: they skipped it.
    if (now_live != 0 && now_live != live) divergent = true;
    live = now_live;
  }
  g_team = nullptr;
  if (divergent) {
    throw std::logic_error("emulation: a barrier (Thread::sync) that some threads of the block skipped");
  }
}

}  // namespace emulate

#endif

}  // namespace cuda
}  // namespace rnnkit
