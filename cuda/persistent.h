// The persistent forward for small batches: one cooperative launch runs all T steps of a
// layer-direction, the recurrent weights held in shared memory from the first step to the last, one
// grid barrier per step (device.h's launch_persistent). At B = 1 the standard path's per-step GEMM
// and pointwise launches cost more than their arithmetic; here a step is a few hundred cycles of
// multiply-adds out of shared memory.
//
// Work split: block b owns `units` hidden units u0 = b*units ... (the last block fewer); it keeps
// their rows of W_hh (all G gates, all H inputs: G*units*H values) in shared memory as
// [p][k][unit], so the threads of one p read consecutive banks. Each step has two phases:
//   recurrent  thread (q, n, unit) sums p in its q-th share of 0..H-1 of h_{t-1}[n,p] W_hh[k*H+j,p]
//              for every gate k (h_{t-1} comes from every block: read around L1), into shared
//              partials [split][N][G][units];
//   pointwise  thread (n, unit) adds its `split` partials in order, puts the sum where the standard
//              path's recurrent GEMM puts it (into the gates, or hgates for separate-recurrent cells)
//              and runs the same per-element bodies as the standard path (ForwardPointwise,
//              StepOutputs): the cell of cells.h, the padded-step rules, y.
// So a training forward leaves exactly the standard path's cache, and backward is the standard one.
//
// Taken for RNN tanh/ReLU, LSTM without a projection and GRU (reset_after): the cells whose step is
// one recurrent product over h_{t-1} (the two-stage GRU needs a product of r*h_{t-1} in between,
// the LayerNorm cells a row reduction; both keep the standard path). When: persistent_plan.
#pragma once

#include "kernels.h"
#include "rnnkit_cuda.h"

namespace rnnkit {
namespace cuda {

// Where the states of step t live: the CPU's StateSlots (cpu/layer_loop.h).
struct Slots {
  index_t T;
  bool reverse, training;
  RNNKIT_HOSTDEVICE index_t step(index_t t) const { return reverse ? T - 1 - t : t; }
  RNNKIT_HOSTDEVICE index_t prev(index_t t) const { return training ? (reverse ? t + 1 : t) : step(t) % 2; }
  RNNKIT_HOSTDEVICE index_t cur(index_t t) const { return training ? (reverse ? t : t + 1) : (step(t) + 1) % 2; }
  RNNKIT_HOSTDEVICE index_t first() const { return training ? (reverse ? T : 0) : 0; }
  RNNKIT_HOSTDEVICE index_t last() const { return cur(reverse ? 0 : T - 1); }
};

// rnnkit.cuda.set_persistent: "auto" takes the persistent kernel for batches up to
// kPersistentMaxBatch where it fits, "always" wherever it can run, "never" not at all.
enum class PersistentMode : int { kAuto = 0, kAlways = 1, kNever = 2 };
constexpr index_t kPersistentMaxBatch = 16;
// The most threads a block gets (the split of the dot products stops there).
constexpr int kPersistentThreads = 512;

inline PersistentMode persistent_mode() { return static_cast<PersistentMode>(get_persistent_mode()); }
void count_persistent_launch();  // persistent_launches() (rnnkit_cuda.h) counts them

template <typename Cell>
constexpr bool persistent_cell() {
  // ONNX's general cells run the standard path: their options would have to ride in the
  // persistent body too, for shapes (small batches of ONNX models) not worth the registers.
  return Cell::kLnParams == 0 && !Cell::kTwoStage && !Cell::kOptions && has_recurrent_gemm<Cell>();
}

struct PersistentPlan {
  bool use = false;
  index_t blocks = 0, units = 0;
  int split = 1, threads = 0;
  std::size_t shared_bytes = 0;
};

// Whether (and how) a layer-direction of this shape runs persistently on a device with `limits`.
template <typename Cell>
PersistentPlan persistent_plan(const LayerShape& s, std::size_t elem_bytes, const DeviceLimits& limits) {
  PersistentPlan p;
  const PersistentMode mode = persistent_mode();
  const index_t N = s.d.N, H = s.d.H, G = Cell::kGates;
  if (!persistent_cell<Cell>() || s.project || mode == PersistentMode::kNever || !limits.cooperative) return p;
  if (mode == PersistentMode::kAuto && N > kPersistentMaxBatch) return p;
  const index_t sms = limits.multiprocessors > 0 ? limits.multiprocessors : 1;
  p.units = (H + sms - 1) / sms;
  p.blocks = (H + p.units - 1) / p.units;
  if (N * p.units > kPersistentThreads) return p;
  // Split each dot product over more threads while they have at least 8 terms each.
  while (2 * p.split * N * p.units <= kPersistentThreads && 2 * p.split * 8 <= H) p.split *= 2;
  p.threads = static_cast<int>(p.split * N * p.units);
  p.shared_bytes = static_cast<std::size_t>(G * p.units * (H + p.split * N)) * elem_bytes;
  p.use = p.shared_bytes <= limits.max_shared_bytes;
  return p;
}

// The kernel body (device.h's persistent interface). P == H.
template <typename Cell, typename S>
struct PersistentForward {
  static constexpr int G = Cell::kGates;
  index_t T, N, H, GH, SW, units;
  int split;
  Slots slots;
  const S* w_hh;  // [GH,H]
  S* h_seq;       // the state slots (LayerBuffers::h_seq, c_seq)
  S* c_seq;
  S* gates;       // [T,N,GH] x W_ih^T on entry
  S* hgates;      // [N,GH] separate-recurrent cells
  S* saved;       // [T,N,SW] training, [N,SW] inference
  // The per-element bodies of the standard path; the step's fields are set per step.
  ForwardPointwise<Cell, S, Stage::kWhole> point;
  StepOutputs<S> out;

