// The CPU time loop: one generic forward and one generic BPTT loop, run for every cell.
//
// The cell sees one batch row at a time through the accessors below, which hand it Eigen maps of
// H contiguous values; everything else here is GEMMs, pointer arithmetic and copies. No memory is
// allocated in this file: the caller passes every buffer (sizes from layer_sizes).
#include <algorithm>
#include <cstring>

#include <Eigen/Core>

#include "rnnkit/blas.h"
#include "rnnkit/layer.h"

namespace rnnkit {
namespace {

template <typename S>
using Vec = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>;
template <typename S>
using ConstVec = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;

// One batch row of one forward step.
template <typename S>
struct ForwardRow {
  using Scalar = S;
  S* pre_row;         // [GH] gate pre-activations (input + recurrent projections)
  const S* bias_row;  // [GH] b_ih + b_hh
  S* h_row;           // [H] new state
  index_t H;

  Vec<S> pre(int k) const { return Vec<S>(pre_row + k * H, H); }
  ConstVec<S> bias(int k) const { return ConstVec<S>(bias_row + k * H, H); }
  Vec<S> h() const { return Vec<S>(h_row, H); }
};

// One batch row of one backward step.
template <typename S>
struct BackwardRow {
  using Scalar = S;
  const S* pre_row;   // [GH] what forward left in the gate buffer
  const S* h_row;     // [H] h_t
  const S* dh_row;    // [H] dL/dh_t
  S* dpre_row;        // [GH] out
  S* dh_prev_row;     // [H] out: direct part of dL/dh_{t-1}
  index_t H;

  ConstVec<S> pre(int k) const { return ConstVec<S>(pre_row + k * H, H); }
  ConstVec<S> h() const { return ConstVec<S>(h_row, H); }
  ConstVec<S> dh() const { return ConstVec<S>(dh_row, H); }
  Vec<S> dpre(int k) const { return Vec<S>(dpre_row + k * H, H); }
  Vec<S> dh_prev() const { return Vec<S>(dh_prev_row, H); }
};

template <typename S>
void copy_n(S* dst, const S* src, index_t n) {
  std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(S));
}

template <typename S>
void zero_n(S* dst, index_t n) {
  std::memset(dst, 0, static_cast<std::size_t>(n) * sizeof(S));
}

// sum_r rows[r, :] added into out[:] (rows is [R, W] row-major).
template <typename S>
void add_column_sums(const S* rows, index_t R, index_t W, S* out) {
  Vec<S> acc(out, W);
  for (index_t r = 0; r < R; ++r) acc += ConstVec<S>(rows + r * W, W);
}

template <typename Cell, typename S>
void forward_loop(const LayerDims& d, const LayerWeights<S>& w, const S* x, const S* h0, S* y,
                  S* h_n, bool training, const ForwardBuffers<S>& buf) {
  const index_t T = d.T, N = d.N, C = d.C, H = d.H;
  const index_t GH = Cell::kGates * H;
  const index_t NH = N * H;

  // Input projection for every step at once; biases are added in the pointwise step.
  gemm(Trans::kNo, Trans::kYes, T * N, GH, C, S(1), x, C, w.w_ih, C, S(0), buf.gates, GH);

  for (index_t j = 0; j < GH; ++j) {
    buf.bias[j] = (w.b_ih ? w.b_ih[j] : S(0)) + (w.b_hh ? w.b_hh[j] : S(0));
  }

  // Training keeps every state (slot t holds h_t); inference alternates two slots.
  auto slot = [&](index_t t) { return buf.h_seq + (training ? t : t % 2) * NH; };
  if (h0 != nullptr) {
    copy_n(slot(0), h0, NH);
  } else {
    zero_n(slot(0), NH);
  }

  for (index_t t = 0; t < T; ++t) {
    const S* h_prev = slot(t);
    S* h_cur = slot(t + 1);
    S* g = buf.gates + t * N * GH;
    gemm(Trans::kNo, Trans::kYes, N, GH, H, S(1), h_prev, H, w.w_hh, H, S(1), g, GH);
    for (index_t n = 0; n < N; ++n) {
      ForwardRow<S> row{g + n * GH, buf.bias, h_cur + n * H, H};
      Cell::forward(row);
    }
    copy_n(y + t * NH, h_cur, NH);
  }
  copy_n(h_n, slot(T), NH);
}

template <typename Cell, typename S>
void backward_loop(const LayerDims& d, const LayerWeights<S>& w, const S* x, const S* h_seq,
                   const S* gates, const S* dy, const S* dh_n, const LayerGrads<S>& grads, S* dx,
                   S* dh0, const BackwardBuffers<S>& buf) {
  const index_t T = d.T, N = d.N, C = d.C, H = d.H;
  const index_t GH = Cell::kGates * H;
  const index_t NH = N * H;

  // dh_next: gradient reaching the state of the step being processed from later steps.
  // dh_cur:  dh_next plus the output gradient of this step.
  S* dh_next = buf.dh_a;
  S* dh_cur = buf.dh_b;
  if (dh_n != nullptr) {
    copy_n(dh_next, dh_n, NH);
  } else {
    zero_n(dh_next, NH);
  }

  for (index_t t = T - 1; t >= 0; --t) {
    if (dy != nullptr) {
      Vec<S>(dh_cur, NH) = ConstVec<S>(dh_next, NH) + ConstVec<S>(dy + t * NH, NH);
    } else {
      copy_n(dh_cur, dh_next, NH);
    }
    const S* h_t = h_seq + (t + 1) * NH;
    const S* g = gates != nullptr ? gates + t * N * GH : nullptr;
    S* dg = buf.dgates + t * N * GH;
    for (index_t n = 0; n < N; ++n) {
      BackwardRow<S> row{g ? g + n * GH : nullptr, h_t + n * H, dh_cur + n * H,
                         dg + n * GH, dh_next + n * H, H};
      Cell::backward(row);
    }
    // dL/dh_{t-1} = (direct part written by the cell) + dgates[t] W_hh.
    gemm(Trans::kNo, Trans::kNo, N, H, GH, S(1), dg, GH, w.w_hh, H, S(1), dh_next, H);
  }
  copy_n(dh0, dh_next, NH);

  // Weight gradients: one GEMM each over all T*N rows.
  const index_t TN = T * N;
  gemm(Trans::kYes, Trans::kNo, GH, C, TN, S(1), buf.dgates, GH, x, C, S(1), grads.dw_ih, C);
  gemm(Trans::kYes, Trans::kNo, GH, H, TN, S(1), buf.dgates, GH, h_seq, H, S(1), grads.dw_hh, H);
  if (grads.db_ih != nullptr) add_column_sums(buf.dgates, TN, GH, grads.db_ih);
  if (grads.db_hh != nullptr) add_column_sums(buf.dgates, TN, GH, grads.db_hh);
  if (dx != nullptr) {
    gemm(Trans::kNo, Trans::kNo, TN, C, GH, S(1), buf.dgates, GH, w.w_ih, C, S(0), dx, C);
  }
}

}  // namespace

