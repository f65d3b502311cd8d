// Small helpers shared by the CPU backend's loops (layers, stack, network): Eigen maps over raw
// buffers and size-checked copies. Internal to the CPU backend.
#pragma once

#include <cstring>

#include <Eigen/Core>

#include "rnnkit/common.h"

namespace rnnkit {
namespace cpu {

// n contiguous values as an Eigen array, so elementwise work runs on Eigen's SIMD loops.
template <typename S>
using Vec = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>;
template <typename S>
using ConstVec = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;

// memcpy/memset of n elements; n <= 0 does nothing (empty views may carry null pointers).
template <typename S>
void copy_n(S* dst, const S* src, index_t n) {
  if (n > 0) std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(S));
}

template <typename S>
void zero_n(S* dst, index_t n) {
  if (n > 0) std::memset(dst, 0, static_cast<std::size_t>(n) * sizeof(S));
}


}  // namespace cpu
}  // namespace rnnkit