  RNNKIT_HOSTDEVICE index_t steps() const { return T; }
  RNNKIT_DEVICE S* weights(const Thread& th) const { return static_cast<S*>(th.shared); }
  RNNKIT_DEVICE S* partials(const Thread& th) const { return static_cast<S*>(th.shared) + G * units * H; }

  RNNKIT_DEVICE void load(const Thread& th) const {
    const index_t u0 = th.block * units;
    S* w = weights(th);
    // p fastest: consecutive threads read consecutive elements of a row of W_hh.
    for (index_t i = th.thread; i < G * units * H; i += th.block_dim) {
      const index_t p = i % H, ku = i / H, k = ku / units, u = ku % units;
      w[(p * G + k) * units + u] = u0 + u < H ? w_hh[(k * H + u0 + u) * H + p] : S(0);
    }
  }

  RNNKIT_DEVICE void recurrent(index_t i, const Thread& th) const {
    const index_t t = slots.step(i);
    const S* h_prev = h_seq + slots.prev(t) * N * H;
    const index_t q = th.thread / (N * units), n = (th.thread / units) % N, u = th.thread % units;
    const index_t share = (H + split - 1) / split, p0 = q * share, p1 = p0 + share < H ? p0 + share : H;
    const S* w = weights(th);
    S acc[G];
    for (int k = 0; k < G; ++k) acc[k] = S(0);
    for (index_t p = p0; p < p1; ++p) {
      const S hv = load_coherent(h_prev + n * H + p);
      for (int k = 0; k < G; ++k) acc[k] += hv * w[(p * G + k) * units + u];
    }
    S* part = partials(th) + (q * N + n) * G * units;
    for (int k = 0; k < G; ++k) part[k * units + u] = acc[k];
  }

  RNNKIT_DEVICE void pointwise(index_t i, const Thread& th) const {
    if (th.thread >= N * units) return;
    const index_t n = th.thread / units, u = th.thread % units, j = th.block * units + u;
    if (j >= H) return;
    const index_t t = slots.step(i);
    S* gates_t = gates + t * N * GH;
    const S* part = partials(th);
    for (int k = 0; k < G; ++k) {
      S rec = S(0);
      for (index_t q = 0; q < split; ++q) rec += part[((q * N + n) * G + k) * units + u];
      if (Cell::kSeparateRecurrent) {
        hgates[n * GH + k * H + j] = rec;
      } else {
        gates_t[n * GH + k * H + j] += rec;
      }
    }
    S* h_prev = h_seq + slots.prev(t) * N * H;
    S* h_cur = h_seq + slots.cur(t) * N * H;
    S* c_prev = Cell::kHasCellState ? c_seq + slots.prev(t) * N * H : nullptr;
    S* c_cur = Cell::kHasCellState ? c_seq + slots.cur(t) * N * H : nullptr;
    ForwardPointwise<Cell, S, Stage::kWhole> pt = point;
    pt.t = t, pt.gates = gates_t, pt.saved = saved + (slots.training ? t * N * SW : 0);
    pt.h_prev = h_prev, pt.c_prev = c_prev, pt.h_out = h_cur, pt.c_cur = c_cur;
    pt.element(n, j);
    StepOutputs<S> o = out;
    o.t = t, o.h_prev = h_prev, o.h_cur = h_cur, o.c_prev = c_prev, o.c_cur = c_cur;
    o.element(n, j);
  }
};

}  // namespace cuda
}  // namespace rnnkit