int cell_gates(CellKind cell) {
  return dispatch_cell(cell, [](auto c) { return decltype(c)::kGates; });
}

bool cell_caches_gates(CellKind cell) {
  return dispatch_cell(cell, [](auto c) { return decltype(c)::kCachesGates; });
}

void check_layer_dims(const LayerDims& d, index_t gates) {
  if (d.T <= 0) throw_expected("sequence length T", "T >= 1", d.T);
  if (d.N <= 0) throw_expected("batch size N", "N >= 1", d.N);
  if (d.C <= 0) throw_expected("input_size", "input_size >= 1", d.C);
  if (d.H <= 0) throw_expected("hidden_size", "hidden_size >= 1", d.H);
  // Each GEMM dimension (T*N rows, G*H columns, C, H) must fit a 32-bit BLAS int.
  const index_t rows = checked_mul(d.T, d.N, "T*N");
  const index_t width = checked_mul(gates, d.H, "G*H");
  if (rows > kMaxBlasDim) throw_expected("T*N", concat("at most ", kMaxBlasDim), rows);
  if (width > kMaxBlasDim) throw_expected("gates*hidden_size", concat("at most ", kMaxBlasDim), width);
  if (d.C > kMaxBlasDim) throw_expected("input_size", concat("at most ", kMaxBlasDim), d.C);
}

LayerSizes layer_sizes(CellKind cell, const LayerDims& d, bool training) {
  LayerSizes s;
  s.gate_width = checked_mul(cell_gates(cell), d.H, "gate width");
  const index_t TN = checked_mul(d.T, d.N, "T*N");
  s.x = checked_mul(TN, d.C, "input");
  s.y = checked_mul(TN, d.H, "output");
  s.state = checked_mul(d.N, d.H, "state");
  s.w_ih = checked_mul(s.gate_width, d.C, "weight_ih");
  s.w_hh = checked_mul(s.gate_width, d.H, "weight_hh");
  s.bias = s.gate_width;
  s.h_seq = checked_mul(training ? checked_add(d.T, 1, "T+1") : 2, s.state, "state sequence");
  s.gates = checked_mul(TN, s.gate_width, "gate buffer");
  s.dgates = s.gates;
  return s;
}

template <typename S>
void layer_forward(CellKind cell, const LayerDims& d, const LayerWeights<S>& w, const S* x,
                   const S* h0, S* y, S* h_n, bool training, const ForwardBuffers<S>& buf) {
  dispatch_cell(cell, [&](auto c) {
    forward_loop<decltype(c), S>(d, w, x, h0, y, h_n, training, buf);
  });
}

template <typename S>
void layer_backward(CellKind cell, const LayerDims& d, const LayerWeights<S>& w, const S* x,
                    const S* h_seq, const S* gates, const S* dy, const S* dh_n,
                    const LayerGrads<S>& grads, S* dx, S* dh0, const BackwardBuffers<S>& buf) {
  dispatch_cell(cell, [&](auto c) {
    backward_loop<decltype(c), S>(d, w, x, h_seq, gates, dy, dh_n, grads, dx, dh0, buf);
  });
}

template void layer_forward<float>(CellKind, const LayerDims&, const LayerWeights<float>&,
                                   const float*, const float*, float*, float*, bool,
                                   const ForwardBuffers<float>&);
template void layer_forward<double>(CellKind, const LayerDims&, const LayerWeights<double>&,
                                    const double*, const double*, double*, double*, bool,
                                    const ForwardBuffers<double>&);
template void layer_backward<float>(CellKind, const LayerDims&, const LayerWeights<float>&,
                                    const float*, const float*, const float*, const float*,
                                    const float*, const LayerGrads<float>&, float*, float*,
                                    const BackwardBuffers<float>&);
template void layer_backward<double>(CellKind, const LayerDims&, const LayerWeights<double>&,
                                     const double*, const double*, const double*, const double*,
                                     const double*, const LayerGrads<double>&, double*, double*,
                                     const BackwardBuffers<double>&);

}  // namespace rnnkit
