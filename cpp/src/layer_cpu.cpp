// The CPU time loop: one generic forward and one generic BPTT loop, run for every cell.
//
// The cell sees one batch row at a time through CpuRow, which hands it Eigen maps of H contiguous
// values; everything else here is GEMMs, pointer arithmetic, masking for variable lengths and
// copies. Nothing in this file allocates: the caller passes every buffer (sizes: layer_sizes).
#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <utility>

#include <Eigen/Core>

#include "cpu_util.h"
#include "rnnkit/blas.h"
#include "rnnkit/layer.h"
#include "rnnkit/packed_gemm.h"
#include "rnnkit/team.h"

namespace rnnkit {
namespace {

using cpu::Vec;
using cpu::ConstVec;
using cpu::copy_n;
using cpu::zero_n;

// sum_r rows[r, :] added into out[:] (rows is [R, W] with leading dimension ld).
template <typename S>
void add_column_sums(const S* rows, index_t R, index_t W, index_t ld, S* out) {
  Vec<S> acc(out, W);
  for (index_t r = 0; r < R; ++r) acc += ConstVec<S>(rows + r * ld, W);
}

// The accessor of cells.h for one batch row on the CPU. Pointers that a cell does not use are
// null; the members below are only instantiated for the cells that call them.
template <typename S>
struct CpuRow {
  using Scalar = S;
  index_t H = 0;
  index_t GH = 0;
  index_t cache_slots = 0;
  // forward
  S* g = nullptr;          // gates row [GH]
  S* hg = nullptr;         // hgates row [GH]
  const S* bsum = nullptr;  // [GH]
  const S* bih = nullptr;   // [GH]
  const S* bhh = nullptr;   // [GH]
  S* hp = nullptr;          // h_{t-1} [H] (only cells with P == H read it)
  S* cp = nullptr;          // c_{t-1} [H]
  S* hn = nullptr;          // h_t (unprojected) [H]
  S* cn = nullptr;          // c_t [H]
  S* cache_row = nullptr;   // [cache_width]
  S* tmp_row = nullptr;     // [tmp_width]
  const S* const* lnp = nullptr;
  // backward
  S* dh_row = nullptr;   // [H]
  S* dc_row = nullptr;   // [H], in/out (dc_prev aliases dc)
  S* dg = nullptr;       // [GH]
  S* dhg = nullptr;      // [GH]
  S* dhp = nullptr;      // [H]
  S* const* dlnp = nullptr;
  S* dbih = nullptr;     // [GH] accumulated
  S* dbhh = nullptr;     // [GH] accumulated

  Vec<S> gates(int k) const { return Vec<S>(g + k * H, H); }
  Vec<S> gates_row() const { return Vec<S>(g, GH); }
  Vec<S> hgates(int k) const { return Vec<S>(hg + k * H, H); }
  Vec<S> hgates_row() const { return Vec<S>(hg, GH); }
  ConstVec<S> bias(int k) const { return ConstVec<S>(bsum + k * H, H); }
  ConstVec<S> b_ih(int k) const { return ConstVec<S>(bih + k * H, H); }
  ConstVec<S> b_hh(int k) const { return ConstVec<S>(bhh + k * H, H); }
  Vec<S> h_prev() const { return Vec<S>(hp, H); }
  Vec<S> c_prev() const { return Vec<S>(cp, H); }
  Vec<S> h() const { return Vec<S>(hn, H); }
  Vec<S> c() const { return Vec<S>(cn, H); }
  Vec<S> cache(int s) const { return Vec<S>(cache_row + s * H, H); }
  Vec<S> cache_rows(int s, int count) const { return Vec<S>(cache_row + s * H, count * H); }
  S& stat(int s) const { return cache_row[cache_slots * H + s]; }
  Vec<S> tmp(int s) const { return Vec<S>(tmp_row + s * H, H); }
  ConstVec<S> ln(int p, int k) const { return ConstVec<S>(lnp[p] + k * H, H); }
  ConstVec<S> ln_row(int p) const { return ConstVec<S>(lnp[p], GH); }
  Vec<S> dh() const { return Vec<S>(dh_row, H); }
  Vec<S> dc() const { return Vec<S>(dc_row, H); }
  Vec<S> dc_prev() const { return Vec<S>(dc_row, H); }
  Vec<S> dgates(int k) const { return Vec<S>(dg + k * H, H); }
  Vec<S> dgates_row() const { return Vec<S>(dg, GH); }
  Vec<S> dhgates(int k) const { return Vec<S>(dhg + k * H, H); }
  Vec<S> dhgates_row() const { return Vec<S>(dhg, GH); }
  Vec<S> dh_prev() const { return Vec<S>(dhp, H); }
  Vec<S> dln(int p, int k) const { return Vec<S>(dlnp[p] + k * H, H); }
  Vec<S> dln_row(int p) const { return Vec<S>(dlnp[p], GH); }
  Vec<S> db_ih_row() const { return Vec<S>(dbih, GH); }
  Vec<S> db_hh_row() const { return Vec<S>(dbhh, GH); }

