// The recurrent layer on the CPU: the shape contract, buffer sizes and the forward/BPTT entry points.
//
// One layer, one direction, time-major. The time loop is generic over the cell (cells.h); the
// big matrix products are hoisted out of it:
//
//   forward   gates = x W_ih^T                             one GEMM over all T*N rows
//             per step: gates[t] += h_{t-1} W_hh^T            one GEMM, then the cell's pointwise
//                                                              math with the biases fused in
//   backward  per step: the cell's pointwise backward, then dh_{t-1} += dgates[t] W_hh
//             after the loop: dW_ih, dW_hh, dx one GEMM each, db_ih/db_hh one column sum each
//
// Notation: T steps, N batch, C input features, H hidden units, G = Cell::kGates, GH = G*H.
// All arrays are dense row-major (C order) with exactly the shapes below.
//
// Arguments of layer_forward:
//   x:       [T,N,C]   input sequence, time-major.
//   w:       w_ih [GH,C], w_hh [GH,H], b_ih [GH], b_hh [GH] (PyTorch's shapes and gate order);
//            the biases may be null (bias=False).
//   h0:      [N,H]     initial state, or null for zeros.
//   y:       [T,N,H]   output: y[t] = h_t. Must not alias any input.
//   h_n:     [N,H]     output: the final state h_T.
//   buf:     h_seq   training:  [T+1,N,H], receives h_seq[0] = h0 and h_seq[t+1] = h_t (kept
//                    for backward); inference: [2,N,H] scratch (the two states a step needs).
//            gates   [T,N,GH] receives the input projection and then whatever the cell leaves in
//                    it; kept for backward when the cell caches gates, otherwise scratch.
//            bias    [GH] scratch (b_ih + b_hh, summed once per call).
//
// Arguments of layer_backward (the cache is what layer_forward left in training mode):
//   x, w, h_seq, gates:  as left by / given to the training forward (w must be the same weights).
//   dy:      [T,N,H]   dL/dy, or null for zeros.
//   dh_n:    [N,H]     dL/dh_n, or null for zeros.
//   grads:   dw_ih [GH,C], dw_hh [GH,H], db_ih [GH], db_hh [GH]: ACCUMULATED into (+=), PyTorch's
//            habit; the bias pointers are null exactly when the forward had no biases.
//   dx:      [T,N,C]   output, overwritten; null to skip that GEMM (e.g. the first layer of a
//            model fed raw data).
//   dh0:     [N,H]     output, overwritten.
//   buf:     dgates [T,N,GH], dh_a [N,H], dh_b [N,H] scratch.
// No output may alias an input.
#pragma once

#include "rnnkit/cells.h"
#include "rnnkit/common.h"

namespace rnnkit {

struct LayerDims {
  index_t T = 0;  // steps
  index_t N = 0;  // batch
  index_t C = 0;  // input features
  index_t H = 0;  // hidden units
};

template <typename S>
struct LayerWeights {
  const S* w_ih = nullptr;  // [GH,C]
  const S* w_hh = nullptr;  // [GH,H]
  const S* b_ih = nullptr;  // [GH] or null
  const S* b_hh = nullptr;  // [GH] or null
};

template <typename S>
struct LayerGrads {
  S* dw_ih = nullptr;  // [GH,C], accumulated
  S* dw_hh = nullptr;  // [GH,H], accumulated
  S* db_ih = nullptr;  // [GH] or null, accumulated
  S* db_hh = nullptr;  // [GH] or null, accumulated
};

// Every buffer size (in elements) for one layer call, computed here and nowhere else.
// Throws OutOfMemory if a size overflows.
struct LayerSizes {
  index_t gate_width = 0;  // GH
  index_t x = 0;           // T*N*C
  index_t y = 0;           // T*N*H
  index_t state = 0;       // N*H
  index_t w_ih = 0;        // GH*C
  index_t w_hh = 0;        // GH*H
  index_t bias = 0;        // GH
  index_t h_seq = 0;       // (T+1)*N*H in training, 2*N*H in inference
  index_t gates = 0;       // T*N*GH
  index_t dgates = 0;      // T*N*GH (backward scratch)
};
LayerSizes layer_sizes(CellKind cell, const LayerDims& d, bool training);

// Rejects dims the kernels cannot take (non-positive, or a GEMM dimension beyond 32-bit BLAS)
// with std::invalid_argument naming the dimension.
void check_layer_dims(const LayerDims& d, index_t gates);

// Number of gates G of a cell.
int cell_gates(CellKind cell);
// Whether backward needs the gate buffer that forward leaves.
bool cell_caches_gates(CellKind cell);

// Named views into the buffers a call needs (sizes: LayerSizes).
template <typename S>
struct ForwardBuffers {
  S* h_seq = nullptr;  // LayerSizes::h_seq
  S* gates = nullptr;  // LayerSizes::gates
  S* bias = nullptr;   // LayerSizes::gate_width
};

template <typename S>
struct BackwardBuffers {
  S* dgates = nullptr;  // LayerSizes::dgates
  S* dh_a = nullptr;    // LayerSizes::state
  S* dh_b = nullptr;    // LayerSizes::state
};

template <typename S>
void layer_forward(CellKind cell, const LayerDims& d, const LayerWeights<S>& w, const S* x,
                   const S* h0, S* y, S* h_n, bool training, const ForwardBuffers<S>& buf);

template <typename S>
void layer_backward(CellKind cell, const LayerDims& d, const LayerWeights<S>& w, const S* x,
                    const S* h_seq, const S* gates, const S* dy, const S* dh_n,
                    const LayerGrads<S>& grads, S* dx, S* dh0, const BackwardBuffers<S>& buf);

}  // namespace rnnkit
