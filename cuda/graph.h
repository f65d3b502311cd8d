// CUDA graphs for the layer loops' per-step launches (the standard path: per step a recurrent GEMM
// and one or two pointwise kernels, so T steps are 3T or more launches whose CPU cost dominates at
// small batches). run_graphed(stream, loop) runs `loop(s)` -- the host code that issues one loop's
// launches on stream s -- as one graph:
//
//   1. record: the loop runs with a Recorder active, and every launch, GEMM and device copy it
//      issues appends what it would do to a LoopRecord instead of doing it: the topology (each
//      node's kind, kernel, grid and GEMM sizes) and the parameters (the kernel bodies' bytes,
//      pointers, scalars). This costs tens of nanoseconds per node;
//   2. a cached graph whose record is equal does exactly the same work: it is launched, and that is
//      all (steady-state training and inference, where the caching allocator hands the same blocks
//      out again, take this path);
//   3. otherwise the loop runs again under stream capture (nvcc: cudaStreamBeginCapture on a
//      private stream; the emulation: each node is kept as a closure), and the graph replaces a
//      cached one of the same topology by cudaGraphExecUpdate (new pointers only), or is
//      instantiated anew; then it is launched on `stream`.
//
// So a loop must issue device work only through the hooked calls (launch, launch_blocks, gemm,
// copy_on_device, zero_on_device) and have no other side effects: it runs twice on a miss, once
// (record only) on a hit. Synchronising, host copies and allocation inside it are refused
// (std::logic_error), in both builds, as stream capture would refuse them on a GPU. The kernel
// bodies recorded must have no padding bytes (their bytes are compared), checked at record time.
//
// The emulation runs every step of this -- record, compare, capture as closures, update, replay --
// so a stale pointer in a cached graph is a wrong result in the CPU tests, not only on a GPU.
#pragma once

#include <cstring>
#include <functional>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "device.h"

namespace rnnkit {
namespace cuda {

struct LoopRecord {
  std::vector<unsigned char> topology;  // what must match for cudaGraphExecUpdate
  std::vector<unsigned char> params;    // what else must match for a plain relaunch

  template <typename T>
  void add_topology(const T& v) {
    static_assert(std::is_trivially_copyable<T>::value, "recorded values are compared as bytes");
    append(topology, &v, sizeof(T));
  }
  template <typename T>
  void add_params(const T& v) {
    static_assert(std::is_trivially_copyable<T>::value, "recorded values are compared as bytes");
    append(params, &v, sizeof(T));
  }
  void add_params_bytes(const void* p, std::size_t n) { append(params, p, n); }
  bool same_topology(const LoopRecord& o) const { return topology == o.topology; }
  bool operator==(const LoopRecord& o) const { return topology == o.topology && params == o.params; }

 private:
  static void append(std::vector<unsigned char>& v, const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    v.insert(v.end(), b, b + n);
  }
};

struct Recorder {
  enum class Mode { kRecord, kCapture };
  explicit Recorder(Mode m) : mode(m) {}
  Mode mode;
  LoopRecord record;                          // kRecord
  std::vector<std::function<void()>> nodes;  // kCapture in the emulation: the graph's nodes
};

// The recorder of the loop being recorded or captured on this host thread, else null.
Recorder*& active_recorder();

// Throws std::logic_error when a loop is being recorded or captured on this thread: `what` cannot
// be part of a graph (synchronisation, host copies, allocation).
void refuse_in_graph(const char* what);

// A distinct address per kernel body type: the kernel's identity in a record, in both builds. A
// mutable variable, not an empty function: a linker folding identical code (--icf) could give two
// empty functions one address, never two writable objects.
template <typename Body>
inline char kernel_tag = 0;

// Records a kernel launch (record mode). Returns true when the caller must not launch: always in
// record mode, and in the emulation's capture mode after keeping `node` as the graph's next node.
template <typename Body, typename Node>
bool intercept_launch(NodeKind kind, index_t blocks, int threads, std::size_t shared_bytes, const Body& body,
                      const char* file, int line, Node&& node) {
  Recorder* r = active_recorder();
  if (r == nullptr) return false;
  if (r->mode == Recorder::Mode::kRecord) {
    // Padding bytes would be indeterminate: equal launches could compare unequal (a needless
    // capture) -- a body launched inside a graphed loop must be all members.
    if (!std::has_unique_object_representations<Body>::value) {
      throw std::logic_error(concat(file, ":", line, ": a kernel body launched in a graphed loop has padding bytes "
                                    "or floating-point members (its bytes are its identity in a CUDA graph record)"));
    }
    r->record.add_topology(kind);
    r->record.add_topology(&kernel_tag<Body>);
    r->record.add_topology(blocks);
    r->record.add_topology(threads);
    r->record.add_topology(shared_bytes);
    r->record.add_params_bytes(&body, sizeof(Body));
    return true;
  }
#if defined(__CUDACC__)
  (void)node;
  return false;  // stream capture records the real launch
#else
  r->nodes.emplace_back(std::forward<Node>(node));
  return true;
#endif
}

// The same for a GEMM or a device copy: `topology` and `params` are trivially copyable structs
// of the call's arguments.
template <typename Topology, typename Params, typename Node>
bool intercept_call(NodeKind kind, const Topology& topology, const Params& params, Node&& node) {
  Recorder* r = active_recorder();
  if (r == nullptr) return false;
  if (r->mode == Recorder::Mode::kRecord) {
    r->record.add_topology(kind);
    r->record.add_topology(topology);
    r->record.add_params(params);
    return true;
  }
#if defined(__CUDACC__)
  (void)node;
  return false;
#else
  r->nodes.emplace_back(std::forward<Node>(node));
  return true;
#endif
}

// graph.cu: whether graphs are on (rnnkit.cuda.set_graphs), the cache, capture and launch.
bool graphs_enabled();
// Launches the cached graph whose record equals `record` on `stream`; false when there is none.
bool launch_cached_graph(const LoopRecord& record, Stream stream);
// Starts capturing (nvcc: on this thread's capture stream, returned; the emulation: `stream`).
Stream begin_graph_capture(Recorder& capture);
// Abandons a capture a loop's exception interrupted (nothing is cached or launched).
void abort_graph_capture(Recorder& capture) noexcept;
// Ends the capture, caches the graph under `record` (updating one of the same topology, or
// instantiating), and launches it on `stream`.
void finish_graph_capture(Recorder& capture, LoopRecord record, Stream stream);

class RecorderScope {
 public:
  explicit RecorderScope(Recorder* r) : saved_(active_recorder()) { active_recorder() = r; }
  ~RecorderScope() { active_recorder() = saved_; }
  RecorderScope(const RecorderScope&) = delete;
  RecorderScope& operator=(const RecorderScope&) = delete;

 private:
  Recorder* saved_;
};

template <typename Loop>
void run_graphed(Stream stream, Loop&& loop) {
  if (!graphs_enabled() || active_recorder() != nullptr) {
    loop(stream);
    return;
  }
  Recorder rec(Recorder::Mode::kRecord);
  {
    RecorderScope scope(&rec);
    loop(stream);
  }
  if (rec.record.topology.empty() || launch_cached_graph(rec.record, stream)) return;
  Recorder cap(Recorder::Mode::kCapture);
  const Stream capture_stream = begin_graph_capture(cap);
  try {
    RecorderScope scope(&cap);
    loop(capture_stream);
  } catch (...) {
    abort_graph_capture(cap);
    throw;
  }
  finish_graph_capture(cap, std::move(rec.record), stream);
}

}  // namespace cuda
}  // namespace rnnkit
