// The recurrent cells: each cell's forward and backward math, written once.
//
// A cell is a stateless struct. It knows nothing of GEMMs, loops, batches or memory; the time loop
// (the CPU's in cpu/layer_forward.cpp and cpu/layer_backward.cpp; the CUDA backend's pointwise
// kernels in cuda/cell_kernel.cu) does the matrix products and hands the cell an *accessor* `a`
// for one unit of work:
//
//   * on the CPU, one batch row: every accessor value is an Eigen map of H contiguous elements,
//     and a.mean(v) averages a whole row;
//   * on the GPU, one element j of one batch row: every value is a scalar reference (and mean()
//     a reduction across the threads of the row).
//
// Because a cell is written against ew:: functions, a.mean() and + - * only, the same text
// compiles for both. Gates are numbered in PyTorch's order (LSTM i,f,g,o; GRU r,z,n); `k` below
// is a gate index, `s` a slot of what the cell saves for backward.
//
// Accessor members, forward (values are gate slices or rows of H, unless said otherwise):
//   gates(k)     in/out  x_t W_ih^T, plus h_{t-1} W_hh^T for cells without kSeparateRecurrent;
//                        the cell overwrites it with what backward needs (activated gates).
//   gates_row()          all G*H of gates (LayerNorm cells normalise the whole row).
//   hgates(k)    in      h_{t-1} W_hh^T (kSeparateRecurrent cells only); scratch afterwards.
//   hgates_row()
//   bias(k)      in      b_ih + b_hh (zeros without bias); b_ih(k), b_hh(k) separately.
//   h_prev(), c_prev()   the previous state (c: LSTM cells only).
//   h(), c()     out     the new state (for an LSTM with a projection, h() is the unprojected
//                        o*tanh(c); the loop projects it).
//   saved(s)     out     rows of H the cell saves for its backward (training: kept per (t, n);
//                        inference: scratch); saved_rows(s, count) several slots as one row.
//   stat(s)      out     one scalar per (t, n) saved likewise (LayerNorm's 1/std).
//   ln(p, k)     in      LayerNorm parameter p (kLnIhWeight ...) for gate k (p's row: ln_row(p)).
//   options()    in      the layer-direction's CellOptions (kOptions cells only).
//   peep(k)      in      peephole weights of gate k (0: i, 1: f, 2: o), if options().peephole.
//   rec()        in      the recurrent vector u [H] (kDiagonalRecurrent cells).
// Backward (the forward's values above are inputs again, as left by forward):
//   dh(), dc()   in      dL/dh_t (unprojected for LSTMP) and, for LSTM, dL/dc_t from step t+1.
//   dgates(k)    out     dL/d(gates(k) as given to forward); for cells without
//                        kSeparateRecurrent also dL/d(hgates(k)).
//   dhgates(k)   out     dL/d(hgates(k)) (kSeparateRecurrent cells only).
//   dh_prev()    out     the part of dL/dh_{t-1} that does not pass through W_hh
//                        (kDirectStateGrad cells only; otherwise the loop supplies zeros).
//   dc_prev()    out     dL/dc_{t-1} (LSTM cells). It aliases dc(): read dc() before writing.
//   dln(p, k)    in/out  LayerNorm parameter gradients, ACCUMULATED.
//   db_ih_row(), db_hh_row()  in/out  bias gradients [G*H], ACCUMULATED (kCellBiasGrads cells).
//   dpeep(k)     in/out  peephole weight gradients, ACCUMULATED (kPeepholes cells; the loop
//                        discards them without peepholes).
//   drec()       in/out  dL/du, ACCUMULATED (kDiagonalRecurrent cells).
//   tmp(s)               per-row scratch of H.
//
// Traits read by the loop:
//   kGates             G: weights w_ih [G*H,C], w_hh [G*H,H], biases [G*H].
//   kHasCellState      LSTM cells: the state is (h, c).
//   kSeparateRecurrent h_{t-1} W_hh^T goes to hgates instead of being added into gates.
//   kTwoStage          GRU without reset_after: the candidate gate's recurrent product needs r, so
//                      forward runs stage1 (gates 0..kStage1Gates-1 with h_{t-1}), then the GEMM
//                      gates(n) += saved(0) W_hn^T with saved(0) = r*h_{t-1}, then stage2.
//   kDirectStateGrad   the cell writes dh_prev().
//   kSavedSlots, kStats, kTmpSlots   saved rows of H, saved scalars, scratch rows of H.
//   kLnParams          LayerNorm parameter vectors (0 for plain cells), see LnParam.
//   kCellBiasGrads     the cell accumulates the bias gradients itself (the LayerNorm cells, whose
//                      biases sit after a normalisation); otherwise the loop sums dgates/dhgates.
//   kOptions           the cell reads options() (ONNX's general cells).
//   kPeepholes         the cell may have peephole weights [3,H] (parameter w_peephole) and
//                      accumulates their gradients per batch row in the loop's partial sums.
//   kDiagonalRecurrent the recurrent weight is a vector u [H] (w_hh), applied by the cell itself:
//                      the loop runs no recurrent GEMM; the cell writes dh_prev() and accumulates
//                      du per batch row in the loop's partial sums (drec()).
//   kNoRecurrentWeight no recurrent weight at all (minGRU, minLSTM: gates read x_t only): no
//                      weight_hh, no bias_hh, no recurrent GEMM; the cell writes dh_prev().
#pragma once

#include <type_traits>

#include "rnnkit/math.h"

