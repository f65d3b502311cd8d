// Elementwise primitives the cell math is written in, for two kinds of value:
//
//  * a scalar (float/double), on the host and, compiled by nvcc, on the device: the CUDA kernels
//    run a cell once per element;
//  * an Eigen array expression (CPU only): the CPU loop runs a cell once per batch row, on maps of
//    H contiguous values, so Eigen's SIMD tanh/logistic/exp do the work.
//
// Cells (cells.h) call only these functions and + - * on values, so one definition of each cell's
// math serves both. Non-finite values propagate (relu(NaN) is NaN, as in PyTorch).
#pragma once

#include <cmath>

#include "rnnkit/common.h"

#if !defined(__CUDACC__)
#include <Eigen/Core>
#endif

namespace rnnkit {
namespace ew {

// ---- scalars ------------------------------------------------------------------------------
RNNKIT_HOSTDEVICE float tanh(float x) { return ::tanhf(x); }
RNNKIT_HOSTDEVICE double tanh(double x) { return ::tanh(x); }

RNNKIT_HOSTDEVICE float sigmoid(float x) { return 1.0f / (1.0f + ::expf(-x)); }
RNNKIT_HOSTDEVICE double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }

// `x < 0 ? 0 : x` rather than `x > 0 ? x : 0` so that NaN passes through.
RNNKIT_HOSTDEVICE float relu(float x) { return x < 0.0f ? 0.0f : x; }
RNNKIT_HOSTDEVICE double relu(double x) { return x < 0.0 ? 0.0 : x; }

// d relu / d pre, written in terms of the output h = relu(pre) (1 where h > 0, else 0).
RNNKIT_HOSTDEVICE float relu_grad_from_output(float h) { return h > 0.0f ? 1.0f : 0.0f; }
RNNKIT_HOSTDEVICE double relu_grad_from_output(double h) { return h > 0.0 ? 1.0 : 0.0; }

// d tanh / d pre in terms of the output y = tanh(pre).
RNNKIT_HOSTDEVICE float tanh_grad_from_output(float y) { return 1.0f - y * y; }
RNNKIT_HOSTDEVICE double tanh_grad_from_output(double y) { return 1.0 - y * y; }

// d sigmoid / d pre in terms of the output y = sigmoid(pre).
RNNKIT_HOSTDEVICE float sigmoid_grad_from_output(float y) { return y * (1.0f - y); }
RNNKIT_HOSTDEVICE double sigmoid_grad_from_output(double y) { return y * (1.0 - y); }

RNNKIT_HOSTDEVICE float sqrt(float x) { return ::sqrtf(x); }
RNNKIT_HOSTDEVICE double sqrt(double x) { return ::sqrt(x); }

// The primitives of ONNX's named activations (cells.h, activate / activation_grad).
RNNKIT_HOSTDEVICE float exp(float x) { return ::expf(x); }
RNNKIT_HOSTDEVICE double exp(double x) { return ::exp(x); }
RNNKIT_HOSTDEVICE float abs(float x) { return ::fabsf(x); }
RNNKIT_HOSTDEVICE double abs(double x) { return ::fabs(x); }
RNNKIT_HOSTDEVICE float square(float x) { return x * x; }
RNNKIT_HOSTDEVICE double square(double x) { return x * x; }
// log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|).
RNNKIT_HOSTDEVICE float softplus(float x) { return (x > 0.0f ? x : 0.0f) + ::log1pf(::expf(-::fabsf(x))); }
RNNKIT_HOSTDEVICE double softplus(double x) { return (x > 0.0 ? x : 0.0) + ::log1p(::exp(-::fabs(x))); }
// min(max(x, lo), hi).
RNNKIT_HOSTDEVICE float clamp(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }
RNNKIT_HOSTDEVICE double clamp(double x, double lo, double hi) { return x < lo ? lo : (x > hi ? hi : x); }
// minGRU/minLSTM's candidate g(v) = v >= 0 ? v + 1/2 : sigmoid(v) (positive, continuous), and
// g' from g's output y: y >= 1/2 exactly when v >= 0, so g' = y < 1/2 ? y (1 - y) : 1.
RNNKIT_HOSTDEVICE float min_candidate(float v) { return v < 0.0f ? sigmoid(v) : v + 0.5f; }
RNNKIT_HOSTDEVICE double min_candidate(double v) { return v < 0.0 ? sigmoid(v) : v + 0.5; }
RNNKIT_HOSTDEVICE float min_candidate_grad_from_output(float y) { return y < 0.5f ? y * (1.0f - y) : 1.0f; }
RNNKIT_HOSTDEVICE double min_candidate_grad_from_output(double y) { return y < 0.5 ? y * (1.0 - y) : 1.0; }

// cond ? a : b, elementwise for arrays.
RNNKIT_HOSTDEVICE float where(bool c, float a, float b) { return c ? a : b; }
RNNKIT_HOSTDEVICE double where(bool c, double a, double b) { return c ? a : b; }

// ---- lane values (the CUDA backend's LayerNorm kernels, cuda/row_kernels.h) -------------------
// A thread there holds several elements of a row; a value type that says so (`using IsLanes = void`)
// and applies a function object to each element (`map(f)`) gets every primitive element by element.
#define RNNKIT_EW_LANES(name)                                                          \
  struct name##_fn {                                                                   \
    template <typename T>                                                              \
    RNNKIT_HOSTDEVICE T operator()(T x) const {                                        \
      return name(x);                                                                  \
    }                                                                                  \
  };                                                                                   \
  template <typename V, typename = typename V::IsLanes>                                \
  RNNKIT_HOSTDEVICE auto name(const V& x) {                                            \
    return x.map(name##_fn{});                                                         \
  }
RNNKIT_EW_LANES(tanh)
RNNKIT_EW_LANES(sigmoid)
RNNKIT_EW_LANES(relu)
RNNKIT_EW_LANES(relu_grad_from_output)
RNNKIT_EW_LANES(tanh_grad_from_output)
RNNKIT_EW_LANES(sigmoid_grad_from_output)
RNNKIT_EW_LANES(sqrt)
#undef RNNKIT_EW_LANES

// ---- Eigen arrays (CPU) ---------------------------------------------------------------------
#if !defined(__CUDACC__)
template <typename D>
auto tanh(const Eigen::ArrayBase<D>& x) {
  return x.tanh();
}

template <typename D>
auto sigmoid(const Eigen::ArrayBase<D>& x) {
  return x.logistic();
}

template <typename D>
auto relu(const Eigen::ArrayBase<D>& x) {
  return x.template cwiseMax<Eigen::PropagateNaN>(typename D::Scalar(0));
}

// Eigen 3.4 evaluates comparisons and select() one scalar at a time (scalar_cmp_op has no packet
// access): the functions below that branch do it with packet compares instead (SIMD).
template <typename S>
struct ReluGradFn {
  S operator()(S h) const { return h > S(0) ? S(1) : S(0); }
  template <typename P>
  P packetOp(const P& h) const {
    using namespace Eigen::internal;
    return pselect(pcmp_lt(pzero(h), h), pset1<P>(S(1)), pzero(h));
  }
};
template <typename S>
struct MinCandidateGradFn {
  S operator()(S y) const { return min_candidate_grad_from_output(y); }
  template <typename P>
  P packetOp(const P& y) const {
    using namespace Eigen::internal;
    const P one = pset1<P>(S(1));
    return pselect(pcmp_lt(y, pset1<P>(S(0.5))), pmul(y, psub(one, y)), one);
  }
};

template <typename D>
auto relu_grad_from_output(const Eigen::ArrayBase<D>& h) {
  return h.unaryExpr(ReluGradFn<typename D::Scalar>());
}

// g(v) = sigmoid(min(v, 0)) + max(v, 0): the same function, branch-free.
template <typename D>
auto min_candidate(const Eigen::ArrayBase<D>& v) {
  using S = typename D::Scalar;
  return v.template cwiseMin<Eigen::PropagateNaN>(S(0)).logistic() + v.template cwiseMax<Eigen::PropagateNaN>(S(0));
}

template <typename D>
auto min_candidate_grad_from_output(const Eigen::ArrayBase<D>& y) {
  return y.unaryExpr(MinCandidateGradFn<typename D::Scalar>());
}

template <typename D>
auto tanh_grad_from_output(const Eigen::ArrayBase<D>& y) {
  using S = typename D::Scalar;
  return S(1) - y.square();
}

template <typename D>
auto sigmoid_grad_from_output(const Eigen::ArrayBase<D>& y) {
  using S = typename D::Scalar;
  return y * (S(1) - y);
}

template <typename D>
auto exp(const Eigen::ArrayBase<D>& x) {
  return x.exp();
}

template <typename D>
auto abs(const Eigen::ArrayBase<D>& x) {
  return x.abs();
}

template <typename D>
auto square(const Eigen::ArrayBase<D>& x) {
  return x.square();
}

template <typename D>
auto softplus(const Eigen::ArrayBase<D>& x) {
  using S = typename D::Scalar;
  return x.cwiseMax(S(0)) + (-x.abs()).exp().log1p();
}

template <typename D>
auto clamp(const Eigen::ArrayBase<D>& x, typename D::Scalar lo, typename D::Scalar hi) {
  return x.cwiseMax(lo).cwiseMin(hi);
}

// c.select(a, b): a and b are arrays or scalars.
template <typename C, typename A, typename B>
auto where(const Eigen::ArrayBase<C>& c, const A& a, const B& b) {
  return c.select(a, b);
}
#endif

}  // namespace ew
}  // namespace rnnkit

