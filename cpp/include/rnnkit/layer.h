// One recurrent layer in one direction on the CPU: the shape contract, every buffer size, and the
// generic forward/BPTT loops (run for every cell of cells.h).
//
// The big matrix products are hoisted out of the time loop:
//
//   forward   gates = x W_ih^T                               one GEMM over all T*N rows
//             per step: h_{t-1} W_hh^T (one GEMM; two for the two-stage GRU), the cell's pointwise
//             math with the biases fused in, and h_full W_hr^T for an LSTM with a projection
//   backward  per step: the cell's pointwise backward and one GEMM for dh_{t-1} (plus the
//             projection's and the two-stage GRU's small GEMMs)
//             after the loop: dW_ih, dW_hh, dW_hr, dx one GEMM each, db_ih/db_hh one column sum each
//
// Notation: T steps, N batch, C input features, H hidden units, P state width (H, or proj_size
// for an LSTM with a projection), G = Cell::kGates, GH = G*H. Arrays are row-major; an array
// with a leading-dimension argument (y, dy) may be a column slice of a wider one (a bidirectional
// layer writes its half of [T,N,2P]).
//
// Variable lengths: with lengths[n] = L_n (1 <= L_n <= T), steps t >= L_n of sequence n are
// padding. The state is carried unchanged through them, their output is 0 and their gradient
// ignored. A reverse layer processes t = T-1 ... 0, so each sequence starts from h0 at its own
// last valid step.
#pragma once

#include "rnnkit/cells.h"
#include "rnnkit/common.h"
#include "rnnkit/team.h"

namespace rnnkit {

struct LayerDims {
  index_t T = 0;  // steps
  index_t N = 0;  // batch
  index_t C = 0;  // input features
  index_t H = 0;  // hidden units
  index_t P = 0;  // state width: H, or proj_size for LSTM with a projection
};

// Parameters, PyTorch's shapes and gate order. Biases may be null (bias=False); w_hr is null
// without a projection; ln[p] is null for cells without LayerNorm.
template <typename S>
struct LayerWeights {
  const S* w_ih = nullptr;  // [GH,C]
  const S* w_hh = nullptr;  // [GH,P]
  const S* b_ih = nullptr;  // [GH]
  const S* b_hh = nullptr;  // [GH]
  const S* w_hr = nullptr;  // [P,H]
  const S* ln[6] = {};      // LnParam order: [GH] x 4, then [H] x 2 (LayerNormLSTM)
};

// Gradients, same shapes, ACCUMULATED into (+=); null exactly where the weight is null.
template <typename S>
struct LayerGrads {
  S* dw_ih = nullptr;
  S* dw_hh = nullptr;
  S* db_ih = nullptr;
  S* db_hh = nullptr;
  S* dw_hr = nullptr;
  S* dln[6] = {};
};

// Rejects dims the kernels cannot take (non-positive, or a GEMM dimension beyond 32-bit BLAS)
// with std::invalid_argument naming the dimension.
void check_layer_dims(const LayerDims& d, index_t gates);

// Per-cell facts the layer needs (from the cell's traits).
struct CellInfo {
  int gates = 1;
  bool has_cell_state = false;
  bool separate_recurrent = false;
  bool two_stage = false;
  int cache_slots = 0;
  int stats = 0;
  int tmp_slots = 0;
  int ln_params = 0;
  bool cell_bias_grads = false;
};
CellInfo cell_info(CellKind cell);

// Every buffer size (in elements) of one layer-direction, computed here and nowhere else.
// "Training" sizes are kept from forward to backward; the others are scratch of one call.
struct LayerSizes {
  index_t gate_width = 0;   // GH
  index_t cache_width = 0;  // per (t,n): cache_slots*H + stats
  index_t tmp_width = 0;    // per row: tmp_slots*H
  // forward, training: kept for backward / inference: scratch
  index_t h_seq = 0;   // [T+1,N,P] / [2,N,P]
  index_t c_seq = 0;   // [T+1,N,H] / [2,N,H] (cells with a cell state), else 0
  index_t gates = 0;   // [T,N,GH]  (both)
  index_t cache = 0;   // [T,N,cache_width] / [N,cache_width]
  index_t h_full = 0;  // [T,N,H] / [N,H] with a projection, else 0
  // forward scratch
  index_t bias = 0;    // 3*GH: b_ih + b_hh, b_ih, b_hh (zeros without bias)
  index_t hgates = 0;  // [N,GH] for separate-recurrent cells, else 0
  index_t tmp = 0;     // [N,tmp_width]
  index_t packed_rec = 0;    // W_hh^T (the step GEMM's columns) packed for packed_gemm, else 0
  index_t packed_stage2 = 0; // two-stage GRU: W_hn^T packed
  index_t packed_proj = 0;   // projection: W_hr^T packed
  // backward scratch
  index_t dgates = 0;   // [N,GH]: one step's dL/d(gates), staged before it replaces that step's
                        // gates in the forward's buffer (backward consumes the forward's state)
  index_t dhgates = 0;  // [T,N,GH] for separate-recurrent cells, else 0
  index_t dh = 0;       // [N,P] (two of these)
  index_t dc = 0;       // [N,H] with a cell state
  index_t dh_full = 0;  // [N,H] with a projection
  index_t dh_proj = 0;  // [T,N,P] with a projection
  index_t partial_width = 0;  // LayerNorm cells: per-row sums of LN and bias gradients
  index_t partials = 0;       // N * partial_width
  index_t packed_drec = 0;    // W_hh (rows of the step GEMM) packed, else 0
  index_t packed_dstage2 = 0; // two-stage GRU: W_hn packed
  index_t packed_dproj = 0;   // projection: W_hr packed

