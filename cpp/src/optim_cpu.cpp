// Optimizer updates on the CPU (optim.h), as Eigen array expressions over each parameter.
#include "rnnkit/optim.h"

#include <cmath>

#include <Eigen/Core>

namespace rnnkit {
namespace {

template <typename S>
using Vec = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>;
template <typename S>
using ConstVec = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;

// torch's lerp(self, end, w) for w < 0.5 (every use here): self + w * (end - self).
template <typename A, typename B>
auto lerp_small(const A& self, const B& end, typename A::Scalar w) {
  return self + w * (end - self);
}

}  // namespace

template <typename S>
void sgd_update(S* param, const S* grad, S* momentum_buf, index_t n, const SgdHyper& h, bool first_step) {
  Vec<S> p(param, n);
  ConstVec<S> g0(grad, n);
  // d = grad (+ weight_decay * param)
  Eigen::Array<S, Eigen::Dynamic, 1> d = g0;
  if (h.weight_decay != 0.0) d = g0 + S(h.weight_decay) * p;
  if (h.momentum != 0.0) {
    Vec<S> buf(momentum_buf, n);
    if (first_step) {
      buf = d;
    } else {
      buf = buf * S(h.momentum) + S(1.0 - h.dampening) * d;
    }
    if (h.nesterov) {
      d = d + S(h.momentum) * buf;
    } else {
      d = buf;
    }
  }
  p = p + S(-h.lr) * d;
}

template <typename S>
void adam_update(S* param, const S* grad, S* exp_avg, S* exp_avg_sq, index_t n, const AdamHyper& h,
                 index_t step) {
  Vec<S> p(param, n), m(exp_avg, n), v(exp_avg_sq, n);
  ConstVec<S> g0(grad, n);
  Eigen::Array<S, Eigen::Dynamic, 1> g = g0;
  if (h.weight_decay != 0.0) {
    if (h.decoupled_weight_decay) {
      p = p * S(1.0 - h.lr * h.weight_decay);
    } else {
      g = g0 + S(h.weight_decay) * p;
    }
  }
  m = lerp_small(m, g, S(1.0 - h.beta1));
  v = v * S(h.beta2) + S(1.0 - h.beta2) * g * g;
  const double bias_correction1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
  const double step_size = h.lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  p = p + S(-step_size) * (m / (v.sqrt() / S(bias_correction2_sqrt) + S(h.eps)));
}

template <typename S>
void rmsprop_update(S* param, const S* grad, S* square_avg, S* momentum_buf, S* grad_avg, index_t n,
                    const RmspropHyper& h) {
  Vec<S> p(param, n), sq(square_avg, n);
  ConstVec<S> g0(grad, n);
  Eigen::Array<S, Eigen::Dynamic, 1> g = g0;
  if (h.weight_decay != 0.0) g = g0 + S(h.weight_decay) * p;
  sq = sq * S(h.alpha) + S(1.0 - h.alpha) * g * g;
  Eigen::Array<S, Eigen::Dynamic, 1> avg;
  if (h.centered) {
    Vec<S> ga(grad_avg, n);
    ga = lerp_small(ga, g, S(1.0 - h.alpha));
    avg = (sq - ga * ga).sqrt() + S(h.eps);
  } else {
    avg = sq.sqrt() + S(h.eps);
  }
  if (h.momentum > 0.0) {
    Vec<S> buf(momentum_buf, n);
    buf = buf * S(h.momentum) + g / avg;
    p = p + S(-h.lr) * buf;
  } else {
    p = p + S(-h.lr) * (g / avg);
  }
}

template <typename S>
double sum_of_squares(const S* g, index_t n) {
  double total = 0.0;
  for (index_t i = 0; i < n; ++i) total += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  return total;
}

template <typename S>
void scale_in_place(S* g, index_t n, S factor) {
  Vec<S>(g, n) *= factor;
}

template <typename S>
void clamp_in_place(S* g, index_t n, S limit) {
  for (index_t i = 0; i < n; ++i) {
    if (g[i] > limit) g[i] = limit;
    else if (g[i] < -limit) g[i] = -limit;
  }
}

#define RNNKIT_INSTANTIATE_OPTIM(S)                                                              \
  template void sgd_update<S>(S*, const S*, S*, index_t, const SgdHyper&, bool);                 \
  template void adam_update<S>(S*, const S*, S*, S*, index_t, const AdamHyper&, index_t);        \
  template void rmsprop_update<S>(S*, const S*, S*, S*, S*, index_t, const RmspropHyper&);       \
  template double sum_of_squares<S>(const S*, index_t);                                          \
  template void scale_in_place<S>(S*, index_t, S);                                               \
  template void clamp_in_place<S>(S*, index_t, S);
RNNKIT_INSTANTIATE_OPTIM(float)
RNNKIT_INSTANTIATE_OPTIM(double)
#undef RNNKIT_INSTANTIATE_OPTIM

}  // namespace rnnkit
