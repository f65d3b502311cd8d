// One recurrent layer in one direction, for every backend: the shape contract, the parameters and
// gradients, and the one table of its buffers from which their sizes, views and carving all come.
//
// What a backend's time loop does with them (the CPU's is cpu/layer_forward.cpp and
// cpu/layer_backward.cpp; the CUDA backend's will follow the same plan):
//
//   forward   gates = x W_ih^T                               one GEMM over all T*N rows
//             per step: h_{t-1} W_hh^T (one GEMM; two for the two-stage GRU), the cell's pointwise
//             math with the biases fused in, and h_full W_hr^T for an LSTM with a projection
//   backward  per step: the cell's pointwise backward and one GEMM for dh_{t-1} (plus the
//             projection's and the two-stage GRU's small GEMMs)
//             after the loop: dW_ih, dW_hh, dW_hr, dx one GEMM each, db_ih/db_hh one column sum each
//
// Notation: T steps, N batch, C input features, H hidden units, P state width (H, or proj_size
// for an LSTM with a projection), G = the cell's gates, GH = G*H. Arrays are row-major; an array
// with a leading-dimension argument (y, dy) may be a column slice of a wider one (a bidirectional
// layer writes its half of [T,N,2P]).
//
// Variable lengths: with lengths[n] = L_n (0 <= L_n <= T), steps t >= L_n of sequence n are
// padding. The state is carried unchanged through them, their output is 0 and their gradient
// ignored. A reverse layer processes t = T-1 ... 0, so each sequence starts from h0 at its own
// last valid step. A sequence of length 0 ends with h_n = c_n = 0, as ONNX Runtime has it (not
// h0: nothing was computed), so its d_state_n is dropped and its dh0, dc0 are 0.
#pragma once

#include "rnnkit/cells.h"
#include "rnnkit/common.h"