namespace rnnkit {

// The cells, named as users name them (rnnkit.RNNNetwork(cell=...), rnnkit train --cell); the
// enumerators spell the same names in C++ style. kCellNames below is the one table of the names.
enum class CellKind : int {
  kRnnTanh = 0,
  kRnnRelu = 1,
  kLstm = 2,
  kGru = 3,             // reset_after=True: PyTorch/cuDNN, ONNX linear_before_reset=1
  kGruResetBefore = 4,  // reset_after=False: the original GRU, ONNX linear_before_reset=0
  kLnLstm = 5,
  kLnGru = 6,
  // ONNX's general cells (below): what a layer with any of ONNX's options beyond PyTorch's runs.
  // Internal kinds, chosen by StackConfig::kernel_cell(); users name the cell as above.
  kRnnGeneral = 7,
  kLstmGeneral = 8,
  kGruGeneral = 9,
  kGruResetBeforeGeneral = 10,
  // IndRNN (Li et al. 2018): a per-unit recurrent weight u [H] instead of W_hh.
  kIndRnnRelu = 11,
  kIndRnnTanh = 12,
  kMinGru = 13,
  kMinLstm = 14,
};

// LayerNorm parameters of the LayerNorm cells, in the order of their parameter names.
enum LnParam : int {
  kLnIhWeight = 0,  // [G*H] gain of LN(x W_ih^T)
  kLnIhBias = 1,    // [G*H]
  kLnHhWeight = 2,  // [G*H] gain of LN(h W_hh^T)
  kLnHhBias = 3,    // [G*H]
  kLnCWeight = 4,   // [H]   gain of LN(c) (LayerNormLSTM)
  kLnCBias = 5,     // [H]
};
constexpr int kMaxLnParams = 6;

// Elements of LayerNorm parameter p: the gate-wide ones normalise a whole row of G*H
// pre-activations, LN(c) the H cell values.
constexpr index_t ln_param_width(int p, index_t gate_width, index_t H) {
  return p < kLnCWeight ? gate_width : H;
}

struct CellDefaults {
  static constexpr bool kHasCellState = false;
  static constexpr bool kSeparateRecurrent = false;
  static constexpr bool kTwoStage = false;
  static constexpr int kStage1Gates = 0;
  static constexpr bool kDirectStateGrad = false;
  static constexpr int kSavedSlots = 0;
  static constexpr int kStats = 0;
  static constexpr int kTmpSlots = 0;
  static constexpr int kLnParams = 0;
  static constexpr bool kCellBiasGrads = false;
  static constexpr bool kOptions = false;
  static constexpr bool kPeepholes = false;
  static constexpr bool kDiagonalRecurrent = false;
  static constexpr bool kNoRecurrentWeight = false;
};

// Whether the loop runs a per-step recurrent GEMM (h_{t-1} W_hh^T) for a cell.
template <typename Cell>
constexpr bool has_recurrent_gemm() {
  return !Cell::kDiagonalRecurrent && !Cell::kNoRecurrentWeight;
}

// ---- Elman ------------------------------------------------------------------------------------
// h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
struct ElmanTanhCell : CellDefaults {
  static constexpr int kGates = 1;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    a.h() = ew::tanh(a.gates(0) + a.bias(0));
  }
  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    a.dgates(0) = a.dh() * ew::tanh_grad_from_output(a.h());
  }
};

// h_t = relu(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh); relu'(0) = 0 as in PyTorch.
struct ElmanReluCell : CellDefaults {
  static constexpr int kGates = 1;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    a.h() = ew::relu(a.gates(0) + a.bias(0));
  }
  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    a.dgates(0) = a.dh() * ew::relu_grad_from_output(a.h());
  }
};

// ---- LSTM -------------------------------------------------------------------------------------
// Shared by LSTMCell and LayerNormLSTMCell. On entry gates(k) holds gate k's full pre-activation;
// on exit the activated gate (i, f, o = sigmoid, g = tanh), and c_t = f * c_{t-1} + i * g.
template <typename A>
RNNKIT_HOSTDEVICE void lstm_activate_and_update_c(A& a) {
  a.gates(0) = ew::sigmoid(a.gates(0));
  a.gates(1) = ew::sigmoid(a.gates(1));
  a.gates(2) = ew::tanh(a.gates(2));
  a.gates(3) = ew::sigmoid(a.gates(3));
  a.c() = a.gates(1) * a.c_prev() + a.gates(0) * a.gates(2);
}

// With dc_prev() holding dL/dc_t on entry: the i, f, g pre-activation gradients, and dc_prev()
// becomes dL/dc_{t-1}.
template <typename A>
RNNKIT_HOSTDEVICE void lstm_backward_through_c(A& a) {
  a.dgates(0) = a.dc_prev() * a.gates(2) * ew::sigmoid_grad_from_output(a.gates(0));
  a.dgates(1) = a.dc_prev() * a.c_prev() * ew::sigmoid_grad_from_output(a.gates(1));
  a.dgates(2) = a.dc_prev() * a.gates(0) * ew::tanh_grad_from_output(a.gates(2));
  a.dc_prev() = a.dc_prev() * a.gates(1);
}

// i, f, o = sigmoid(.), g = tanh(.) of the gate pre-activations (x W_ih^T + h W_hh^T + b_ih + b_hh)
// c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)   (then h_t W_hr^T with a projection)
// Saves the activated gates in place; tanh(c_t) is recomputed in backward (less memory).
struct LSTMCell : CellDefaults {
  static constexpr int kGates = 4;
  static constexpr bool kHasCellState = true;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    for (int k = 0; k < 4; ++k) a.gates(k) = a.gates(k) + a.bias(k);
    lstm_activate_and_update_c(a);
    a.h() = a.gates(3) * ew::tanh(a.c());
  }

  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    // dgates(3) holds tanh(c_t) until its own gradient is written.
    a.dgates(3) = ew::tanh(a.c());
    a.dc_prev() = a.dc() + a.dh() * a.gates(3) * ew::tanh_grad_from_output(a.dgates(3));  // dL/dc_t
    a.dgates(3) = a.dh() * a.dgates(3) * ew::sigmoid_grad_from_output(a.gates(3));
    lstm_backward_through_c(a);
  }
};

// ---- GRU, reset_after=True (PyTorch, cuDNN) ---------------------------------------------------
// Shared by GRUCell and LayerNormGRUCell: with gates(0..1) holding r, z, gates(2) the candidate n
// and hn = (recurrent part of n's pre-activation, before r), the gradients of the input-side
// (dgates) and recurrent-side (dhgates) pre-activations, and the direct part of dL/dh_{t-1}.
template <typename A, typename HN>
RNNKIT_HOSTDEVICE void gru_reset_after_backward(A& a, const HN& hn) {
  using S = typename A::Scalar;
  a.dgates(2) = a.dh() * (S(1) - a.gates(1)) * ew::tanh_grad_from_output(a.gates(2));
  a.dhgates(2) = a.dgates(2) * a.gates(0);
  a.dgates(0) = a.dgates(2) * hn * ew::sigmoid_grad_from_output(a.gates(0));
  a.dhgates(0) = a.dgates(0);
  a.dgates(1) = a.dh() * (a.h_prev() - a.gates(2)) * ew::sigmoid_grad_from_output(a.gates(1));
  a.dhgates(1) = a.dgates(1);
  a.dh_prev() = a.dh() * a.gates(1);
}

