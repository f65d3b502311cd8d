// graph.h's cache of captured loops, per host thread: CUDA graph executables under nvcc, lists of
// closures in the emulation, looked up by the loop's record. The policy (rnnkit.cuda.set_graphs)
// and the counters (rnnkit.cuda.graph_stats) are process-wide.
#include <atomic>
#include <cassert>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "dev_blas.h"
#include "device.h"
#include "rnnkit_cuda.h"

#if defined(__CUDACC__)
#include "check.h"
#endif

namespace rnnkit {
namespace cuda {
namespace {

std::atomic<bool> g_graphs_enabled{true};
std::atomic<std::uint64_t> g_launches{0}, g_captures{0}, g_updates{0}, g_instantiations{0};

// Graphs of one topology side by side: a stack's layer-directions past the first share one (the
// reverse direction too: only the step order differs, and that is a parameter), and the caching
// allocator's reuse in a training loop can alternate between two blocks for an output (period 2),
// so a 4-layer bidirectional stack needs 16. Past that the least recently used is updated.
constexpr std::size_t kPerTopology = 16;
// Forward and backward loops of several such stacks before the least recently used is dropped.
constexpr std::size_t kMaxCachedGraphs = 128;

struct CachedGraph {
  LoopRecord record;
  std::uint64_t last_use = 0;
#if defined(__CUDACC__)
  cudaGraphExec_t exec = nullptr;
#else
  std::vector<std::function<void()>> nodes;
#endif
};

#if defined(__CUDACC__)
void destroy_exec(CachedGraph& g) noexcept {
  // Also at thread exit, when the context may be gone: nothing to do about a failure then.
  if (g.exec != nullptr) cudaGraphExecDestroy(g.exec);
  g.exec = nullptr;
}
#endif

struct GraphCache {
  std::vector<CachedGraph> entries;
  std::uint64_t clock = 0;
  bool capturing = false;
#if defined(__CUDACC__)
  cudaStream_t capture_stream = nullptr;
  ~GraphCache() {
    for (CachedGraph& g : entries) destroy_exec(g);
    if (capture_stream != nullptr) cudaStreamDestroy(capture_stream);
  }
#endif
};

GraphCache& cache() {
  thread_local GraphCache c;
  return c;
}

void launch_entry(CachedGraph& g, Stream stream) {
  g.last_use = ++cache().clock;
  g_launches.fetch_add(1, std::memory_order_relaxed);
#if defined(__CUDACC__)
  RNNKIT_CUDA_CHECK(cudaGraphLaunch(g.exec, static_cast<cudaStream_t>(stream)));
#else
  (void)stream;
  for (const auto& node : g.nodes) node();
#endif
}

}  // namespace

Recorder*& active_recorder() {
  thread_local Recorder* r = nullptr;
  return r;
}

void refuse_in_graph(const char* what) {
  if (active_recorder() != nullptr) {
    throw std::logic_error(concat(what, " inside a loop being captured as a CUDA graph (graph.h: a graphed loop "
                                  "may only launch kernels, GEMMs and device copies)"));
  }
}

bool graphs_enabled() { return g_graphs_enabled.load(std::memory_order_relaxed); }

void set_graphs_enabled(bool on) { g_graphs_enabled.store(on, std::memory_order_relaxed); }

GraphStats graph_stats() {
  GraphStats s;
  s.launches = g_launches.load();
  s.captures = g_captures.load();
  s.updates = g_updates.load();
  s.instantiations = g_instantiations.load();
  s.cached = cache().entries.size();
  s.per_topology = kPerTopology;
  return s;
}

void clear_graph_cache() {
  GraphCache& c = cache();
#if defined(__CUDACC__)
  for (CachedGraph& g : c.entries) destroy_exec(g);
#endif
  c.entries.clear();
}

bool launch_cached_graph(const LoopRecord& record, Stream stream) {
  for (CachedGraph& g : cache().entries) {
    if (g.record == record) {
      launch_entry(g, stream);
      return true;
    }
  }
  return false;
}

Stream begin_graph_capture(Recorder& capture) {
  (void)capture;
  GraphCache& c = cache();
  assert(!c.capturing);
  c.capturing = true;
#if defined(__CUDACC__)
  // Capture cannot run on the legacy default stream: a private stream of this thread's, whose
  // graph is then launched on the caller's. Thread-local mode: another thread's unsafe call (a
  // cudaMalloc, say) does not invalidate this capture.
  if (c.capture_stream == nullptr) {
    RNNKIT_CUDA_CHECK(cudaStreamCreateWithFlags(&c.capture_stream, cudaStreamNonBlocking));
  }
  try {
    prepare_blas(c.capture_stream);  // the handle's creation and workspace cannot happen under capture
  } catch (...) {
    c.capturing = false;
    throw;
  }
  const cudaError_t err = cudaStreamBeginCapture(c.capture_stream, cudaStreamCaptureModeThreadLocal);
  if (err != cudaSuccess) {
    c.capturing = false;
    throw_cuda_error(err, "cudaStreamBeginCapture", __FILE__, __LINE__);
  }
  return c.capture_stream;
#else
  return nullptr;
#endif
}

void abort_graph_capture(Recorder& capture) noexcept {
  GraphCache& c = cache();
  c.capturing = false;
  capture.nodes.clear();
#if defined(__CUDACC__)
  cudaGraph_t graph = nullptr;
  if (cudaStreamEndCapture(c.capture_stream, &graph) == cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
  } else {
    cudaGetLastError();  // the invalidated capture's error: the caller's exception says what failed
  }
#endif
}

void finish_graph_capture(Recorder& capture, LoopRecord record, Stream stream) {
  GraphCache& c = cache();
  assert(c.capturing);
  c.capturing = false;
  g_captures.fetch_add(1, std::memory_order_relaxed);
#if defined(__CUDACC__)
  cudaGraph_t graph = nullptr;
  RNNKIT_CUDA_CHECK(cudaStreamEndCapture(c.capture_stream, &graph));
  struct GraphGuard {
    cudaGraph_t g;
    ~GraphGuard() { cudaGraphDestroy(g); }
  } guard{graph};
#endif
  // Up to kPerTopology graphs of one topology are kept side by side; past that, the least recently
  // used of them takes the new parameters by an update, which is much cheaper than instantiating.
  CachedGraph* same = nullptr;
  std::size_t same_count = 0;
  for (CachedGraph& g : c.entries) {
    if (!g.record.same_topology(record)) continue;
    ++same_count;
    if (same == nullptr || g.last_use < same->last_use) same = &g;
  }
  if (same != nullptr && same_count >= kPerTopology) {
#if defined(__CUDACC__)
    cudaGraphExecUpdateResultInfo info{};
    const bool updated = cudaGraphExecUpdate(same->exec, graph, &info) == cudaSuccess;
    if (!updated) {
      cudaGetLastError();  // not updatable (cuBLAS chose other kernels): instantiate in its place
      destroy_exec(*same);
      const cudaError_t err = cudaGraphInstantiate(&same->exec, graph, 0);
      if (err != cudaSuccess) {
        c.entries.erase(c.entries.begin() + (same - c.entries.data()));
        throw_cuda_error(err, "cudaGraphInstantiate", __FILE__, __LINE__);
      }
    }
#else
    const bool updated = true;
    same->nodes = std::move(capture.nodes);
#endif
    (updated ? g_updates : g_instantiations).fetch_add(1, std::memory_order_relaxed);
    same->record = std::move(record);
    launch_entry(*same, stream);
    return;
  }
  if (c.entries.size() >= kMaxCachedGraphs) {
    auto oldest = c.entries.begin();
    for (auto it = c.entries.begin(); it != c.entries.end(); ++it) {
      if (it->last_use < oldest->last_use) oldest = it;
    }
#if defined(__CUDACC__)
    destroy_exec(*oldest);
#endif
    c.entries.erase(oldest);
  }
  CachedGraph g;
  g.record = std::move(record);
#if defined(__CUDACC__)
  RNNKIT_CUDA_CHECK(cudaGraphInstantiate(&g.exec, graph, 0));
#else
  g.nodes = std::move(capture.nodes);
#endif
  g_instantiations.fetch_add(1, std::memory_order_relaxed);
  c.entries.push_back(std::move(g));
  launch_entry(c.entries.back(), stream);
}

}  // namespace cuda
}  // namespace rnnkit
