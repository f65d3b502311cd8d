// The shape rules of one layer-direction (layer.h), shared by every backend.
#include "rnnkit/layer.h"

namespace rnnkit {

void check_layer_dims(const LayerDims& d, index_t gates) {
  if (d.T <= 0) throw_expected("sequence length T", "T >= 1", d.T);
  if (d.N <= 0) throw_expected("batch size N", "N >= 1", d.N);
  if (d.C <= 0) throw_expected("input_size", "input_size >= 1", d.C);
  if (d.H <= 0) throw_expected("hidden_size", "hidden_size >= 1", d.H);
  if (d.P <= 0 || d.P > d.H) throw_expected("state size", concat("in [1, ", d.H, "]"), d.P);
  // Each GEMM dimension (T*N rows, G*H columns, C) must fit a 32-bit BLAS int.
  const index_t rows = checked_mul(d.T, d.N, "T*N");
  const index_t width = checked_mul(gates, d.H, "G*H");
  if (rows > kMaxGemmDim) throw_expected("T*N", concat("at most ", kMaxGemmDim), rows);
  if (width > kMaxGemmDim) throw_expected("gates*hidden_size", concat("at most ", kMaxGemmDim), width);
  if (d.C > kMaxGemmDim) throw_expected("input_size", concat("at most ", kMaxGemmDim), d.C);
}

LayerShape layer_shape(CellKind cell, const LayerDims& d, bool training) {
  LayerShape s;
  s.d = d;
  s.cell = cell_info(cell);
  s.training = training;
  s.GH = checked_mul(s.cell.gates, d.H, "gate width");
  s.G1 = checked_mul(s.cell.stage1_gates, d.H, "step GEMM width");
  s.saved_width = checked_add(checked_mul(s.cell.saved_slots, d.H, "saved width"), s.cell.stats, "saved width");
  s.tmp_width = checked_mul(s.cell.tmp_slots, d.H, "scratch width");
  s.TN = checked_mul(d.T, d.N, "T*N");
  s.state_slots = training ? checked_add(d.T, 1, "T+1") : 2;
  s.project = d.P != d.H;
  if (s.cell.ln_params > 0) {
    index_t width = checked_mul(2, s.GH, "bias partial sums");  // db_ih, db_hh
    for (int p = 0; p < s.cell.ln_params; ++p) width = checked_add(width, ln_param_width(p, s.GH, d.H), "LN partials");
    s.partial_width = width;
  }
  if (s.cell.peepholes) s.partial_width = checked_mul(3, d.H, "peephole partial sums");
  if (s.cell.diagonal_recurrent) s.partial_width = d.H;  // du
  if (!s.cell.recurrent_gemm) s.G1 = 0;
  return s;
}

}  // namespace rnnkit
