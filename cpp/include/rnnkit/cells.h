// The recurrent cells: each cell's elementwise forward and backward math, written once.
//
// A cell is a stateless struct. It knows nothing of GEMMs, loops, batches or memory; the time loop
// (layer_cpu.cpp, and the CUDA kernels) does the matrix products and hands the cell an *accessor*
// `a` for one unit of work:
//
//   * on the CPU, one batch row: every accessor value is an Eigen map of H contiguous elements;
//   * on the GPU, one element j of one batch row: every accessor value is a scalar reference.
//
// Because the cell is written against ew:: functions and + - * only, the same text compiles for
// both. Accessor members used by the cells (k indexes the gates, 0 <= k < kGates):
//
//   forward:   pre(k)      in/out  on entry x_t W_ih^T + h_{t-1} W_hh^T (gate k's slice, no bias);
//                                  the cell may overwrite it with whatever backward needs
//              bias(k)     in      b_ih + b_hh (zeros without bias), added here: bias and
//                                  activation are one fused pass
//              h()         out     the new hidden state h_t
//   backward:  h()         in      h_t as cached by forward
//              dh()        in      dL/dh_t: the output gradient plus what flows back from step t+1
//              dpre(k)     out     dL/d(gate k pre-activation)
//              dh_prev()   out     the part of dL/dh_{t-1} that does not go through W_hh
//                                  (the loop adds dpre W_hh to it)
//
// Cell traits used by the loop:
//   kGates            G: the gate pre-activation row is [G*H]; weights are w_ih [G*H,C], w_hh [G*H,H]
//                     in PyTorch's gate order.
//   kCachesGates      whether backward reads pre(k) as left by forward (so training keeps the
//                     [T,N,G*H] gate buffer); Elman needs only h_t, which the state cache holds.
#pragma once

#include "rnnkit/math.h"

namespace rnnkit {

enum class CellKind : int {
  kElmanTanh = 0,
  kElmanRelu = 1,
};

// Elman RNN, h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).
struct ElmanTanhCell {
  static constexpr int kGates = 1;
  static constexpr bool kCachesGates = false;

  template <typename Access>
  RNNKIT_HOSTDEVICE static void forward(Access& a) {
    a.h() = ew::tanh(a.pre(0) + a.bias(0));
  }

  template <typename Access>
  RNNKIT_HOSTDEVICE static void backward(Access& a) {
    using S = typename Access::Scalar;
    a.dpre(0) = a.dh() * ew::tanh_grad_from_output(a.h());
    a.dh_prev() = S(0);
  }
};

// Elman RNN with ReLU, h_t = max(0, W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).
// The derivative at exactly 0 is taken as 0 (PyTorch's convention).
struct ElmanReluCell {
  static constexpr int kGates = 1;
  static constexpr bool kCachesGates = false;

  template <typename Access>
  RNNKIT_HOSTDEVICE static void forward(Access& a) {
    a.h() = ew::relu(a.pre(0) + a.bias(0));
  }

  template <typename Access>
  RNNKIT_HOSTDEVICE static void backward(Access& a) {
    using S = typename Access::Scalar;
    a.dpre(0) = a.dh() * ew::relu_grad_from_output(a.h());
    a.dh_prev() = S(0);
  }
};

// Calls fn(CellType{}) for the cell a CellKind names.
template <typename Fn>
decltype(auto) dispatch_cell(CellKind kind, Fn&& fn) {
  switch (kind) {
    case CellKind::kElmanTanh:
      return fn(ElmanTanhCell{});
    case CellKind::kElmanRelu:
      return fn(ElmanReluCell{});
  }
  throw std::invalid_argument(concat("unknown cell kind ", static_cast<int>(kind)));
}

}  // namespace rnnkit