// r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
// z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
// n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
// h_t = (1 - z) * n + z * h_{t-1}
// Saves r, z, n in place of the gates and (h W_hn^T + b_hn) in saved(0).
struct GRUCell : CellDefaults {
  static constexpr int kGates = 3;
  static constexpr bool kSeparateRecurrent = true;
  static constexpr bool kDirectStateGrad = true;
  static constexpr int kSavedSlots = 1;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    a.gates(0) = ew::sigmoid(a.gates(0) + a.hgates(0) + a.bias(0));
    a.gates(1) = ew::sigmoid(a.gates(1) + a.hgates(1) + a.bias(1));
    a.saved(0) = a.hgates(2) + a.b_hh(2);
    a.gates(2) = ew::tanh(a.gates(2) + a.b_ih(2) + a.gates(0) * a.saved(0));
    a.h() = a.gates(2) + a.gates(1) * (a.h_prev() - a.gates(2));
  }

  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    gru_reset_after_backward(a, a.saved(0));
  }
};

// ---- GRU, reset_after=False (the original formulation; ONNX linear_before_reset=0) ------------
// r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr),  z likewise
// n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn)
// h_t = (1 - z) * n + z * h_{t-1}
// Two stages: r and z first; the loop then adds (r*h) W_hn^T (r*h is saved(0), kept for dW_hn).
struct GRUResetBeforeCell : CellDefaults {
  static constexpr int kGates = 3;
  static constexpr bool kTwoStage = true;
  static constexpr int kStage1Gates = 2;
  static constexpr bool kDirectStateGrad = true;
  static constexpr int kSavedSlots = 1;
  static constexpr int kTmpSlots = 1;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward_stage1(A& a) {
    a.gates(0) = ew::sigmoid(a.gates(0) + a.bias(0));
    a.gates(1) = ew::sigmoid(a.gates(1) + a.bias(1));
    a.saved(0) = a.gates(0) * a.h_prev();
  }
  template <typename A>
  RNNKIT_HOSTDEVICE static void forward_stage2(A& a) {
    a.gates(2) = ew::tanh(a.gates(2) + a.bias(2));
    a.h() = a.gates(2) + a.gates(1) * (a.h_prev() - a.gates(2));
  }

  // Stage 2 backward: the candidate gate; the loop then computes tmp(0) = dgates(2) W_hn,
  // the gradient reaching r*h.
  template <typename A>
  RNNKIT_HOSTDEVICE static void backward_stage2(A& a) {
    using S = typename A::Scalar;
    a.dgates(2) = a.dh() * (S(1) - a.gates(1)) * ew::tanh_grad_from_output(a.gates(2));
  }
  template <typename A>
  RNNKIT_HOSTDEVICE static void backward_stage1(A& a) {
    a.dgates(0) = a.tmp(0) * a.h_prev() * ew::sigmoid_grad_from_output(a.gates(0));
    a.dgates(1) = a.dh() * (a.h_prev() - a.gates(2)) * ew::sigmoid_grad_from_output(a.gates(1));
    a.dh_prev() = a.dh() * a.gates(1) + a.tmp(0) * a.gates(0);
  }
};

// ---- LayerNorm ---------------------------------------------------------------------------------
// LN(v; gain, bias) = gain * (v - mean(v)) / sqrt(var(v) + kLayerNormEps) + bias over a whole row,
// var being the biased variance (as torch.nn.LayerNorm).
constexpr double kLayerNormEps = 1e-5;

// Forward: xhat_out = (v - mean) * rstd, returns rstd. `v` and `xhat_out` may be the same row.
template <typename A, typename V, typename O>
RNNKIT_HOSTDEVICE typename A::Scalar layer_norm_forward(A& a, const V& v, O&& xhat_out) {
  using S = typename A::Scalar;
  const S mu = a.mean(v);
  const S var = a.mean((v - mu) * (v - mu));
  const S rstd = S(1) / ew::sqrt(var + S(kLayerNormEps));
  xhat_out = (v - mu) * rstd;
  return rstd;
}

// Backward of y = gain * xhat + bias given dy: accumulates dgain += dy*xhat, dbias += dy and
// writes dv = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gain.
// `dv` may alias `dy` (everything that reads dy is evaluated before dv is written).
template <typename A, typename DY, typename XH, typename G, typename DG, typename DB, typename DV>
RNNKIT_HOSTDEVICE void layer_norm_backward(A& a, const DY& dy, const XH& xhat, typename A::Scalar rstd,
                                           const G& gain, DG&& dgain, DB&& dbias, DV&& dv) {
  using S = typename A::Scalar;
  dgain += dy * xhat;
  dbias += dy;
  const S mean_g = a.mean(dy * gain);
  const S mean_gx = a.mean(dy * gain * xhat);
  dv = rstd * (dy * gain - mean_g - xhat * mean_gx);
}

// LayerNormLSTM (Ba, Kiros & Hinton 2016, as in haste):
//   [i,f,g,o] pre-activations = LN(x W_ih^T; ln_ih) + LN(h_{t-1} W_hh^T; ln_hh) + b_ih + b_hh
//   c_t = f * c_{t-1} + i * g
//   h_t = o * tanh(LN(c_t; ln_c))
// saved: xhat_ih (slots 0-3), xhat_hh (4-7), xhat_c (8); stats: rstd_ih, rstd_hh, rstd_c.
struct LayerNormLSTMCell : CellDefaults {
  static constexpr int kGates = 4;
  static constexpr bool kHasCellState = true;
  static constexpr bool kSeparateRecurrent = true;
  static constexpr int kSavedSlots = 9;
  static constexpr int kStats = 3;
  static constexpr int kTmpSlots = 1;
  static constexpr int kLnParams = 6;
  static constexpr bool kCellBiasGrads = true;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    a.stat(0) = layer_norm_forward(a, a.gates_row(), a.saved_rows(0, 4));
    a.stat(1) = layer_norm_forward(a, a.hgates_row(), a.saved_rows(4, 4));
    for (int k = 0; k < 4; ++k) {
      a.gates(k) = a.ln(kLnIhWeight, k) * a.saved(k) + a.ln(kLnIhBias, k) +
                   a.ln(kLnHhWeight, k) * a.saved(4 + k) + a.ln(kLnHhBias, k) + a.bias(k);
    }
    lstm_activate_and_update_c(a);
    a.stat(2) = layer_norm_forward(a, a.c(), a.saved(8));
    a.h() = a.gates(3) * ew::tanh(a.ln(kLnCWeight, 0) * a.saved(8) + a.ln(kLnCBias, 0));
  }

  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    // tmp(0) = tanh(LN(c_t)); then dL/d LN(c_t) in tmp(0).
    a.tmp(0) = ew::tanh(a.ln(kLnCWeight, 0) * a.saved(8) + a.ln(kLnCBias, 0));
    a.dgates(3) = a.dh() * a.tmp(0) * ew::sigmoid_grad_from_output(a.gates(3));
    a.tmp(0) = a.dh() * a.gates(3) * ew::tanh_grad_from_output(a.tmp(0));
    layer_norm_backward(a, a.tmp(0), a.saved(8), a.stat(2), a.ln(kLnCWeight, 0), a.dln(kLnCWeight, 0),
                        a.dln(kLnCBias, 0), a.tmp(0));
    a.dc_prev() = a.dc() + a.tmp(0);  // dL/dc_t
    lstm_backward_through_c(a);
    // dgates now holds dL/d(pre-activation): the gradient of both biases and both LN outputs.
    a.db_ih_row() += a.dgates_row();
    a.db_hh_row() += a.dgates_row();
    layer_norm_backward(a, a.dgates_row(), a.saved_rows(4, 4), a.stat(1), a.ln_row(kLnHhWeight),
                        a.dln_row(kLnHhWeight), a.dln_row(kLnHhBias), a.dhgates_row());
    layer_norm_backward(a, a.dgates_row(), a.saved_rows(0, 4), a.stat(0), a.ln_row(kLnIhWeight),
                        a.dln_row(kLnIhWeight), a.dln_row(kLnIhBias), a.dgates_row());
  }
};

