// Optimizer updates and gradient clipping on the CUDA backend (optim.h's contract): one thread per
// element, the CPU's formulas (cpu/optim.cpp) term for term. Hyper-parameters arrive as doubles and
// are applied in the parameter's precision; bias corrections are computed once on the host.
#include "cuda_optim.h"

#include <cmath>
#include <vector>

#include "device.h"
#include "rnnkit/math.h"

namespace rnnkit {
namespace cuda {
namespace {

template <typename S>
struct SgdBody {
  index_t n;
  S* param;
  const S* grad;
  S* momentum_buf;
  S wd, mom, damp, lr;
  bool decay, momentum, nesterov, first_step;

  RNNKIT_DEVICE void operator()(const Thread& t) const {
    for (index_t i = t.global(); i < n; i += t.stride()) {
      S d = decay ? grad[i] + wd * param[i] : grad[i];
      if (momentum) {
        const S b = first_step ? d : momentum_buf[i] * mom + damp * d;
        momentum_buf[i] = b;
        d = nesterov ? d + mom * b : b;
      }
      param[i] = param[i] + lr * d;
    }
  }
};

template <typename S>
struct AdamBody {
  index_t n;
  S* param;
  const S* grad;
  S* exp_avg;
  S* exp_avg_sq;
  S step_size, bc2_sqrt, w1, b2, w2, eps, wd, decay;
  bool l2, decoupled;

  RNNKIT_DEVICE void operator()(const Thread& t) const {
    for (index_t i = t.global(); i < n; i += t.stride()) {
      S p = param[i];
      if (decoupled) p = p * decay;
      const S g = l2 ? grad[i] + wd * p : grad[i];
      const S m = exp_avg[i] + w1 * (g - exp_avg[i]);
      const S v = exp_avg_sq[i] * b2 + w2 * g * g;
      exp_avg[i] = m;
      exp_avg_sq[i] = v;
      param[i] = p + step_size * (m / (ew::sqrt(v) / bc2_sqrt + eps));
    }
  }
};

template <typename S>
struct RmspropBody {
  index_t n;
  S* param;
  const S* grad;
  S* square_avg;
  S* momentum_buf;
  S* grad_avg;
  S wd, alpha, w, eps, mom, lr;
  bool decay, centered, momentum;

  RNNKIT_DEVICE void operator()(const Thread& t) const {
    for (index_t i = t.global(); i < n; i += t.stride()) {
      const S g = decay ? grad[i] + wd * param[i] : grad[i];
      const S sq = square_avg[i] * alpha + w * g * g;
      square_avg[i] = sq;
      S avg;
      if (centered) {
        const S ga = grad_avg[i] + w * (g - grad_avg[i]);
        grad_avg[i] = ga;
        avg = ew::sqrt(sq - ga * ga) + eps;
      } else {
        avg = ew::sqrt(sq) + eps;
      }
      if (momentum) {
        const S b = momentum_buf[i] * mom + g / avg;
        momentum_buf[i] = b;
        param[i] = param[i] + lr * b;
      } else {
        param[i] = param[i] + lr * (g / avg);
      }
    }
  }
};

// partial[t] = sum of g[i]^2 over i = t, t + kPartials, ... in double, in order: the host adds the
// partials in order, so the result is the same on every run (no atomics).
constexpr index_t kPartials = kBlockThreads;

template <typename S>
struct SquaresBody {
  index_t n;
  const S* g;
  double* partial;

  RNNKIT_DEVICE void operator()(const Thread& t) const {
    const index_t k = t.global();
    if (k >= kPartials) return;
    double acc = 0.0;
    for (index_t i = k; i < n; i += kPartials) acc += static_cast<double>(g[i]) * static_cast<double>(g[i]);
    partial[k] = acc;
  }
};

template <typename S>
struct ScaleBody {
  index_t n;
  S* g;
  S factor;
  RNNKIT_DEVICE void operator()(const Thread& t) const {
    for (index_t i = t.global(); i < n; i += t.stride()) g[i] *= factor;
  }
};

template <typename S>
struct ClampBody {
  index_t n;
  S* g;
  S limit;
  RNNKIT_DEVICE void operator()(const Thread& t) const {
    for (index_t i = t.global(); i < n; i += t.stride()) {
      if (g[i] > limit) g[i] = limit;
      else if (g[i] < -limit) g[i] = -limit;
    }
  }
};

}  // namespace

template <typename S>
void sgd_update(S* param, const S* grad, S* momentum_buf, index_t n, const SgdHyper& h, bool first_step) {
  RNNKIT_LAUNCH(current_stream(), n, (SgdBody<S>{n, param, grad, momentum_buf, S(h.weight_decay), S(h.momentum),
                                        S(1.0 - h.dampening), S(-h.lr), h.weight_decay != 0.0, h.momentum != 0.0,
                                        h.nesterov, first_step}));
  synchronize(current_stream());
}

template <typename S>
void adam_update(S* param, const S* grad, S* exp_avg, S* exp_avg_sq, index_t n, const AdamHyper& h, index_t step) {
  const double bias_correction1 = 1.0 - std::pow(h.beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(h.beta2, static_cast<double>(step));
  RNNKIT_LAUNCH(current_stream(), n,
                (AdamBody<S>{n, param, grad, exp_avg, exp_avg_sq, S(-(h.lr / bias_correction1)),
                             S(std::sqrt(bias_correction2)), S(1.0 - h.beta1), S(h.beta2), S(1.0 - h.beta2), S(h.eps),
                             S(h.weight_decay), S(1.0 - h.lr * h.weight_decay),
                             h.weight_decay != 0.0 && !h.decoupled_weight_decay,
                             h.weight_decay != 0.0 && h.decoupled_weight_decay}));
  synchronize(current_stream());
}

template <typename S>
void rmsprop_update(S* param, const S* grad, S* square_avg, S* momentum_buf, S* grad_avg, index_t n,
                    const RmspropHyper& h) {
  RNNKIT_LAUNCH(current_stream(), n,
                (RmspropBody<S>{n, param, grad, square_avg, momentum_buf, grad_avg, S(h.weight_decay), S(h.alpha),
                                S(1.0 - h.alpha), S(h.eps), S(h.momentum), S(-h.lr), h.weight_decay != 0.0,
                                h.centered, h.momentum > 0.0}));
  synchronize(current_stream());
}

template <typename S>
double sum_of_squares(const S* g, index_t n) {
  DeviceBuffer<double> partial(kPartials, "gradient norm partial sums");
  zero_on_device(partial.data(), kPartials * sizeof(double), current_stream());
  RNNKIT_LAUNCH(current_stream(), kPartials, (SquaresBody<S>{n, g, partial.data()}));
  std::vector<double> host(kPartials);
  copy_to_host(host.data(), partial.data(), kPartials * sizeof(double), current_stream());
  double total = 0.0;
  for (double v : host) total += v;
  return total;
}

template <typename S>
void scale_in_place(S* g, index_t n, S factor) {
  RNNKIT_LAUNCH(current_stream(), n, (ScaleBody<S>{n, g, factor}));
  synchronize(current_stream());
}

template <typename S>
void clamp_in_place(S* g, index_t n, S limit) {
  RNNKIT_LAUNCH(current_stream(), n, (ClampBody<S>{n, g, limit}));
  synchronize(current_stream());
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

}  // namespace cuda
}  // namespace rnnkit