namespace rnnkit {

struct LayerDims {
  index_t T = 0;  // steps
  index_t N = 0;  // batch
  index_t C = 0;  // input features
  index_t H = 0;  // hidden units
  index_t P = 0;  // state width: H, or proj_size for LSTM with a projection
};

// Rejects dims the kernels cannot take (non-positive, or a GEMM dimension beyond a 32-bit BLAS
// int) with std::invalid_argument naming the dimension.
void check_layer_dims(const LayerDims& d, index_t gates);

// The widths every loop and every size derives from the dims and the cell: computed once per
// call (layer_shape) and handed to the loop, the sizing and the carving alike.
struct LayerShape {
  LayerDims d;
  CellInfo cell;
  bool training = false;  // a training forward keeps every step for backward
  index_t GH = 0;           // G*H: columns of the gate buffers
  index_t G1 = 0;           // columns of the per-step recurrent GEMM (stage 1 of a two-stage cell)
  index_t saved_width = 0;  // per (t, n): saved_slots*H rows plus stats scalars
  index_t tmp_width = 0;    // per row: tmp_slots*H
  index_t TN = 0;           // T*N rows of the hoisted GEMMs
  index_t state_slots = 0;  // states kept: T+1 in training, two alternating in inference
  bool project = false;     // an LSTM with a projection (P < H)
  // Backward leaves the forward's kept buffers as they are, gathering the gate gradients in a
  // scratch buffer of their own (a cache kept as a caller's reserve, backpropagated any number of
  // times). Otherwise it writes them over the gates, which are warm in cache when it does (~3%
  // faster at the mid shape than a separate buffer), and the kept buffers serve one backward.
  bool keep_cache = false;
  // precision="bfloat16": every GEMM of the loops rounds its operands to bfloat16 (float stacks).
  bool bf16 = false;
  // LayerNorm cells accumulate their parameter (and bias) gradients per batch row, in this
  // layout: the LN parameters in LnParam order (ln_param_width each), then db_ih, db_hh. Cells
  // with peepholes: dL/d(peephole weights) [3H]; IndRNN: dL/du [H].
  index_t partial_width = 0;
  // Regularisers inside the loop (StackConfig has their meaning): 0 is off. zoneout_masks: draw
  // zoneout's masks (else its expectation); recurrent_dropout is 0 outside training.
  double zoneout = 0.0;
  double zoneout_cell = 0.0;
  bool zoneout_masks = false;
  double recurrent_dropout = 0.0;
};
LayerShape layer_shape(CellKind cell, const LayerDims& d, bool training);

// A layer-direction's parameters (Ptr = const S*) or their gradients (Ptr = S*), PyTorch's
// shapes and gate order. Biases are null with bias=False, w_hr without a projection, ln[p] for
// cells without LayerNorm. Gradients are ACCUMULATED into (+=) and null exactly where the
// parameter is.
template <typename Ptr>
struct LayerParams {
  Ptr w_ih = nullptr;           // [GH,C]
  Ptr w_hh = nullptr;           // [GH,P] (IndRNN: u [H])
  Ptr b_ih = nullptr;           // [GH]
  Ptr b_hh = nullptr;           // [GH]
  Ptr w_hr = nullptr;           // [P,H]
  Ptr w_peephole = nullptr;     // [3,H] peepholes of gates i, f, o (general LSTM with peephole=True)
  Ptr ln[kMaxLnParams] = {};    // LnParam order: [GH] x 4, then [H] x 2 (LayerNormLSTM)
};
template <typename S>
using LayerWeights = LayerParams<const S*>;
template <typename S>
using LayerGrads = LayerParams<S*>;

// ---- buffers ----------------------------------------------------------------------------------
// When a buffer is needed: kept from a training forward for its backward (in inference, scratch of
// the forward call), or scratch of one forward or one backward call. A buffer may belong to both
// scratch sets (it is then carved from each pass's own block).
enum BufferUse : unsigned {
  kKept = 1u,
  kForwardScratch = 2u,
  kBackwardScratch = 4u,
};

// Named views of one layer-direction's buffers. Sizes, order and use: for_each_layer_buffer.
template <typename S>
struct LayerBuffers {
  // kept (inference: scratch)
  S* h_seq = nullptr;   // [T+1,N,P] the states (inference: [2,N,P]); see the loops for the slots
  S* c_seq = nullptr;   // [T+1,N,H] cell states (cells with one)
  S* gates = nullptr;   // [T,N,GH] x W_ih^T, then what the cell saves there; backward turns it into
                        // dL/d(gates), unless the shape keeps the cache (LayerShape::keep_cache)
  S* saved = nullptr;   // [T,N,saved_width] what the cell saves besides (inference: [N,..])
  S* h_full = nullptr;  // [T,N,H] the unprojected h of an LSTM with a projection (inference: [N,H])
  // forward scratch
  S* bias = nullptr;    // [3,GH]: b_ih + b_hh, b_ih, b_hh (zeros without bias)
  S* hgates = nullptr;  // [N,GH] h_{t-1} W_hh^T of separate-recurrent cells
  S* tmp = nullptr;     // [N,tmp_width] the cell's scratch rows (backward too)
  // backward scratch
  S* dgates = nullptr;   // [N,GH] one step's dL/d(gates), staged until the step's recurrent GEMM
  S* dgates_all = nullptr;  // [T,N,GH] dL/d(gates) of every step (keep_cache only; else in gates)
  S* dhgates = nullptr;  // [T,N,GH] dL/d(hgates) of separate-recurrent cells
  S* dh_a = nullptr;     // [N,P] dL/dh ping-pong: the gradient from later steps ...
  S* dh_b = nullptr;     // [N,P] ... and with this step's dy added
  S* dc = nullptr;       // [N,H] dL/dc (cells with a cell state)
  S* dh_full = nullptr;  // [N,H] dL/d(unprojected h) (projection)
  S* dh_proj = nullptr;  // [T,N,P] dL/d(projected h) of every step (projection: for dW_hr)
  S* partials = nullptr; // [N,partial_width] per-row gradient sums (LayerNorm cells, peepholes)
  // regularisers (LayerShape): zoneout's pre-mix states, recurrent dropout's masked states
  S* h_zone = nullptr;   // [T,N,P] each step's new h before zoneout's mix (inference: [N,P])
  S* c_zone = nullptr;   // [T,N,H] each step's new c before zoneout_cell's mix (inference: [N,H])
  // zoneout's draws of a training forward with masks, one byte each (1: h_{t-1} kept; as bytes in
  // S memory, zoneout_draws()), for backward to read instead of drawing again
  S* h_keep = nullptr;   // [T,N,zoneout_draw_row(P)] bytes
  S* c_keep = nullptr;   // [T,N,zoneout_draw_row(H)] bytes
  S* h_drop = nullptr;   // [T,N,P] row t: the state before step t times the recurrent mask
  S* rec_mask = nullptr; // [N,P] recurrent dropout's mask (0 or 1/(1-p)), both passes
  S* dzone_h = nullptr;  // [N,P] the part of dL/dh_t that zoneout carries to h_{t-1}
  S* dzone_c = nullptr;  // [N,H] likewise for c
  S* drec = nullptr;     // [N,P] d(recurrent pre-activations) W_hh, before the recurrent mask
};

// The bytes of one (t, n) row of zoneout's draws of `width` units: a whole number of 4-byte
// elements (any S of 4 bytes or more), so that a buffer's size stays rows * (elements per row),
// linear in T*N as the torch bridge's symbolic reserve size needs (interop/torch_ops.py).
RNNKIT_HOSTDEVICE index_t zoneout_draw_row(index_t width) { return (width + 3) / 4 * 4; }
template <typename S>
unsigned char* zoneout_draws(S* view) { return reinterpret_cast<unsigned char*>(view); }

// THE buffer table: calls fn(use, elements, view) for every buffer of `b`, in carving order.
// Sizes are overflow-checked; a buffer a cell or option does not need has 0 elements.
template <typename S, typename Fn>
void for_each_layer_buffer(const LayerShape& s, LayerBuffers<S>& b, Fn&& fn) {
  const LayerDims& d = s.d;
  const bool train = s.training;
  const index_t NP = checked_mul(d.N, d.P, "state"), NH = checked_mul(d.N, d.H, "cell state");
  const index_t rows = train ? s.TN : d.N;  // rows of the per-step buffers a forward keeps
  fn(kKept, checked_mul(s.state_slots, NP, "state sequence"), b.h_seq);
  fn(kKept, s.cell.has_cell_state ? checked_mul(s.state_slots, NH, "cell state sequence") : 0, b.c_seq);
  fn(kKept, checked_mul(s.TN, s.GH, "gate buffer"), b.gates);
  fn(kKept, checked_mul(rows, s.saved_width, "saved values"), b.saved);
  fn(kKept, s.project ? checked_mul(rows, d.H, "projection input") : 0, b.h_full);
  fn(kForwardScratch, checked_mul(3, s.GH, "biases"), b.bias);
  fn(kForwardScratch, s.cell.separate_recurrent ? checked_mul(d.N, s.GH, "recurrent gates") : 0, b.hgates);
  fn(kForwardScratch | kBackwardScratch, checked_mul(d.N, s.tmp_width, "scratch rows"), b.tmp);
  fn(kBackwardScratch, checked_mul(d.N, s.GH, "gate gradients"), b.dgates);
  fn(kBackwardScratch, train && s.keep_cache ? checked_mul(s.TN, s.GH, "gate gradients of every step") : 0,
     b.dgates_all);
  fn(kBackwardScratch, s.cell.separate_recurrent ? checked_mul(s.TN, s.GH, "recurrent gate gradients") : 0,
     b.dhgates);
  fn(kBackwardScratch, NP, b.dh_a);
  fn(kBackwardScratch, NP, b.dh_b);
  fn(kBackwardScratch, s.cell.has_cell_state ? NH : 0, b.dc);
  fn(kBackwardScratch, s.project ? NH : 0, b.dh_full);
  fn(kBackwardScratch, s.project ? checked_mul(s.TN, d.P, "projection gradient") : 0, b.dh_proj);
  fn(kBackwardScratch, checked_mul(d.N, s.partial_width, "gradient partial sums"), b.partials);
  fn(kKept, s.zoneout > 0.0 ? checked_mul(rows, d.P, "zoneout states") : 0, b.h_zone);
  fn(kKept, s.zoneout_cell > 0.0 ? checked_mul(rows, d.H, "zoneout cell states") : 0, b.c_zone);
  const bool draws = train && s.zoneout_masks;
  fn(kKept, draws && s.zoneout > 0.0 ? checked_mul(rows, zoneout_draw_row(d.P) / 4, "zoneout draws") : 0, b.h_keep);
  fn(kKept, draws && s.zoneout_cell > 0.0 ? checked_mul(rows, zoneout_draw_row(d.H) / 4, "zoneout cell draws") : 0,
     b.c_keep);
  const bool rd = s.recurrent_dropout > 0.0;
  fn(kKept, rd ? checked_mul(s.TN, d.P, "recurrent dropout states") : 0, b.h_drop);
  fn(kForwardScratch | kBackwardScratch, rd ? NP : 0, b.rec_mask);
  fn(kBackwardScratch, s.zoneout > 0.0 ? NP : 0, b.dzone_h);
  fn(kBackwardScratch, s.zoneout_cell > 0.0 ? NH : 0, b.dzone_c);
  fn(kBackwardScratch, rd ? NP : 0, b.drec);
}

// Elements of the buffers of some uses (kKept, kForwardScratch, kBackwardScratch, or several of
// them or'ed together: one block for all).
inline index_t layer_buffer_elems(const LayerShape& s, unsigned use) {
  LayerBuffers<char> unused;
  index_t total = 0;
  for_each_layer_buffer(s, unused, [&](unsigned uses, index_t n, char*&) {
    if (uses & use) total = checked_add(total, n, "layer buffers");
  });
  return total;
}

// Points the views of those uses at consecutive parts of `p` (null for an empty one) and returns
// the end; the other views are left alone. `p` holds layer_buffer_elems(s, use) elements.
template <typename S>
S* carve_layer_buffers(const LayerShape& s, unsigned use, S* p, LayerBuffers<S>* b) {
  for_each_layer_buffer(s, *b, [&](unsigned uses, index_t n, S*& view) {
    if (!(uses & use)) return;
    view = n > 0 ? p : nullptr;
    p += n;
  });
  return p;
}

}  // namespace rnnkit