#if !defined(__CUDACC__)
namespace Eigen {
namespace internal {
template <typename S>
struct functor_traits<rnnkit::ew::ReluGradFn<S>> {
  enum { Cost = 2, PacketAccess = packet_traits<S>::Vectorizable };
};
template <typename S>
struct functor_traits<rnnkit::ew::MinCandidateGradFn<S>> {
  enum { Cost = 4, PacketAccess = packet_traits<S>::Vectorizable };
};
}  // namespace internal
}  // namespace Eigen
#endif

namespace rnnkit {
#if !defined(__CUDACC__)
// The sum of an array expression in an order fixed by its length alone: 16 running lane sums
// (element i goes to lane i mod 16), then the lanes pairwise. Eigen's own reductions start at
// the first SIMD-aligned element, so their rounding would depend on where the data happens to
// sit in memory, and the same call could give a different last bit from one run to the next.
template <typename D>
typename D::Scalar ordered_sum(const Eigen::ArrayBase<D>& v) {
  using S = typename D::Scalar;
  constexpr int kLanes = 16;
  Eigen::Array<S, kLanes, 1> acc = Eigen::Array<S, kLanes, 1>::Zero();
  const Eigen::Index n = v.size();
  Eigen::Index i = 0;
  for (; i + kLanes <= n; i += kLanes) acc += v.template segment<kLanes>(i);
  if (i < n) acc.head(n - i) += v.segment(i, n - i);
  for (int width = kLanes / 2; width >= 1; width /= 2) {
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}
#endif
}  // namespace rnnkit