  index_t forward_kept() const;     // h_seq + c_seq + gates + cache + h_full
  index_t forward_scratch() const;  // bias + hgates + tmp + packed weights
  index_t backward_scratch() const;
};
// `elem_bytes`: 4 (float) or 8 (double), for the packed-weight sizes of packed_gemm.h.
LayerSizes layer_sizes(CellKind cell, const LayerDims& d, bool training, int elem_bytes = 4);

// Named views into the buffers (sizes from LayerSizes with the same `training`).
template <typename S>
struct LayerState {
  S* h_seq = nullptr;
  S* c_seq = nullptr;
  S* gates = nullptr;
  S* cache = nullptr;
  S* h_full = nullptr;
};

template <typename S>
struct ForwardScratch {
  S* bias = nullptr;
  S* hgates = nullptr;
  S* tmp = nullptr;
  S* packed_rec = nullptr;
  S* packed_stage2 = nullptr;
  S* packed_proj = nullptr;
};

template <typename S>
struct BackwardScratch {
  S* dgates = nullptr;
  S* dhgates = nullptr;
  S* dh_a = nullptr;
  S* dh_b = nullptr;
  S* dc = nullptr;
  S* dh_full = nullptr;
  S* dh_proj = nullptr;
  S* tmp = nullptr;
  S* partials = nullptr;
  index_t partial_width = 0;
  S* packed_drec = nullptr;
  S* packed_dstage2 = nullptr;
  S* packed_dproj = nullptr;
};

// Carves views out of one block laid out in LayerSizes order; returns the end.
template <typename S>
S* carve(const LayerSizes& sz, S* p, LayerState<S>* st);
template <typename S>
S* carve(const LayerSizes& sz, S* p, ForwardScratch<S>* fs);
template <typename S>
S* carve(const LayerSizes& sz, S* p, BackwardScratch<S>* bs);

// Arguments of layer_forward:
//   x:        [T,N,C] input (contiguous).
//   h0, c0:   [N,P], [N,H] initial state, or null for zeros (c0: cells with a cell state).
//   lengths:  [N] valid steps per sequence, or null (all T). Checked by the caller.
//   reverse:  process t = T-1 ... 0.
//   y, y_ld:  output rows y[(t*N + n) * y_ld + j], j < P. Must not alias any input.
//   h_n, c_n: [N,P], [N,H] final states (c_n: with a cell state; may be null otherwise).
//   state:    training: kept for layer_backward; inference: scratch.
//   tc:       the thread team running the call (every thread of the team calls this with the
//             same arguments; TeamContext of size 1 for a single thread). Returns after a final
//             barrier-free phase: callers barrier before reading outputs from other threads.
template <typename S>
void layer_forward(const TeamContext& tc, CellKind cell, const LayerDims& d, const LayerWeights<S>& w,
                   const S* x, const S* h0, const S* c0, const index_t* lengths, bool reverse,
                   bool training, S* y, index_t y_ld, S* h_n, S* c_n, const LayerState<S>& state,
                   const ForwardScratch<S>& scratch);

// Arguments of layer_backward (x, w, lengths, reverse, state: exactly as in the training forward;
// backward overwrites state.gates with the gates' gradients, so it runs once per forward):
//   dy, dy_ld:   dL/dy rows like y, or null for zeros.
//   dh_n, dc_n:  [N,P], [N,H] or null for zeros.
//   grads:       accumulated into.
//   dx:          [T,N,C]: dx = dgates W_ih is added (dx_accumulate) or written; null to skip.
//   dh0, dc0:    [N,P], [N,H] outputs, overwritten (dc0 may be null without a cell state).
template <typename S>
void layer_backward(const TeamContext& tc, CellKind cell, const LayerDims& d, const LayerWeights<S>& w,
                    const S* x, const index_t* lengths, bool reverse, const LayerState<S>& state,
                    const S* dy, index_t dy_ld, const S* dh_n, const S* dc_n, const LayerGrads<S>& grads,
                    S* dx, bool dx_accumulate, S* dh0, S* dc0, const BackwardScratch<S>& scratch);

}  // namespace rnnkit