  template <typename D>
  static S mean(const Eigen::ArrayBase<D>& v) {
    return ordered_sum(v) / static_cast<S>(v.size());
  }
};

template <typename Cell>
constexpr CellInfo info_of() {
  CellInfo i;
  i.gates = Cell::kGates;
  i.has_cell_state = Cell::kHasCellState;
  i.separate_recurrent = Cell::kSeparateRecurrent;
  i.two_stage = Cell::kTwoStage;
  i.cache_slots = Cell::kCacheSlots;
  i.stats = Cell::kStats;
  i.tmp_slots = Cell::kTmpSlots;
  i.ln_params = Cell::kLnParams;
  i.cell_bias_grads = Cell::kCellBiasGrads;
  return i;
}

// Where the states of step t live. Training keeps all: slot t+1 holds the state after time t for
// a forward layer, slot t the state after time t for a reverse one (so the state *before* t is
// always the other neighbour). Inference alternates two slots by processing step.
struct Slots {
  index_t T;
  bool reverse;
  bool training;
  index_t prev(index_t t) const {
    if (training) return reverse ? t + 1 : t;
    return step(t) % 2;
  }
  index_t cur(index_t t) const {
    if (training) return reverse ? t : t + 1;
    return (step(t) + 1) % 2;
  }
  index_t first() const { return training ? (reverse ? T : 0) : 0; }
  index_t last() const { return cur(reverse ? 0 : T - 1); }
  index_t step(index_t t) const { return reverse ? T - 1 - t : t; }
};

// The right-hand matrix B [K, cols] of a per-step GEMM C = A B: packed once per call for
// packed_gemm when this CPU has the kernels (`packed` non-null), else multiplied by BLAS from
// its source. Column ranges given to multiply() start at multiples of align().
template <typename S>
struct StepOperand {
  const S* src = nullptr;  // B, or B^T if transposed, row-major with leading dimension ld
  index_t ld = 0;
  bool transposed = false;
  index_t K = 0, cols = 0;
  S* packed = nullptr;
  // Deterministic mode, unpacked: a thread's columns are multiplied in blocks of kBlasColumns
  // whose boundaries do not depend on the team size (see TeamContext::gemm_blocks). The packed
  // kernel computes every element the same way whatever the column range.
  bool fixed_blocks = false;