// LayerNormGRU (reset_after=True flavour):
//   ax = LN(x W_ih^T; ln_ih) + b_ih,   ah = LN(h_{t-1} W_hh^T; ln_hh) + b_hh
//   r = sigmoid(ax_r + ah_r),  z = sigmoid(ax_z + ah_z),  n = tanh(ax_n + r * ah_n)
//   h_t = (1 - z) * n + z * h_{t-1}
// saved: xhat_ih (slots 0-2), xhat_hh (3-5), ah_n (6); stats: rstd_ih, rstd_hh.
struct LayerNormGRUCell : CellDefaults {
  static constexpr int kGates = 3;
  static constexpr bool kSeparateRecurrent = true;
  static constexpr bool kDirectStateGrad = true;
  static constexpr int kSavedSlots = 7;
  static constexpr int kStats = 2;
  static constexpr int kLnParams = 4;
  static constexpr bool kCellBiasGrads = true;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    a.stat(0) = layer_norm_forward(a, a.gates_row(), a.saved_rows(0, 3));
    a.stat(1) = layer_norm_forward(a, a.hgates_row(), a.saved_rows(3, 3));
    for (int k = 0; k < 2; ++k) {
      a.gates(k) = ew::sigmoid(a.ln(kLnIhWeight, k) * a.saved(k) + a.ln(kLnIhBias, k) + a.b_ih(k) +
                               a.ln(kLnHhWeight, k) * a.saved(3 + k) + a.ln(kLnHhBias, k) + a.b_hh(k));
    }
    a.saved(6) = a.ln(kLnHhWeight, 2) * a.saved(5) + a.ln(kLnHhBias, 2) + a.b_hh(2);
    a.gates(2) = ew::tanh(a.ln(kLnIhWeight, 2) * a.saved(2) + a.ln(kLnIhBias, 2) + a.b_ih(2) +
                          a.gates(0) * a.saved(6));
    a.h() = a.gates(2) + a.gates(1) * (a.h_prev() - a.gates(2));
  }

  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    // dL/d ax into dgates, dL/d ah into dhgates (as GRUCell), then through the two LayerNorms.
    gru_reset_after_backward(a, a.saved(6));
    a.db_ih_row() += a.dgates_row();
    a.db_hh_row() += a.dhgates_row();
    layer_norm_backward(a, a.dhgates_row(), a.saved_rows(3, 3), a.stat(1), a.ln_row(kLnHhWeight),
                        a.dln_row(kLnHhWeight), a.dln_row(kLnHhBias), a.dhgates_row());
    layer_norm_backward(a, a.dgates_row(), a.saved_rows(0, 3), a.stat(0), a.ln_row(kLnIhWeight),
                        a.dln_row(kLnIhWeight), a.dln_row(kLnIhBias), a.dgates_row());
  }
};

// ---- ONNX's options: named activations, cell clip, peepholes, coupled gates --------------------
// ONNX's RNN/LSTM/GRU operators define these beyond PyTorch's cells. A layer that uses any of them
// runs the general cells below; the cells above stay exactly as they are for the defaults.

// ONNX's activation functions (x: the pre-activation, after the clip):
//   Sigmoid 1/(1+e^-x)   Tanh   Relu max(0,x)   Affine a*x+b   LeakyRelu x<0 ? a*x : x
//   ThresholdedRelu x>a ? x : 0   ScaledTanh a*tanh(b*x)   HardSigmoid min(max(a*x+b,0),1)
//   Elu x<0 ? a*(e^x-1) : x   Softsign x/(1+|x|)   Softplus log(1+e^x)
enum class ActKind : std::int64_t {
  kSigmoid = 0, kTanh, kRelu, kAffine, kLeakyRelu, kThresholdedRelu, kScaledTanh, kHardSigmoid, kElu,
  kSoftsign, kSoftplus,
};

// An activation with its alpha and beta (unused ones 0). int64/double fields only: a kernel body
// holding one has no padding (cuda/graph.h).
struct Activation {
  ActKind kind = ActKind::kSigmoid;
  double alpha = 0.0;
  double beta = 0.0;
};

// The one table of the activations: ONNX's name, how many of alpha, beta it takes, and ONNX
// Runtime's values when a model gives none.
struct ActivationName {
  ActKind kind;
  const char* name;
  int params;  // 0: neither, 1: alpha, 2: alpha and beta
  double default_alpha;
  double default_beta;
};
inline constexpr ActivationName kActivationNames[] = {
    {ActKind::kSigmoid, "Sigmoid", 0, 0.0, 0.0},
    {ActKind::kTanh, "Tanh", 0, 0.0, 0.0},
    {ActKind::kRelu, "Relu", 0, 0.0, 0.0},
    {ActKind::kAffine, "Affine", 2, 1.0, 0.0},
    {ActKind::kLeakyRelu, "LeakyRelu", 1, 0.01, 0.0},
    {ActKind::kThresholdedRelu, "ThresholdedRelu", 1, 1.0, 0.0},
    {ActKind::kScaledTanh, "ScaledTanh", 2, 1.0, 1.0},
    {ActKind::kHardSigmoid, "HardSigmoid", 2, 0.2, 0.5},
    {ActKind::kElu, "Elu", 1, 1.0, 0.0},
    {ActKind::kSoftsign, "Softsign", 0, 0.0, 0.0},
    {ActKind::kSoftplus, "Softplus", 0, 0.0, 0.0},
};

