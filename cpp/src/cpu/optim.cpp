// Optimizer updates on the CPU (cpu/optim.h), one loop over each parameter.
#include "cpu/optim.h"

#include <cmath>

namespace rnnkit {
namespace cpu {

// Plain loops, not Eigen: Eigen's fast-math vector sqrt is an approximation (rsqrt + a Newton
// step) while its unaligned-head elements use the exact one, so results would depend on where the
// caller's arrays happen to start in memory. The compiler vectorises these loops with exact sqrt
// and division; -ffp-contract=off (CMakeLists.txt) keeps vector body and scalar tail identical.

template <typename S>
void sgd_update(S* param, const S* grad, S* momentum_buf, index_t n, const SgdHyper& h, bool first_step) {
  const S wd = S(h.weight_decay), mom = S(h.momentum), damp = S(1.0 - h.dampening), lr = S(-h.lr);
  for (index_t i = 0; i < n; ++i) {
    S d = h.weight_decay != 0.0 ? grad[i] + wd * param[i] : grad[i];
    if (h.momentum != 0.0) {
      const S b = first_step ? d : momentum_buf[i] * mom + damp * d;
      momentum_buf[i] = b;
      d = h.nesterov ? d + mom * b : b;
    }
    param[i] = param[i] + lr * d;
  }
}

template <typename S>
void adam_update(S* param, const S* grad, S* exp_avg, S* exp_avg_sq, index_t n, const AdamHyper& h,
                 index_t step) {
  const double bias_correction1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
  const S step_size = S(-(h.lr / bias_correction1));
  const S bc2_sqrt = S(std::sqrt(bias_correction2));
  const S w1 = S(1.0 - h.beta1), b2 = S(h.beta2), w2 = S(1.0 - h.beta2), eps = S(h.eps);
  const S wd = S(h.weight_decay), decay = S(1.0 - h.lr * h.weight_decay);
  const bool l2 = h.weight_decay != 0.0 && !h.decoupled_weight_decay;
  const bool decoupled = h.weight_decay != 0.0 && h.decoupled_weight_decay;
  for (index_t i = 0; i < n; ++i) {
    S p = param[i];
    if (decoupled) p = p * decay;
    const S g = l2 ? grad[i] + wd * p : grad[i];
    const S m = exp_avg[i] + w1 * (g - exp_avg[i]);  // torch's lerp(exp_avg, g, 1 - beta1)
    const S v = exp_avg_sq[i] * b2 + w2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] = p + step_size * (m / (std::sqrt(v) / bc2_sqrt + eps));
  }
}

template <typename S>
void rmsprop_update(S* param, const S* grad, S* square_avg, S* momentum_buf, S* grad_avg, index_t n,
                    const RmspropHyper& h) {
  const S wd = S(h.weight_decay), alpha = S(h.alpha), w = S(1.0 - h.alpha), eps = S(h.eps);
  const S mom = S(h.momentum), lr = S(-h.lr);
  for (index_t i = 0; i < n; ++i) {
    const S g = h.weight_decay != 0.0 ? grad[i] + wd * param[i] : grad[i];
    const S sq = square_avg[i] * alpha + w * g * g;
    square_avg[i] = sq;
    S avg;
    if (h.centered) {
      const S ga = grad_avg[i] + w * (g - grad_avg[i]);
      grad_avg[i] = ga;
      avg = std::sqrt(sq - ga * ga) + eps;
    } else {
      avg = std::sqrt(sq) + eps;
    }
    if (h.momentum > 0.0) {
      const S b = momentum_buf[i] * mom + g / avg;
      momentum_buf[i] = b;
      param[i] = param[i] + lr * b;
    } else {
      param[i] = param[i] + lr * (g / avg);
    }
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
  for (index_t i = 0; i < n; ++i) g[i] *= factor;
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

}  // namespace cpu
}  // namespace rnnkit