  static constexpr index_t kBlasColumns = 64;
  index_t align() const {
    if (packed) return packed_panel_width<S>();
    return fixed_blocks ? kBlasColumns : 16;
  }
  // Each thread packs its own panels; the caller barriers before the first multiply.
  void pack(const TeamContext& tc) const {
    if (!packed) return;
    const auto [c0, c1] = tc.split(cols, align());
    pack_b<S>(src, ld, transposed, K, cols, c0, c1, packed);
  }
  // C[:, c0:c1] = beta C[:, c0:c1] + A[M, K] B[:, c0:c1]
  void multiply(index_t M, index_t c0, index_t c1, const S* A, index_t lda, S beta, S* C, index_t ldc) const {
    if (c1 <= c0) return;
    if (packed) {
      packed_gemm<S>(M, K, cols, c0, c1, A, lda, packed, beta, C, ldc);
    } else {
      const index_t block = fixed_blocks ? kBlasColumns : c1 - c0;
      for (index_t b0 = c0; b0 < c1; b0 += block) {
        const index_t b1 = std::min(c1, b0 + block);
        gemm(Trans::kNo, transposed ? Trans::kYes : Trans::kNo, M, b1 - b0, K, S(1), A, lda,
             transposed ? src + b0 * ld : src + b0, ld, beta, C + b0, ldc);
      }
    }
  }
};

template <typename Cell, typename S>
void forward_loop(const TeamContext& tc, const LayerDims& d, const LayerWeights<S>& w, const S* x,
                  const S* h0, const S* c0, const index_t* lengths, bool reverse, bool training,
                  S* y, index_t y_ld, S* h_n, S* c_n, const LayerState<S>& st,
                  const ForwardScratch<S>& fs) {
  const index_t T = d.T, N = d.N, C = d.C, H = d.H, P = d.P;
  const index_t GH = Cell::kGates * H;
  const index_t G1 = Cell::kTwoStage ? Cell::kStage1Gates * H : GH;  // columns of the step GEMM
  const index_t CW = Cell::kCacheSlots * H + Cell::kStats;
  const index_t TW = Cell::kTmpSlots * H;
  const bool project = w.w_hr != nullptr;
  const Slots slots{T, reverse, training};
  // This thread's share: rows of the hoisted GEMM and of the pointwise work, columns of the
  // per-step GEMMs (multiples of 16 floats keep the BLAS kernels on full vectors).
  // The per-step products: h_{t-1} W_hh^T (the step GEMM's G1 columns), (r * h_{t-1}) W_hn^T for
  // the two-stage GRU, h_full W_hr^T for a projection.
  const StepOperand<S> rec{w.w_hh, P, true, P, G1, fs.packed_rec, tc.deterministic()};
  const StepOperand<S> stage2{w.w_hh + G1 * P, P, true, P, GH - G1, fs.packed_stage2, tc.deterministic()};
  const StepOperand<S> proj{w.w_hr, H, true, H, P, fs.packed_proj, tc.deterministic()};
  const auto [n0, n1] = tc.split(N);
  const auto [g0, g1] = tc.split(G1, rec.align());
  const auto [k0, k1] = tc.split(GH - G1, stage2.align());  // two-stage: the candidate gate's columns
  const auto [p0, p1] = tc.split(P, proj.align());          // projection output columns
  rec.pack(tc);
  if (Cell::kTwoStage) stage2.pack(tc);
  if (project) proj.pack(tc);

  // Input projection for every step at once; biases are added in the pointwise step.
  tc.gemm_blocks(T * N, 1, kDeterministicRows, [&](index_t r0, index_t r1) {
    gemm(Trans::kNo, Trans::kYes, r1 - r0, GH, C, S(1), x + r0 * C, C, w.w_ih, C, S(0),
         st.gates + r0 * GH, GH);
  });

  S* bsum = fs.bias;
  S* bih = fs.bias + GH;
  S* bhh = fs.bias + 2 * GH;
  auto h_slot = [&](index_t s) { return st.h_seq + s * N * P; };
  auto c_slot = [&](index_t s) { return st.c_seq + s * N * H; };
  if (tc.tid() == 0) {
    for (index_t j = 0; j < GH; ++j) {
      bih[j] = w.b_ih ? w.b_ih[j] : S(0);
      bhh[j] = w.b_hh ? w.b_hh[j] : S(0);
      bsum[j] = bih[j] + bhh[j];
    }
    if (h0) copy_n(h_slot(slots.first()), h0, N * P); else zero_n(h_slot(slots.first()), N * P);
    if constexpr (Cell::kHasCellState) {
      if (c0) copy_n(c_slot(slots.first()), c0, N * H); else zero_n(c_slot(slots.first()), N * H);
    }
  }
  tc.barrier();

  CpuRow<S> row;
  row.H = H;
  row.GH = GH;
  row.cache_slots = Cell::kCacheSlots;
  row.bsum = bsum;
  row.bih = bih;
  row.bhh = bhh;
  row.lnp = w.ln;

  for (index_t s = 0; s < T; ++s) {
    const index_t t = reverse ? T - 1 - s : s;
    S* hp = h_slot(slots.prev(t));
    S* hc = h_slot(slots.cur(t));
    S* cp = Cell::kHasCellState ? c_slot(slots.prev(t)) : nullptr;
    S* cc = Cell::kHasCellState ? c_slot(slots.cur(t)) : nullptr;
    S* g = st.gates + t * N * GH;
    S* cache_t = st.cache + (training ? t * N * CW : 0);
    S* hfull_t = project ? st.h_full + (training ? t * N * H : 0) : nullptr;
    auto masked = [&](index_t n) { return lengths != nullptr && t >= lengths[n]; };

    // h_{t-1} W_hh^T, this thread's columns.
    if constexpr (Cell::kSeparateRecurrent) {
      rec.multiply(N, g0, g1, hp, P, S(0), fs.hgates, GH);
    } else {
      rec.multiply(N, g0, g1, hp, P, S(1), g, GH);
    }
    tc.barrier();

    auto point_row = [&](index_t n) {
      row.g = g + n * GH;
      row.hg = Cell::kSeparateRecurrent ? fs.hgates + n * GH : nullptr;
      row.hp = hp + n * P;
      row.cp = cp ? cp + n * H : nullptr;
      row.hn = project ? hfull_t + n * H : hc + n * P;
      row.cn = cc ? cc + n * H : nullptr;
      row.cache_row = cache_t + n * CW;
      row.tmp_row = fs.tmp + n * TW;
    };
    for (index_t n = n0; n < n1; ++n) {
      if (masked(n)) {
        // Rows that later GEMMs read must hold numbers, not leftovers.
        if (project) zero_n(hfull_t + n * H, H);
        if (Cell::kTwoStage) zero_n(cache_t + n * CW, H);
        continue;
      }
      point_row(n);
      if constexpr (Cell::kTwoStage) {
        Cell::forward_stage1(row);
      } else {
        Cell::forward(row);
      }
    }
    if constexpr (Cell::kTwoStage) {
      // gates(n) += (r * h_{t-1}) W_hn^T, with r * h_{t-1} in cache slot 0.
      tc.barrier();
      stage2.multiply(N, k0, k1, cache_t, CW, S(1), g + G1, GH);
      tc.barrier();
      for (index_t n = n0; n < n1; ++n) {
        if (masked(n)) continue;
        point_row(n);
        Cell::forward_stage2(row);
      }
    }
    if (project) {
      tc.barrier();
      proj.multiply(N, p0, p1, hfull_t, H, S(0), hc, P);
      tc.barrier();
    }
    for (index_t n = n0; n < n1; ++n) {
      S* y_row = y + (t * N + n) * y_ld;
      if (masked(n)) {
        copy_n(hc + n * P, hp + n * P, P);
        if (cc) copy_n(cc + n * H, cp + n * H, H);
        zero_n(y_row, P);
      } else {
        copy_n(y_row, hc + n * P, P);
      }
    }
    tc.barrier();
  }
  if (tc.tid() == 0) {
    copy_n(h_n, h_slot(slots.last()), N * P);
    if constexpr (Cell::kHasCellState) {
      if (c_n) copy_n(c_n, c_slot(slots.last()), N * H);
    }
  }
}

template <typename Cell, typename S>
void backward_loop(const TeamContext& tc, const LayerDims& d, const LayerWeights<S>& w, const S* x,
                   const index_t* lengths, bool reverse, const LayerState<S>& st, const S* dy,
                   index_t dy_ld, const S* dh_n, const S* dc_n, const LayerGrads<S>& grads, S* dx,
                   bool dx_accumulate, S* dh0, S* dc0, const BackwardScratch<S>& bs) {
  const index_t T = d.T, N = d.N, C = d.C, H = d.H, P = d.P;
  const index_t GH = Cell::kGates * H;
  const index_t G1 = Cell::kTwoStage ? Cell::kStage1Gates * H : GH;
  const index_t CW = Cell::kCacheSlots * H + Cell::kStats;
  const index_t TW = Cell::kTmpSlots * H;
  const index_t TN = T * N;
  const bool project = w.w_hr != nullptr;
  const Slots slots{T, reverse, true};
  // dL/d(gates) of every step ends up in the forward's gate buffer: a step's pointwise backward
  // writes it to a one-step staging buffer (the cell still reads that step's gates), and it is
  // copied over the step's gates when they are no longer needed. This saves a [T,N,G*H] buffer
  // (the largest of an LSTM's backward) and consumes the cache: one backward per forward.
  S* const dall = st.gates;
  // The gradient that goes through W_hh: the recurrent pre-activations of separate-recurrent
  // cells, the shared ones otherwise.
  S* drec = Cell::kSeparateRecurrent ? bs.dhgates : dall;
  // The per-step products: d(rec) W_hh (rows of the step GEMM), d(candidate) W_hn for the
  // two-stage GRU, d(h) W_hr for a projection.
  const StepOperand<S> rec{w.w_hh, P, false, G1, P, bs.packed_drec, tc.deterministic()};
  const StepOperand<S> stage2{w.w_hh + G1 * P, P, false, GH - G1, P, bs.packed_dstage2, tc.deterministic()};
  const StepOperand<S> proj{w.w_hr, H, false, P, H, bs.packed_dproj, tc.deterministic()};
  const auto [n0, n1] = tc.split(N);
  const auto [q0, q1] = tc.split(P, rec.align());         // columns of dh_{t-1}
  const auto [h0c, h1c] = tc.split(H, proj.align());      // columns of dh_full
  const auto [s0c, s1c] = tc.split(H, stage2.align());    // columns of the two-stage tmp
  rec.pack(tc);
  if (Cell::kTwoStage) stage2.pack(tc);
  if (project) proj.pack(tc);

  // dh_next: dL/d(state after the step being processed) from later steps; dh_cur adds dy.
  S* dh_next = bs.dh_a;
  S* dh_cur = bs.dh_b;
  if (tc.tid() == 0) {
    if (dh_n) copy_n(dh_next, dh_n, N * P); else zero_n(dh_next, N * P);
    if constexpr (Cell::kHasCellState) {
      if (dc_n) copy_n(bs.dc, dc_n, N * H); else zero_n(bs.dc, N * H);
    }
  }
  // Cells that accumulate parameter gradients row by row (LayerNorm) do it into partial sums of
  // their own, one set per batch row (not per thread), which thread 0 adds up in row order after
  // the loop: the result does not depend on how the rows were shared among the threads.
  if constexpr (Cell::kLnParams > 0) zero_n(bs.partials + n0 * bs.partial_width, (n1 - n0) * bs.partial_width);
  tc.barrier();

  auto h_slot = [&](index_t s) { return st.h_seq + s * N * P; };
  auto c_slot = [&](index_t s) { return st.c_seq + s * N * H; };

  CpuRow<S> row;
  row.H = H;
  row.GH = GH;
  row.cache_slots = Cell::kCacheSlots;
  row.lnp = w.ln;
  S* dln_views[6] = {};
  // Row n's partial sums. Layout: ln params in LnParam order ([GH] x 4, then [H] x 2), then
  // db_ih, db_hh.
  auto point_partials = [&](index_t n) {
    if constexpr (Cell::kLnParams > 0) {
      S* p = bs.partials + n * bs.partial_width;
      for (int k = 0; k < Cell::kLnParams; ++k) {
        dln_views[k] = p;
        p += k < 4 ? GH : H;
      }
      row.dlnp = dln_views;
      row.dbih = p;
      row.dbhh = p + GH;
    }
  };
  // Cells read the biases only in forward; backward works from what forward cached.

  for (index_t s = T - 1; s >= 0; --s) {
    const index_t t = reverse ? T - 1 - s : s;
    auto masked = [&](index_t n) { return lengths != nullptr && t >= lengths[n]; };
    for (index_t n = n0; n < n1; ++n) {
      Vec<S> cur(dh_cur + n * P, P);
      if (dy != nullptr && !masked(n)) {
        cur = ConstVec<S>(dh_next + n * P, P) + ConstVec<S>(dy + (t * N + n) * dy_ld, P);
      } else {
        cur = ConstVec<S>(dh_next + n * P, P);
      }
    }
    // The gradient reaching the cell's h output: through the projection if there is one.
    const S* dh_cell = dh_cur;
    if (project) {
      S* dproj = bs.dh_proj + t * N * P;
      for (index_t n = n0; n < n1; ++n) {
        if (masked(n)) zero_n(dproj + n * P, P); else copy_n(dproj + n * P, dh_cur + n * P, P);
      }
      tc.barrier();
      proj.multiply(N, h0c, h1c, dproj, P, S(0), bs.dh_full, H);
      tc.barrier();
      dh_cell = bs.dh_full;
    }

    const S* hp = h_slot(slots.prev(t));
    const S* hc = h_slot(slots.cur(t));
    const S* cp = Cell::kHasCellState ? c_slot(slots.prev(t)) : nullptr;
    const S* cc = Cell::kHasCellState ? c_slot(slots.cur(t)) : nullptr;
    S* g = st.gates + t * N * GH;
    S* cache_t = st.cache + t * N * CW;
    S* hfull_t = project ? st.h_full + t * N * H : nullptr;
    S* dg = bs.dgates;  // staging: this step's dL/d(gates)
    S* dhg = Cell::kSeparateRecurrent ? bs.dhgates + t * N * GH : nullptr;

    auto point_row = [&](index_t n) {
      row.g = g + n * GH;
      row.hp = const_cast<S*>(hp + n * P);
      row.cp = cp ? const_cast<S*>(cp + n * H) : nullptr;
      row.hn = project ? hfull_t + n * H : const_cast<S*>(hc + n * P);
      row.cn = cc ? const_cast<S*>(cc + n * H) : nullptr;
      row.cache_row = cache_t + n * CW;
      row.tmp_row = bs.tmp + n * TW;
      row.dh_row = const_cast<S*>(dh_cell + n * H);
      row.dc_row = Cell::kHasCellState ? bs.dc + n * H : nullptr;
      row.dg = dg + n * GH;
      row.dhg = dhg ? dhg + n * GH : nullptr;
      row.dhp = dh_next + n * P;
      point_partials(n);
    };
    auto masked_row = [&](index_t n) {
      zero_n(dg + n * GH, GH);
      if (dhg) zero_n(dhg + n * GH, GH);
      copy_n(dh_next + n * P, dh_cur + n * P, P);  // the state was carried: so is its gradient
    };

    if constexpr (Cell::kTwoStage) {
      for (index_t n = n0; n < n1; ++n) {
        if (masked(n)) { masked_row(n); continue; }
        point_row(n);
        Cell::backward_stage2(row);
      }
      tc.barrier();
      // tmp(0) = dL/d(r*h_{t-1}) = dgates(n) W_hn, this thread's columns.
      stage2.multiply(N, s0c, s1c, dg + G1, GH, S(0), bs.tmp, TW);
      tc.barrier();
      for (index_t n = n0; n < n1; ++n) {
        if (masked(n)) continue;
        point_row(n);
        Cell::backward_stage1(row);
      }
    } else {
      for (index_t n = n0; n < n1; ++n) {
        if (masked(n)) { masked_row(n); continue; }
        point_row(n);
        if constexpr (!Cell::kDirectStateGrad) zero_n(dh_next + n * P, P);
        Cell::backward(row);
      }
    }
    // This thread's rows of the step's gates are done with: they become the step's gradients.
    copy_n(dall + (t * N + n0) * GH, dg + n0 * GH, (n1 - n0) * GH);
    tc.barrier();
    // dL/dh_{t-1} = (direct part written by the cell) + d(recurrent pre-activations) W_hh,
    // this thread's columns.
    rec.multiply(N, q0, q1, Cell::kSeparateRecurrent ? drec + t * N * GH : dg, GH, S(1), dh_next, P);
    tc.barrier();
  }
  if (tc.tid() == 0) {
    copy_n(dh0, dh_next, N * P);
    if constexpr (Cell::kHasCellState) {
      if (dc0) copy_n(dc0, bs.dc, N * H);
    }
  }

  // Weight gradients, one GEMM each over all T*N rows; each thread owns a block of output rows
  // (columns for the bias sums), so no two threads write the same element.
  // h_{t-1} for every t, in time order: slots 0..T-1 (forward) or 1..T (reverse).
  const S* h_prev_all = h_slot(reverse ? 1 : 0);
  tc.gemm_blocks(GH, 16, kDeterministicRows, [&](index_t w0, index_t w1) {
    gemm(Trans::kYes, Trans::kNo, w1 - w0, C, TN, S(1), dall + w0, GH, x, C, S(1),
         grads.dw_ih + w0 * C, C);
    if constexpr (Cell::kTwoStage) {
      // Rows of W_hh below G1 multiply h_{t-1}; the candidate gate's rows multiply r * h_{t-1}.
      const index_t a1 = std::min(w1, G1), b0 = std::max(w0, G1);
      if (a1 > w0) {
        gemm(Trans::kYes, Trans::kNo, a1 - w0, P, TN, S(1), dall + w0, GH, h_prev_all, P, S(1),
             grads.dw_hh + w0 * P, P);
      }
      if (w1 > b0) {
        gemm(Trans::kYes, Trans::kNo, w1 - b0, P, TN, S(1), dall + b0, GH, st.cache, CW, S(1),
             grads.dw_hh + b0 * P, P);
      }
    } else {
      gemm(Trans::kYes, Trans::kNo, w1 - w0, P, TN, S(1), drec + w0, GH, h_prev_all, P, S(1),
           grads.dw_hh + w0 * P, P);
    }
    if constexpr (!Cell::kCellBiasGrads) {
      if (grads.db_ih) add_column_sums(dall + w0, TN, w1 - w0, GH, grads.db_ih + w0);
      if (grads.db_hh) add_column_sums(drec + w0, TN, w1 - w0, GH, grads.db_hh + w0);
    }
  });
  if (project) {
    tc.gemm_blocks(P, 16, kDeterministicRows, [&](index_t a0, index_t a1) {
      gemm(Trans::kYes, Trans::kNo, a1 - a0, H, TN, S(1), bs.dh_proj + a0, P, st.h_full, H, S(1),
           grads.dw_hr + a0 * H, H);
    });
  }
  if (dx) {
    tc.gemm_blocks(TN, 1, kDeterministicRows, [&](index_t r0, index_t r1) {
      gemm(Trans::kNo, Trans::kNo, r1 - r0, C, GH, S(1), dall + r0 * GH, GH, w.w_ih, C,
           dx_accumulate ? S(1) : S(0), dx + r0 * C, C);
    });
  }
  if constexpr (Cell::kLnParams > 0) {
    tc.barrier();
    if (tc.tid() == 0) {
      // Sum every row's partials into the gradients, in row order (biases only where they exist).
      for (index_t n = 0; n < N; ++n) {
        const S* p = bs.partials + n * bs.partial_width;
        for (int k = 0; k < Cell::kLnParams; ++k) {
          const index_t len = k < 4 ? GH : H;
          Vec<S>(grads.dln[k], len) += ConstVec<S>(p, len);
          p += len;
        }
        if (grads.db_ih) Vec<S>(grads.db_ih, GH) += ConstVec<S>(p, GH);
        if (grads.db_hh) Vec<S>(grads.db_hh, GH) += ConstVec<S>(p + GH, GH);
      }
    }
  }
}

}  // namespace

CellInfo cell_info(CellKind cell) {
  return dispatch_cell(cell, [](auto c) { return info_of<decltype(c)>(); });
}

void check_layer_dims(const LayerDims& d, index_t gates) {
  if (d.T <= 0) throw_expected("sequence length T", "T >= 1", d.T);
  if (d.N <= 0) throw_expected("batch size N", "N >= 1", d.N);
  if (d.C <= 0) throw_expected("input_size", "input_size >= 1", d.C);
  if (d.H <= 0) throw_expected("hidden_size", "hidden_size >= 1", d.H);
  if (d.P <= 0 || d.P > d.H) throw_expected("state size", concat("in [1, ", d.H, "]"), d.P);
  // Each GEMM dimension (T*N rows, G*H columns, C) must fit a 32-bit BLAS int.
  const index_t rows = checked_mul(d.T, d.N, "T*N");
  const index_t width = checked_mul(gates, d.H, "G*H");
  if (rows > kMaxBlasDim) throw_expected("T*N", concat("at most ", kMaxBlasDim), rows);
  if (width > kMaxBlasDim) throw_expected("gates*hidden_size", concat("at most ", kMaxBlasDim), width);
  if (d.C > kMaxBlasDim) throw_expected("input_size", concat("at most ", kMaxBlasDim), d.C);
}

index_t LayerSizes::forward_kept() const {
  index_t n = 0;
  for (index_t v : {h_seq, c_seq, gates, cache, h_full}) n = checked_add(n, v, "layer state");
  return n;
}

index_t LayerSizes::forward_scratch() const {
  index_t n = 0;
  for (index_t v : {bias, hgates, tmp, packed_rec, packed_stage2, packed_proj}) n = checked_add(n, v, "forward scratch");
  return n;
}

index_t LayerSizes::backward_scratch() const {
  index_t n = 0;
  for (index_t v : {dgates, dhgates, dh, dh, dc, dh_full, dh_proj, tmp, partials, packed_drec,
                    packed_dstage2, packed_dproj}) {
    n = checked_add(n, v, "backward scratch");
  }
  return n;
}

// Packing W costs about one step's worth of reading W: it pays from a few steps on. Shorter
// calls (streaming, T = 1) multiply by the weights as they are.
constexpr index_t kMinStepsToPack = 8;

template <typename S>
index_t packed_or_zero(index_t K, index_t cols) {
  return packed_gemm_available<S>() ? packed_size<S>(K, cols) : 0;
}

LayerSizes layer_sizes(CellKind cell, const LayerDims& d, bool training, int elem_bytes) {
  const CellInfo ci = cell_info(cell);
  const bool project = d.P != d.H;
  LayerSizes s;
  s.gate_width = checked_mul(ci.gates, d.H, "gate width");
  s.cache_width = checked_add(checked_mul(ci.cache_slots, d.H, "cache width"), ci.stats, "cache width");
  s.tmp_width = checked_mul(ci.tmp_slots, d.H, "scratch width");
  const index_t TN = checked_mul(d.T, d.N, "T*N");
  const index_t NP = checked_mul(d.N, d.P, "state");
  const index_t NH = checked_mul(d.N, d.H, "cell state");
  const index_t slots = training ? checked_add(d.T, 1, "T+1") : 2;
  s.h_seq = checked_mul(slots, NP, "state sequence");
  s.c_seq = ci.has_cell_state ? checked_mul(slots, NH, "cell state sequence") : 0;
  s.gates = checked_mul(TN, s.gate_width, "gate buffer");
  s.cache = checked_mul(training ? TN : d.N, s.cache_width, "cell cache");
  s.h_full = project ? checked_mul(training ? TN : d.N, d.H, "projection input") : 0;
  s.bias = checked_mul(3, s.gate_width, "biases");
  s.hgates = ci.separate_recurrent ? checked_mul(d.N, s.gate_width, "recurrent gates") : 0;
  s.tmp = checked_mul(d.N, s.tmp_width, "scratch");
  s.dgates = checked_mul(d.N, s.gate_width, "gate gradients");  // one step, staged (see backward)
  s.dhgates = ci.separate_recurrent ? s.gates : 0;
  s.dh = NP;
  s.dc = ci.has_cell_state ? NH : 0;
  s.dh_full = project ? NH : 0;
  s.dh_proj = project ? checked_mul(TN, d.P, "projection gradient") : 0;
  if (ci.ln_params > 0) {
    s.partial_width = 4 * s.gate_width + (ci.ln_params > 4 ? 2 * d.H : 0) + 2 * s.gate_width;
    s.partials = checked_mul(d.N, s.partial_width, "gradient partial sums");
  }
  // Packed copies of the per-step GEMMs' weights (packed_gemm.h), when the CPU has the kernels.
  auto packed = d.T < kMinStepsToPack ? +[](index_t, index_t) -> index_t { return 0; }
                : elem_bytes == 8 ? &packed_or_zero<double> : &packed_or_zero<float>;
  const index_t G1 = ci.two_stage ? 2 * d.H : s.gate_width;
  s.packed_rec = packed(d.P, G1);
  s.packed_drec = packed(G1, d.P);
  if (ci.two_stage) {
    s.packed_stage2 = packed(d.P, s.gate_width - G1);
    s.packed_dstage2 = packed(s.gate_width - G1, d.P);
  }
  if (project) {
    s.packed_proj = packed(d.H, d.P);
    s.packed_dproj = packed(d.P, d.H);
  }
  return s;
}

// Points each (view, size) at consecutive parts of `p` (null for size 0); returns the end.
template <typename S>
S* carve_views(S* p, std::initializer_list<std::pair<S**, index_t>> views) {
  for (const auto& [view, n] : views) {
    *view = n ? p : nullptr;
    p += n;
  }
  return p;
}

template <typename S>
S* carve(const LayerSizes& sz, S* p, LayerState<S>* st) {
  return carve_views(p, {{&st->h_seq, sz.h_seq}, {&st->c_seq, sz.c_seq}, {&st->gates, sz.gates},
                         {&st->cache, sz.cache}, {&st->h_full, sz.h_full}});
}

template <typename S>
S* carve(const LayerSizes& sz, S* p, ForwardScratch<S>* fs) {
  return carve_views(p, {{&fs->bias, sz.bias}, {&fs->hgates, sz.hgates}, {&fs->tmp, sz.tmp},
                         {&fs->packed_rec, sz.packed_rec}, {&fs->packed_stage2, sz.packed_stage2},
                         {&fs->packed_proj, sz.packed_proj}});
}

template <typename S>
S* carve(const LayerSizes& sz, S* p, BackwardScratch<S>* bs) {
  bs->partial_width = sz.partial_width;
  return carve_views(p, {{&bs->dgates, sz.dgates}, {&bs->dhgates, sz.dhgates}, {&bs->dh_a, sz.dh},
                         {&bs->dh_b, sz.dh}, {&bs->dc, sz.dc}, {&bs->dh_full, sz.dh_full},
                         {&bs->dh_proj, sz.dh_proj}, {&bs->tmp, sz.tmp}, {&bs->partials, sz.partials},
                         {&bs->packed_drec, sz.packed_drec}, {&bs->packed_dstage2, sz.packed_dstage2},
                         {&bs->packed_dproj, sz.packed_dproj}});
}

template <typename S>
void layer_forward(const TeamContext& tc, CellKind cell, const LayerDims& d, const LayerWeights<S>& w,
                   const S* x, const S* h0, const S* c0, const index_t* lengths, bool reverse,
                   bool training, S* y, index_t y_ld, S* h_n, S* c_n, const LayerState<S>& state,
                   const ForwardScratch<S>& scratch) {
  dispatch_cell(cell, [&](auto c) {
    forward_loop<decltype(c), S>(tc, d, w, x, h0, c0, lengths, reverse, training, y, y_ld, h_n, c_n,
                                 state, scratch);
  });
}

template <typename S>
void layer_backward(const TeamContext& tc, CellKind cell, const LayerDims& d, const LayerWeights<S>& w,
                    const S* x, const index_t* lengths, bool reverse, const LayerState<S>& state,
                    const S* dy, index_t dy_ld, const S* dh_n, const S* dc_n, const LayerGrads<S>& grads,
                    S* dx, bool dx_accumulate, S* dh0, S* dc0, const BackwardScratch<S>& scratch) {
  dispatch_cell(cell, [&](auto c) {
    backward_loop<decltype(c), S>(tc, d, w, x, lengths, reverse, state, dy, dy_ld, dh_n, dc_n, grads,
                                  dx, dx_accumulate, dh0, dc0, scratch);
  });
}

#define RNNKIT_INSTANTIATE_LAYER(S)                                                              \
  template S* carve<S>(const LayerSizes&, S*, LayerState<S>*);                                   \
  template S* carve<S>(const LayerSizes&, S*, ForwardScratch<S>*);                               \
  template S* carve<S>(const LayerSizes&, S*, BackwardScratch<S>*);                              \
  template void layer_forward<S>(const TeamContext&, CellKind, const LayerDims&,                \
                                 const LayerWeights<S>&, const S*, const S*, const S*,           \
                                 const index_t*, bool, bool, S*, index_t, S*, S*,                \
                                 const LayerState<S>&, const ForwardScratch<S>&);                \
  template void layer_backward<S>(const TeamContext&, CellKind, const LayerDims&,               \
                                  const LayerWeights<S>&, const S*, const index_t*, bool,        \
                                  const LayerState<S>&, const S*, index_t, const S*, const S*,   \
                                  const LayerGrads<S>&, S*, bool, S*, S*, const BackwardScratch<S>&);
RNNKIT_INSTANTIATE_LAYER(float)
RNNKIT_INSTANTIATE_LAYER(double)
#undef RNNKIT_INSTANTIATE_LAYER

}  // namespace rnnkit