constexpr int kMaxActivations = 3;

// One layer-direction's options (StackConfig holds one per direction).
struct CellOptions {
  Activation act[kMaxActivations];  // ONNX's order: f, g, h (LSTM), f, g (GRU), f (RNN)
  double clip = 0.0;                // > 0: every gate pre-activation clamped to [-clip, clip]
  std::int64_t peephole = 0;        // LSTM: peephole weights on c (int64: no padding, as above)
  std::int64_t coupled = 0;         // LSTM: ONNX's input_forget, f = 1 - i
};

// y = f(x). y may be x (every element is read before it is written).
template <typename A, typename Y, typename X>
RNNKIT_HOSTDEVICE void activate_any(const Activation& f, Y&& y, const X& x) {
  using S = typename A::Scalar;
  const S al = S(f.alpha), be = S(f.beta);
  switch (f.kind) {
    case ActKind::kSigmoid: y = ew::sigmoid(x); return;
    case ActKind::kTanh: y = ew::tanh(x); return;
    case ActKind::kRelu: y = ew::relu(x); return;
    case ActKind::kAffine: y = al * x + be; return;
    case ActKind::kLeakyRelu: y = ew::where(x < S(0), al * x, x); return;
    case ActKind::kThresholdedRelu: y = ew::where(x > al, x, S(0)); return;
    case ActKind::kScaledTanh: y = al * ew::tanh(be * x); return;
    case ActKind::kHardSigmoid: y = ew::clamp(al * x + be, S(0), S(1)); return;
    case ActKind::kElu: y = ew::where(x < S(0), al * (ew::exp(x) - S(1)), x); return;
    case ActKind::kSoftsign: y = x / (S(1) + ew::abs(x)); return;
    case ActKind::kSoftplus: y = ew::softplus(x); return;
  }
}

// dz = dy * f'(x), given x and y = f(x). dz may alias dy or y.
template <typename A, typename DZ, typename DY, typename X, typename Y>
RNNKIT_HOSTDEVICE void activation_grad_any(const Activation& f, DZ&& dz, const DY& dy, const X& x, const Y& y) {
  using S = typename A::Scalar;
  const S al = S(f.alpha), be = S(f.beta);
  switch (f.kind) {
    case ActKind::kSigmoid: dz = dy * ew::sigmoid_grad_from_output(y); return;
    case ActKind::kTanh: dz = dy * ew::tanh_grad_from_output(y); return;
    case ActKind::kRelu: dz = dy * ew::relu_grad_from_output(y); return;
    case ActKind::kAffine: dz = dy * al; return;
    case ActKind::kLeakyRelu: dz = ew::where(x < S(0), al * dy, dy); return;
    case ActKind::kThresholdedRelu: dz = ew::where(x > al, dy, S(0)); return;
    case ActKind::kScaledTanh: dz = dy * (al * be) * ew::tanh_grad_from_output(ew::tanh(be * x)); return;
    case ActKind::kHardSigmoid: dz = ew::where((y > S(0)) && (y < S(1)), al * dy, S(0)); return;
    case ActKind::kElu: dz = ew::where(x < S(0), dy * (y + al), dy); return;
    case ActKind::kSoftsign: dz = dy / ew::square(S(1) + ew::abs(x)); return;
    case ActKind::kSoftplus: dz = dy * ew::sigmoid(x); return;
  }
}

// One scalar's f(x) and dy * f'(x): called functions in the CUDA kernels (one copy of the switch
// per kernel, not one per gate, keeps the general LSTM's double kernel from spilling); inline on
// the host, where the emulation runs them.
#if defined(__CUDACC__)
#define RNNKIT_HOSTDEVICE_CALL __host__ __device__ __noinline__
#else
#define RNNKIT_HOSTDEVICE_CALL inline
#endif
template <typename S>
struct ScalarOf {
  using Scalar = S;
};
template <typename S>
RNNKIT_HOSTDEVICE_CALL S activation_scalar(Activation f, S x) {
  S y = S(0);  // the switch sets it for every ActKind (set_cell_options admits no other)
  activate_any<ScalarOf<S>>(f, y, x);
  return y;
}
template <typename S>
RNNKIT_HOSTDEVICE_CALL S activation_grad_scalar(Activation f, S dy, S x, S y) {
  S dz = S(0);
  activation_grad_any<ScalarOf<S>>(f, dz, dy, x, y);
  return dz;
}

// activate_any / activation_grad_any, through the scalar functions for scalars (the GPU's values).
template <typename A, typename Y, typename X>
RNNKIT_HOSTDEVICE void activate(const Activation& f, Y&& y, const X& x) {
  using S = typename A::Scalar;
  if constexpr (std::is_arithmetic<X>::value) {
    y = activation_scalar<S>(f, S(x));
  } else {
    activate_any<A>(f, y, x);
  }
}
template <typename A, typename DZ, typename DY, typename X, typename Y>
RNNKIT_HOSTDEVICE void activation_grad(const Activation& f, DZ&& dz, const DY& dy, const X& x, const Y& y) {
  using S = typename A::Scalar;
  if constexpr (std::is_arithmetic<X>::value) {
    dz = activation_grad_scalar<S>(f, S(dy), S(x), S(y));
  } else {
    activation_grad_any<A>(f, dz, dy, x, y);
  }
}

// y = f(clip(z)) with the options' clip (none when clip is 0).
template <typename A, typename Y, typename Z>
RNNKIT_HOSTDEVICE void activate_clipped(const CellOptions& o, const Activation& f, Y&& y, const Z& z) {
  using S = typename A::Scalar;
  if (o.clip > 0) {
    activate<A>(f, y, ew::clamp(z, S(-o.clip), S(o.clip)));
  } else {
    activate<A>(f, y, z);
  }
}

// dz = dy * d f(clip(z)) / dz: 0 where the clip cut z off (|z| > clip), as a clamp's gradient.
template <typename A, typename DZ, typename DY, typename Z, typename Y>
RNNKIT_HOSTDEVICE void activation_grad_clipped(const CellOptions& o, const Activation& f, DZ&& dz, const DY& dy,
                                               const Z& z, const Y& y) {
  using S = typename A::Scalar;
  if (o.clip > 0) {
    const S c = S(o.clip);
    activation_grad<A>(f, dz, dy, ew::clamp(z, -c, c), y);
    dz = ew::where(ew::abs(z) <= c, dz, S(0));
  } else {
    activation_grad<A>(f, dz, dy, z, y);
  }
}

