// Optimizer updates and gradient clipping, elementwise over one parameter array, with PyTorch's
// update formulas (torch.optim single-tensor implementations, the CPU default) so training runs
// can be compared step by step. Hyper-parameters arrive as doubles and are applied in the
// parameter's precision, as PyTorch does.
//
// Every function updates its arrays in place; `n` is the element count of each.
#pragma once

#include "rnnkit/common.h"

namespace rnnkit {

struct SgdHyper {
  double lr = 0.0, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false;
};
// momentum_buf: [n] or null (momentum == 0); first_step: the buffer starts as a copy of the gradient.
template <typename S>
void sgd_update(S* param, const S* grad, S* momentum_buf, index_t n, const SgdHyper& h, bool first_step);

struct AdamHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool decoupled_weight_decay = false;  // AdamW
};
// exp_avg, exp_avg_sq: [n]; step: the step number after increment (1 on the first step).
template <typename S>
void adam_update(S* param, const S* grad, S* exp_avg, S* exp_avg_sq, index_t n, const AdamHyper& h,
                 index_t step);

struct RmspropHyper {
  double lr = 1e-2, alpha = 0.99, eps = 1e-8, weight_decay = 0.0, momentum = 0.0;
  bool centered = false;
};
// square_avg: [n]; momentum_buf: [n] or null (momentum == 0); grad_avg: [n] or null (not centered).
template <typename S>
void rmsprop_update(S* param, const S* grad, S* square_avg, S* momentum_buf, S* grad_avg, index_t n,
                    const RmspropHyper& h);

// sum(g^2), accumulated in double.
template <typename S>
double sum_of_squares(const S* g, index_t n);

template <typename S>
void scale_in_place(S* g, index_t n, S factor);

// Clamps every element to [-limit, limit] (NaN stays NaN).
template <typename S>
void clamp_in_place(S* g, index_t n, S limit);

}  // namespace rnnkit
