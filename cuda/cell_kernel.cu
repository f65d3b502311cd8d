// The seam between the cells and the CUDA backend: cells.h's per-element math compiled for the
// device, through a scalar accessor (one element j of one batch row), in one pointwise kernel per
// pass. The CUDA backend's time loop (its own issue) launches these between its cuBLAS GEMMs, as
// the CPU loop calls the same cells between its BLAS calls; today they are compiled and
// instantiated, which proves that the one definition of each cell serves both backends.
//
// Layout as on the CPU (layer.h): row n of gates [N,GH], hgates [N,GH], saved [N,saved_width],
// states [N,H]; bias [3,GH] (b_ih + b_hh, b_ih, b_hh). The cells whose math averages over a whole
// row (the LayerNorm cells: a.mean) need a block-wide reduction and arrive with the backend.
#include "rnnkit/cells.h"

namespace rnnkit {
namespace cuda {
namespace detail {

// The accessor of cells.h for element j of one batch row: every value is a scalar reference.
template <typename S>
struct DeviceElement {
  using Scalar = S;
  index_t H, GH, j;
  S* gates_;
  S* hgates_;
  const S* bias_;
  S* h_prev_;
  S* c_prev_;
  S* h_;
  S* c_;
  S* saved_;
  S* tmp_;
  const S* dh_;
  S* dc_;
  S* dgates_;
  S* dhgates_;
  S* dh_prev_;

  __device__ S& gates(int k) const { return gates_[k * H + j]; }
  __device__ S& hgates(int k) const { return hgates_[k * H + j]; }
  __device__ const S& bias(int k) const { return bias_[k * H + j]; }
  __device__ const S& b_ih(int k) const { return bias_[GH + k * H + j]; }
  __device__ const S& b_hh(int k) const { return bias_[2 * GH + k * H + j]; }
  __device__ S& h_prev() const { return h_prev_[j]; }
  __device__ S& c_prev() const { return c_prev_[j]; }
  __device__ S& h() const { return h_[j]; }
  __device__ S& c() const { return c_[j]; }
  __device__ S& saved(int s) const { return saved_[s * H + j]; }
  __device__ S& tmp(int s) const { return tmp_[s * H + j]; }
  __device__ const S& dh() const { return dh_[j]; }
  __device__ S& dc() const { return dc_[j]; }
  __device__ S& dc_prev() const { return dc_[j]; }
  __device__ S& dgates(int k) const { return dgates_[k * H + j]; }
  __device__ S& dhgates(int k) const { return dhgates_[k * H + j]; }
  __device__ S& dh_prev() const { return dh_prev_[j]; }
};

// Pointers to row n of every buffer a pointwise step reads or writes.
template <typename S>
struct StepRows {
  index_t N, H, GH, saved_width;
  S* gates;
  S* hgates;
  const S* bias;
  S* h_prev;
  S* c_prev;
  S* h;
  S* c;
  S* saved;
  S* tmp;
  const S* dh;
  S* dc;
  S* dgates;
  S* dhgates;
  S* dh_prev;

  __device__ DeviceElement<S> element(index_t n, index_t j) const {
    auto row = [&](auto* base, index_t width) { return base ? base + n * width : nullptr; };
    return DeviceElement<S>{H, GH, j,
                            row(gates, GH), row(hgates, GH), bias, row(h_prev, H), row(c_prev, H), row(h, H),
                            row(c, H), row(saved, saved_width), row(tmp, H), row(dh, H), row(dc, H),
                            row(dgates, GH), row(dhgates, GH), row(dh_prev, H)};
  }
};

// One thread per (row, unit), grid-stride over N*H.
template <typename Cell, typename S>
__global__ void pointwise_forward_kernel(StepRows<S> rows) {
  for (index_t i = blockIdx.x * blockDim.x + threadIdx.x; i < rows.N * rows.H; i += gridDim.x * blockDim.x) {
    DeviceElement<S> a = rows.element(i / rows.H, i % rows.H);
    Cell::forward(a);
  }
}

template <typename Cell, typename S>
__global__ void pointwise_backward_kernel(StepRows<S> rows) {
  for (index_t i = blockIdx.x * blockDim.x + threadIdx.x; i < rows.N * rows.H; i += gridDim.x * blockDim.x) {
    DeviceElement<S> a = rows.element(i / rows.H, i % rows.H);
    Cell::backward(a);
  }
}

}  // namespace detail

// Instantiated for every cell without a row reduction, in both precisions.
#define RNNKIT_INSTANTIATE_CELL_KERNELS(CELL, S)                                      \
  template __global__ void detail::pointwise_forward_kernel<CELL, S>(detail::StepRows<S>);           \
  template __global__ void detail::pointwise_backward_kernel<CELL, S>(detail::StepRows<S>);
RNNKIT_INSTANTIATE_CELL_KERNELS(ElmanTanhCell, float)
RNNKIT_INSTANTIATE_CELL_KERNELS(ElmanTanhCell, double)
RNNKIT_INSTANTIATE_CELL_KERNELS(ElmanReluCell, float)
RNNKIT_INSTANTIATE_CELL_KERNELS(ElmanReluCell, double)
RNNKIT_INSTANTIATE_CELL_KERNELS(LSTMCell, float)
RNNKIT_INSTANTIATE_CELL_KERNELS(LSTMCell, double)
RNNKIT_INSTANTIATE_CELL_KERNELS(GRUCell, float)
RNNKIT_INSTANTIATE_CELL_KERNELS(GRUCell, double)
#undef RNNKIT_INSTANTIATE_CELL_KERNELS

}  // namespace cuda
}  // namespace rnnkit