// The general cells save every gate's pre-activation z (biases and peepholes in, before the clip),
// so that each activation's derivative is exact whatever its shape (one from the output alone
// would not do for Affine, ThresholdedRelu or a clipped gate).

// ONNX RNN: h_t = f(clip(x W_ih^T + h_{t-1} W_hh^T + b_ih + b_hh)). saved(0) = z.
struct GeneralElmanCell : CellDefaults {
  static constexpr int kGates = 1;
  static constexpr int kSavedSlots = 1;
  static constexpr bool kOptions = true;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    const CellOptions& o = a.options();
    a.saved(0) = a.gates(0) + a.bias(0);
    activate_clipped<A>(o, o.act[0], a.h(), a.saved(0));
  }
  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    const CellOptions& o = a.options();
    activation_grad_clipped<A>(o, o.act[0], a.dgates(0), a.dh(), a.saved(0), a.h());
  }
};

// ONNX LSTM in PyTorch's gate order (i, f, g, o), activations (f, g, h) as ONNX names them:
//   i = f(clip(z_i)), z_i = x W_ii^T + h W_hi^T + b_i [+ p_i * c_{t-1}]
//   f = f(clip(z_f)), z_f likewise with [+ p_f * c_{t-1}]; coupled (input_forget): f = 1 - i
//   g = g(clip(z_g))
//   c_t = f * c_{t-1} + i * g
//   o = f(clip(z_o)), z_o likewise with [+ p_o * c_t]
//   h_t = o * h(c_t)
// gates(k) hold the activated gates, saved(0..3) z_i, z_f, z_g, z_o.
struct GeneralLSTMCell : CellDefaults {
  static constexpr int kGates = 4;
  static constexpr bool kHasCellState = true;
  static constexpr int kSavedSlots = 4;
  static constexpr int kTmpSlots = 1;
  static constexpr bool kOptions = true;
  static constexpr bool kPeepholes = true;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    using S = typename A::Scalar;
    const CellOptions& o = a.options();
    const Activation& f = o.act[0];
    if (o.peephole) {
      a.saved(0) = a.gates(0) + a.bias(0) + a.peep(0) * a.c_prev();
      a.saved(1) = a.gates(1) + a.bias(1) + a.peep(1) * a.c_prev();
    } else {
      a.saved(0) = a.gates(0) + a.bias(0);
      a.saved(1) = a.gates(1) + a.bias(1);
    }
    a.saved(2) = a.gates(2) + a.bias(2);
    activate_clipped<A>(o, f, a.gates(0), a.saved(0));
    if (o.coupled) {
      a.gates(1) = S(1) - a.gates(0);
    } else {
      activate_clipped<A>(o, f, a.gates(1), a.saved(1));
    }
    activate_clipped<A>(o, o.act[1], a.gates(2), a.saved(2));
    a.c() = a.gates(1) * a.c_prev() + a.gates(0) * a.gates(2);
    if (o.peephole) {
      a.saved(3) = a.gates(3) + a.bias(3) + a.peep(2) * a.c();
    } else {
      a.saved(3) = a.gates(3) + a.bias(3);
    }
    activate_clipped<A>(o, f, a.gates(3), a.saved(3));
    activate<A>(o.act[2], a.h(), a.c());
    a.h() = a.gates(3) * a.h();
  }

  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    using S = typename A::Scalar;
    const CellOptions& o = a.options();
    const Activation& f = o.act[0];
    // tmp(0) = h(c_t), then dL/dc_t through h_t.
    activate<A>(o.act[2], a.tmp(0), a.c());
    activation_grad_clipped<A>(o, f, a.dgates(3), a.dh() * a.tmp(0), a.saved(3), a.gates(3));
    activation_grad<A>(o.act[2], a.tmp(0), a.dh() * a.gates(3), a.c(), a.tmp(0));
    // dc_prev() (aliasing dc()) becomes dL/dc_t: from step t+1, through h_t and through o's peephole.
    if (o.peephole) {
      a.dc_prev() = a.dc() + a.tmp(0) + a.dgates(3) * a.peep(2);
    } else {
      a.dc_prev() = a.dc() + a.tmp(0);
    }
    activation_grad_clipped<A>(o, o.act[1], a.dgates(2), a.dc_prev() * a.gates(0), a.saved(2), a.gates(2));
    if (o.coupled) {
      // f = 1 - i: i's gradient gathers both of c_t's terms; z_f reaches nothing.
      activation_grad_clipped<A>(o, f, a.dgates(0), a.dc_prev() * (a.gates(2) - a.c_prev()), a.saved(0),
                                 a.gates(0));
      a.dgates(1) = S(0);
    } else {
      activation_grad_clipped<A>(o, f, a.dgates(0), a.dc_prev() * a.gates(2), a.saved(0), a.gates(0));
      activation_grad_clipped<A>(o, f, a.dgates(1), a.dc_prev() * a.c_prev(), a.saved(1), a.gates(1));
    }
    if (o.peephole) {
      a.dpeep(0) += a.dgates(0) * a.c_prev();
      a.dpeep(1) += a.dgates(1) * a.c_prev();
      a.dpeep(2) += a.dgates(3) * a.c();
      a.dc_prev() = a.dc_prev() * a.gates(1) + a.dgates(0) * a.peep(0) + a.dgates(1) * a.peep(1);
    } else {
      a.dc_prev() = a.dc_prev() * a.gates(1);
    }
  }
};

// ONNX GRU, linear_before_reset=1 (PyTorch's GRU), gate order (r, z, n), activations (f, g):
//   r = f(clip(z_r)), z = f(clip(z_z)), n = g(clip(z_n)), z_n = x W_in^T + b_in + r * hn,
//   hn = h W_hn^T + b_hn;  h_t = (1 - z) * n + z * h_{t-1}
// saved(0..2) z_r, z_z, z_n; saved(3) hn.
struct GeneralGRUCell : CellDefaults {
  static constexpr int kGates = 3;
  static constexpr bool kSeparateRecurrent = true;
  static constexpr bool kDirectStateGrad = true;
  static constexpr int kSavedSlots = 4;
  static constexpr bool kOptions = true;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    const CellOptions& o = a.options();
    a.saved(0) = a.gates(0) + a.hgates(0) + a.bias(0);
    a.saved(1) = a.gates(1) + a.hgates(1) + a.bias(1);
    a.saved(3) = a.hgates(2) + a.b_hh(2);
    activate_clipped<A>(o, o.act[0], a.gates(0), a.saved(0));
    activate_clipped<A>(o, o.act[0], a.gates(1), a.saved(1));
    a.saved(2) = a.gates(2) + a.b_ih(2) + a.gates(0) * a.saved(3);
    activate_clipped<A>(o, o.act[1], a.gates(2), a.saved(2));
    a.h() = a.gates(2) + a.gates(1) * (a.h_prev() - a.gates(2));
  }

  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    using S = typename A::Scalar;
    const CellOptions& o = a.options();
    activation_grad_clipped<A>(o, o.act[1], a.dgates(2), a.dh() * (S(1) - a.gates(1)), a.saved(2), a.gates(2));
    a.dhgates(2) = a.dgates(2) * a.gates(0);
    activation_grad_clipped<A>(o, o.act[0], a.dgates(0), a.dgates(2) * a.saved(3), a.saved(0), a.gates(0));
    a.dhgates(0) = a.dgates(0);
    activation_grad_clipped<A>(o, o.act[0], a.dgates(1), a.dh() * (a.h_prev() - a.gates(2)), a.saved(1),
                               a.gates(1));
    a.dhgates(1) = a.dgates(1);
    a.dh_prev() = a.dh() * a.gates(1);
  }
};

