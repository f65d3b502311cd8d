// One layer-direction on the CPU: the time loops (layer_forward.cpp, layer_backward.cpp) and the
// CPU's own buffers beside the shared ones of layer.h -- the recurrent weights packed once per call
// for the per-step GEMM (packed_gemm.h).
//
// Both loops are run by every thread of a team (team.h) with the same arguments: each thread takes
// its share of the rows (pointwise work, hoisted GEMMs) and columns (per-step GEMMs) and the
// threads meet at barriers between phases. They return after a final barrier-free phase: callers
// barrier before reading outputs written by other threads. Nothing here allocates: the caller
// carves every buffer (layer.h's table, and for_each_packed_buffer below).
#pragma once

#include "cpu/bf16_gemm.h"
#include "cpu/packed_gemm.h"
#include "cpu/team.h"
#include "rnnkit/stack.h"

namespace rnnkit {
namespace cpu {

// The per-step GEMMs' right-hand matrices, packed (null: multiplied by BLAS as they are).
// Forward packs W^T (columns of h W^T), backward W (rows of d W).
template <typename S>
struct PackedWeights {
  S* rec = nullptr;     // W_hh (the step GEMM's G1 gates)
  S* stage2 = nullptr;  // W_hn, the candidate gate of a two-stage cell
  S* proj = nullptr;    // W_hr of a projection
  // A step snapshot's (StepWeights, bf16 only): the panels above were packed when it was made, not
  // per call, and `input` holds W_ih^T packed too ([C, GH], bf16 pairs), so the input projection
  // reads it instead of converting W_ih.
  bool prepacked = false;
  const S* input = nullptr;
};

// Packing W costs about one step's worth of reading W: it pays from a few steps on. Shorter
// calls (streaming, T = 1) multiply by the weights as they are.
constexpr index_t kMinStepsToPack = 8;

// The CPU's buffer table, as layer.h's: fn(elements, view) for each packed weight of one pass
// (`backward` false: the forward's W^T panels; true: the backward's W panels); all are 0 when the
// CPU has no packed kernel for S or the call is too short to pay for packing.
template <typename S, typename Fn>
void for_each_packed_buffer(const LayerShape& s, bool backward, PackedWeights<S>& w, Fn&& fn) {
  // bf16 always packs (its kernel reads only packed bf16 pairs), into the same S memory.
  const bool pack = s.bf16 || (s.d.T >= kMinStepsToPack && packed_gemm_available<S>());
  // The right-hand matrix [K, cols] of a step GEMM whose weight is [out, in]: forward multiplies
  // by W^T ([in, out]), backward by W ([out, in]).
  auto size = [&](index_t out, index_t in) -> index_t {
    if (!pack) return 0;
    const index_t K = backward ? out : in, cols = backward ? in : out;
    if (s.bf16) return bf16_packed_elems<S>(K, cols);
    return packed_size<S>(K, cols);
  };
  fn(s.cell.recurrent_gemm ? size(s.G1, s.d.P) : 0, w.rec);
  fn(s.cell.two_stage ? size(s.GH - s.G1, s.d.P) : 0, w.stage2);
  fn(s.project ? size(s.d.P, s.d.H) : 0, w.proj);
}

template <typename S>
index_t packed_buffer_elems(const LayerShape& s, bool backward) {
  PackedWeights<S> unused;
  index_t total = 0;
  for_each_packed_buffer<S>(s, backward, unused, [&](index_t n, S*&) { total = checked_add(total, n, "packed weights"); });
  return total;
}

template <typename S>
S* carve_packed_buffers(const LayerShape& s, bool backward, S* p, PackedWeights<S>* w) {
  for_each_packed_buffer<S>(s, backward, *w, [&](index_t n, S*& view) {
    view = n > 0 ? p : nullptr;
    p += n;
  });
  return p;
}

// One layer-direction forward. x [T,N,C] contiguous; state0: h0 [N,P], c0 [N,H] or null for
// zeros (c0: cells with a cell state); lengths [N] or null (checked by the caller); reverse:
// t = T-1 ... 0. y: rows y[(t*N + n) * y_ld + j], j < P, must not alias an input. state_n: the
// final h [N,P] and c [N,H] (or null).
enum class StepOrder { kNone, kAscending, kDescending };

template <typename S>
struct LayerForwardArgs {
  const S* x = nullptr;
  StatePair<const S*> state0;
  const index_t* lengths = nullptr;
  bool reverse = false;
  const CellOptions* options = nullptr;  // the direction's (general cells)
  // The masks of zoneout and recurrent dropout (LayerShape): the call's dropout seed, and the group
  // whose streams they come from (stack.h).
  std::uint64_t seed = 0;
  index_t group = 0;
  S* y = nullptr;
  index_t y_ld = 0;
  StatePair<S*> state_n;
  // A streaming step's order of reads (step_layers alternates it): float steps of at most
  // kRowGemmMaxM rows multiply on row_gemm, in descending rows of each weight matrix and W_hh
  // before W_ih in a kDescending call, so a call reads in the reverse of the previous call's
  // order. Both orders give the same results bit for bit. kNone: not a streaming step.
  StepOrder step_order = StepOrder::kNone;
};

// One layer-direction BPTT through a training forward (x, lengths, reverse: as given to it; the
// forward's kept buffers: backward overwrites the gates with their gradients, so they serve one
// backward, unless the shape keeps the cache). dy rows like y (dy_ld), or null for zeros;
// d_state_n: dL/dh_n [N,P], dL/dc_n [N,H] or null for zeros; dx [T,N,C]: dgates W_ih is added (dx_accumulate) or written, null to skip;
// d_state0: dL/dh0 [N,P], dL/dc0 [N,H] overwritten (c may be null without a cell state). The
// gradients are ACCUMULATED into.
template <typename S>
struct LayerBackwardArgs {
  const S* x = nullptr;
  const index_t* lengths = nullptr;
  bool reverse = false;
  const CellOptions* options = nullptr;
  std::uint64_t seed = 0;  // as the forward's
  index_t group = 0;
  const S* dy = nullptr;
  index_t dy_ld = 0;
  StatePair<const S*> d_state_n;
  S* dx = nullptr;
  bool dx_accumulate = false;
  StatePair<S*> d_state0;
};

template <typename S>
void layer_forward(const TeamContext& tc, CellKind cell, const LayerShape& s, const LayerWeights<S>& w,
                   const LayerBuffers<S>& buffers, const PackedWeights<S>& packed, const LayerForwardArgs<S>& args);

template <typename S>
void layer_backward(const TeamContext& tc, CellKind cell, const LayerShape& s, const LayerWeights<S>& w,
                    const LayerGrads<S>& grads, const LayerBuffers<S>& buffers, const PackedWeights<S>& packed,
                    const LayerBackwardArgs<S>& args);

}  // namespace cpu
}  // namespace rnnkit
