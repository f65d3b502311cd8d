// Optimizer updates and gradient clipping, for every backend: the hyper-parameters and the contract
// of each update (backend.h runs them). The formulas are PyTorch's (torch.optim single-tensor
// implementations, the CPU default) so training runs can be compared step by step.
// Hyper-parameters arrive as doubles and are applied in the parameter's precision, as PyTorch does.
//
// Every update works in place on arrays of the same n elements:
//   sgd_update(param, grad, momentum_buf, n, h, first_step)   momentum_buf [n] or null
//       (momentum == 0); first_step: the buffer starts as a copy of the gradient
//   adam_update(param, grad, exp_avg, exp_avg_sq, n, h, step)  step: the step number after
//       increment (1 on the first step)
//   rmsprop_update(param, grad, square_avg, momentum_buf, grad_avg, n, h)  momentum_buf [n] or
//       null (momentum == 0), grad_avg [n] or null (not centered)
//   sum_of_squares(g, n) = sum(g^2), accumulated in double; scale(g, n, f): g *= f;
//   clamp(g, n, limit): every element into [-limit, limit] (NaN stays NaN)
#pragma once

#include "rnnkit/common.h"

namespace rnnkit {

struct SgdHyper {
  double lr = 0.0, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false;
};

struct AdamHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool decoupled_weight_decay = false;  // AdamW
};

struct RmspropHyper {
  double lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0.0, momentum = 0.0;
  bool centered = false;
};

}  // namespace rnnkit