// ONNX GRU, linear_before_reset=0 (two stages, as GRUResetBeforeCell):
//   r = f(clip(z_r)), z = f(clip(z_z)), n = g(clip(x W_in^T + b_in + (r * h) W_hn^T + b_hn))
// saved(0) r * h_{t-1} (the loop's stage-2 GEMM reads it there), saved(1..3) z_r, z_z, z_n.
struct GeneralGRUResetBeforeCell : CellDefaults {
  static constexpr int kGates = 3;
  static constexpr bool kTwoStage = true;
  static constexpr int kStage1Gates = 2;
  static constexpr bool kDirectStateGrad = true;
  static constexpr int kSavedSlots = 4;
  static constexpr int kTmpSlots = 1;
  static constexpr bool kOptions = true;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward_stage1(A& a) {
    const CellOptions& o = a.options();
    a.saved(1) = a.gates(0) + a.bias(0);
    a.saved(2) = a.gates(1) + a.bias(1);
    activate_clipped<A>(o, o.act[0], a.gates(0), a.saved(1));
    activate_clipped<A>(o, o.act[0], a.gates(1), a.saved(2));
    a.saved(0) = a.gates(0) * a.h_prev();
  }
  template <typename A>
  RNNKIT_HOSTDEVICE static void forward_stage2(A& a) {
    const CellOptions& o = a.options();
    a.saved(3) = a.gates(2) + a.bias(2);
    activate_clipped<A>(o, o.act[1], a.gates(2), a.saved(3));
    a.h() = a.gates(2) + a.gates(1) * (a.h_prev() - a.gates(2));
  }
  template <typename A>
  RNNKIT_HOSTDEVICE static void backward_stage2(A& a) {
    using S = typename A::Scalar;
    const CellOptions& o = a.options();
    activation_grad_clipped<A>(o, o.act[1], a.dgates(2), a.dh() * (S(1) - a.gates(1)), a.saved(3), a.gates(2));
  }
  template <typename A>
  RNNKIT_HOSTDEVICE static void backward_stage1(A& a) {
    const CellOptions& o = a.options();
    activation_grad_clipped<A>(o, o.act[0], a.dgates(0), a.tmp(0) * a.h_prev(), a.saved(1), a.gates(0));
    activation_grad_clipped<A>(o, o.act[0], a.dgates(1), a.dh() * (a.h_prev() - a.gates(2)), a.saved(2),
                               a.gates(1));
    a.dh_prev() = a.dh() * a.gates(1) + a.tmp(0) * a.gates(0);
  }
};

// ---- IndRNN (Li et al. 2018) ------------------------------------------------------------------
// h_t = act(x_t W_ih^T + b_ih + b_hh + u * h_{t-1}), u [H] one recurrent weight per unit (the
// parameter weight_hh [H]); act relu (the paper's) or tanh. No recurrent GEMM: the cell applies u.
template <bool kRelu>
struct IndRnnCell : CellDefaults {
  static constexpr int kGates = 1;
  static constexpr bool kDirectStateGrad = true;
  static constexpr bool kDiagonalRecurrent = true;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    if constexpr (kRelu) {
      a.h() = ew::relu(a.gates(0) + a.bias(0) + a.rec() * a.h_prev());
    } else {
      a.h() = ew::tanh(a.gates(0) + a.bias(0) + a.rec() * a.h_prev());
    }
  }
  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    if constexpr (kRelu) {
      a.dgates(0) = a.dh() * ew::relu_grad_from_output(a.h());
    } else {
      a.dgates(0) = a.dh() * ew::tanh_grad_from_output(a.h());
    }
    a.drec() += a.dgates(0) * a.h_prev();
    a.dh_prev() = a.dgates(0) * a.rec();
  }
};
using IndRnnReluCell = IndRnnCell<true>;
using IndRnnTanhCell = IndRnnCell<false>;

// ---- minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?") --------------------------
// Gates read x_t only, so the loop's one GEMM is the input projection over all T*N rows and the
// recurrence is elementwise. The candidate goes through the paper's g(v) = v >= 0 ? v + 1/2 :
// sigmoid(v) (positive, as its log-space parallel form needs; the sequential form here is the same
// function). g' from g's output y: y >= 1/2 exactly when v >= 0, so g' = y >= 1/2 ? 1 : y (1 - y).
template <typename A, typename Y, typename V>
RNNKIT_HOSTDEVICE void min_candidate(Y&& y, const V& v) {
  y = ew::min_candidate(v);
}
template <typename A, typename DV, typename DY, typename Y>
RNNKIT_HOSTDEVICE void min_candidate_grad(DV&& dv, const DY& dy, const Y& y) {
  dv = dy * ew::min_candidate_grad_from_output(y);
}

// minGRU, gates (z, h~): z = sigmoid(x W_z^T + b_z), h~ = g(x W_h^T + b_h),
// h_t = (1 - z) * h_{t-1} + z * h~. gates(k) keep z and h~.
struct MinGRUCell : CellDefaults {
  static constexpr int kGates = 2;
  static constexpr bool kDirectStateGrad = true;
  static constexpr bool kNoRecurrentWeight = true;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    a.gates(0) = ew::sigmoid(a.gates(0) + a.bias(0));
    min_candidate<A>(a.gates(1), a.gates(1) + a.bias(1));
    a.h() = a.h_prev() + a.gates(0) * (a.gates(1) - a.h_prev());
  }
  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    using S = typename A::Scalar;
    a.dgates(0) = a.dh() * (a.gates(1) - a.h_prev()) * ew::sigmoid_grad_from_output(a.gates(0));
    min_candidate_grad<A>(a.dgates(1), a.dh() * a.gates(0), a.gates(1));
    a.dh_prev() = a.dh() * (S(1) - a.gates(0));
  }
};

