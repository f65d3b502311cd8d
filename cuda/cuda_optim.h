// The optimizer updates and clipping on the CUDA backend (optim.cu), optim.h's contract on device
// arrays. Each call synchronises before it returns.
#pragma once

#include "rnnkit/optim.h"

namespace rnnkit {
namespace cuda {

template <typename S>
void sgd_update(S* param, const S* grad, S* momentum_buf, index_t n, const SgdHyper& h, bool first_step);
template <typename S>
void adam_update(S* param, const S* grad, S* exp_avg, S* exp_avg_sq, index_t n, const AdamHyper& h, index_t step);
template <typename S>
void rmsprop_update(S* param, const S* grad, S* square_avg, S* momentum_buf, S* grad_avg, index_t n,
                    const RmspropHyper& h);
template <typename S>
double sum_of_squares(const S* g, index_t n);
template <typename S>
void scale_in_place(S* g, index_t n, S factor);
template <typename S>
void clamp_in_place(S* g, index_t n, S limit);

}  // namespace cuda
}  // namespace rnnkit