// minLSTM, gates (f, i, h~): f, i = sigmoid(.), h~ = g(.), normalised f' = f / (f + i),
// i' = i / (f + i); h_t = f' * h_{t-1} + i' * h~. gates(k) keep f, i, h~.
struct MinLSTMCell : CellDefaults {
  static constexpr int kGates = 3;
  static constexpr bool kDirectStateGrad = true;
  static constexpr bool kNoRecurrentWeight = true;

  template <typename A>
  RNNKIT_HOSTDEVICE static void forward(A& a) {
    a.gates(0) = ew::sigmoid(a.gates(0) + a.bias(0));
    a.gates(1) = ew::sigmoid(a.gates(1) + a.bias(1));
    min_candidate<A>(a.gates(2), a.gates(2) + a.bias(2));
    a.h() = (a.gates(0) * a.h_prev() + a.gates(1) * a.gates(2)) / (a.gates(0) + a.gates(1));
  }
  template <typename A>
  RNNKIT_HOSTDEVICE static void backward(A& a) {
    // With s = f + i: dL/df = dh i (h_{t-1} - h~) / s^2, dL/di = dh f (h~ - h_{t-1}) / s^2.
    const auto s = a.gates(0) + a.gates(1);
    a.dh_prev() = a.dh() * a.gates(0) / s;
    min_candidate_grad<A>(a.dgates(2), a.dh() * a.gates(1) / s, a.gates(2));
    a.dgates(0) = a.dh() * a.gates(1) * (a.h_prev() - a.gates(2)) / (s * s) *
                  ew::sigmoid_grad_from_output(a.gates(0));
    a.dgates(1) = a.dh() * a.gates(0) * (a.gates(2) - a.h_prev()) / (s * s) *
                  ew::sigmoid_grad_from_output(a.gates(1));
  }
};

// Calls fn(CellType{}) for the cell a CellKind names.
template <typename Fn>
decltype(auto) dispatch_cell(CellKind kind, Fn&& fn) {
  switch (kind) {
    case CellKind::kRnnTanh:
      return fn(ElmanTanhCell{});
    case CellKind::kRnnRelu:
      return fn(ElmanReluCell{});
    case CellKind::kLstm:
      return fn(LSTMCell{});
    case CellKind::kGru:
      return fn(GRUCell{});
    case CellKind::kGruResetBefore:
      return fn(GRUResetBeforeCell{});
    case CellKind::kLnLstm:
      return fn(LayerNormLSTMCell{});
    case CellKind::kLnGru:
      return fn(LayerNormGRUCell{});
    case CellKind::kRnnGeneral:
      return fn(GeneralElmanCell{});
    case CellKind::kLstmGeneral:
      return fn(GeneralLSTMCell{});
    case CellKind::kGruGeneral:
      return fn(GeneralGRUCell{});
    case CellKind::kGruResetBeforeGeneral:
      return fn(GeneralGRUResetBeforeCell{});
    case CellKind::kIndRnnRelu:
      return fn(IndRnnReluCell{});
    case CellKind::kIndRnnTanh:
      return fn(IndRnnTanhCell{});
    case CellKind::kMinGru:
      return fn(MinGRUCell{});
    case CellKind::kMinLstm:
      return fn(MinLSTMCell{});
  }
  throw std::invalid_argument(concat("unknown cell kind ", static_cast<int>(kind)));
}

// A cell's traits as plain values, for code that is not templated on the cell (sizes, the
// parameter list, the bindings).
struct CellInfo {
  int gates = 1;            // G
  int stage1_gates = 1;     // gates of the step GEMM: G, or kStage1Gates of a two-stage cell
  bool has_cell_state = false;
  bool separate_recurrent = false;
  bool two_stage = false;
  int saved_slots = 0;
  int stats = 0;
  int tmp_slots = 0;
  int ln_params = 0;
  bool cell_bias_grads = false;
  bool options = false;
  bool peepholes = false;
  bool diagonal_recurrent = false;
  bool no_recurrent_weight = false;
  bool recurrent_gemm = true;  // the loop's per-step h_{t-1} W_hh^T
};

template <typename Cell>
constexpr CellInfo cell_info_of() {
  CellInfo i;
  i.gates = Cell::kGates;
  i.stage1_gates = Cell::kTwoStage ? Cell::kStage1Gates : Cell::kGates;
  i.has_cell_state = Cell::kHasCellState;
  i.separate_recurrent = Cell::kSeparateRecurrent;
  i.two_stage = Cell::kTwoStage;
  i.saved_slots = Cell::kSavedSlots;
  i.stats = Cell::kStats;
  i.tmp_slots = Cell::kTmpSlots;
  i.ln_params = Cell::kLnParams;
  i.cell_bias_grads = Cell::kCellBiasGrads;
  i.options = Cell::kOptions;
  i.peepholes = Cell::kPeepholes;
  i.diagonal_recurrent = Cell::kDiagonalRecurrent;
  i.no_recurrent_weight = Cell::kNoRecurrentWeight;
  i.recurrent_gemm = has_recurrent_gemm<Cell>();
  return i;
}

inline CellInfo cell_info(CellKind kind) {
  return dispatch_cell(kind, [](auto cell) { return cell_info_of<decltype(cell)>(); });
}

// The one table of cell names. PyTorch's `mode` strings ("LSTM", "RNN_TANH") are these names in
// upper case (the compiled module's StackConfig takes that form).
struct CellName {
  CellKind kind;
  const char* name;
};
inline constexpr CellName kCellNames[] = {
    {CellKind::kRnnTanh, "rnn_tanh"}, {CellKind::kRnnRelu, "rnn_relu"},
    {CellKind::kLstm, "lstm"},        {CellKind::kGru, "gru"},
    {CellKind::kGruResetBefore, "gru_reset_before"},
    {CellKind::kLnLstm, "ln_lstm"},   {CellKind::kLnGru, "ln_gru"},
    {CellKind::kIndRnnRelu, "indrnn"}, {CellKind::kIndRnnTanh, "indrnn_tanh"},
    {CellKind::kMinGru, "mingru"},    {CellKind::kMinLstm, "minlstm"},
};

inline const char* cell_name(CellKind kind) {
  for (const CellName& c : kCellNames) {
    if (c.kind == kind) return c.name;
  }
  return "?";
}

}  // namespace rnnkit
