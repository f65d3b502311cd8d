// What the CPU's forward and BPTT loops (layer_forward.cpp, layer_backward.cpp) share: the
// accessor through which a cell sees one batch row, where each step's states live, the per-step
// GEMM operands, and the plan every thread builds once at the start of a call.
#pragma once

// GCC 12 reports Eigen's AVX-512 exp/log1p packets (the general cells' Elu, Softplus) as
// -Wuninitialized: their intrinsics start from _mm512_undefined_*() (GCC bug 105593, fixed in
// 12.3). The diagnostic is placed in the intrinsic headers, so it is silenced for the headers' text
// only (the loops include this header first): the loops' own code keeps the warning.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <algorithm>
#include <tuple>
#include <utility>

#include <Eigen/Core>

#include "cpu/bf16_gemm.h"
#include "cpu/blas.h"
#include "cpu/layer.h"
#include "cpu/packed_gemm.h"
#include "cpu/team.h"
#include "cpu/util.h"
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace rnnkit {
namespace cpu {

// The accessor of cells.h for one batch row on the CPU: every value is an Eigen map of H (or a
// whole row of G*H) contiguous elements. The loop points the fields at row n before calling the
// cell; a field a cell does not use stays null, and its accessor is never instantiated.
template <typename S>
struct CpuRow {
  using Scalar = S;
  index_t H = 0;
  index_t GH = 0;
  index_t saved_slots = 0;
  // forward (backward reads them again, as forward left them)
  S* gates_ = nullptr;        // [GH]
  S* hgates_ = nullptr;       // [GH]
  const S* bias_ = nullptr;   // [GH] b_ih + b_hh
  const S* b_ih_ = nullptr;   // [GH]
  const S* b_hh_ = nullptr;   // [GH]
  S* h_prev_ = nullptr;       // [H] h_{t-1} (only cells with P == H read it)
  S* c_prev_ = nullptr;       // [H]
  S* h_ = nullptr;            // [H] h_t (unprojected)
  S* c_ = nullptr;            // [H]
  S* saved_ = nullptr;        // [saved_width]
  S* tmp_ = nullptr;          // [tmp_width]
  const S* const* ln_ = nullptr;
  const CellOptions* options_ = nullptr;
  const S* peep_ = nullptr;   // [3H]
  const S* rec_ = nullptr;    // [H] IndRNN's u
  // backward
  S* dh_ = nullptr;       // [H]
  S* dc_ = nullptr;       // [H] in: dL/dc_t, out: dL/dc_{t-1} (dc_prev aliases dc)
  S* dgates_ = nullptr;   // [GH]
  S* dhgates_ = nullptr;  // [GH]
  S* dh_prev_ = nullptr;  // [H]
  S* const* dln_ = nullptr;
  S* db_ih_ = nullptr;    // [GH] accumulated
  S* db_hh_ = nullptr;    // [GH] accumulated
  S* dpeep_ = nullptr;    // [3H] accumulated
  S* drec_ = nullptr;     // [H] accumulated

  Vec<S> gates(int k) const { return Vec<S>(gates_ + k * H, H); }
  Vec<S> gates_row() const { return Vec<S>(gates_, GH); }
  Vec<S> hgates(int k) const { return Vec<S>(hgates_ + k * H, H); }
  Vec<S> hgates_row() const { return Vec<S>(hgates_, GH); }
  ConstVec<S> bias(int k) const { return ConstVec<S>(bias_ + k * H, H); }
  ConstVec<S> b_ih(int k) const { return ConstVec<S>(b_ih_ + k * H, H); }
  ConstVec<S> b_hh(int k) const { return ConstVec<S>(b_hh_ + k * H, H); }
  Vec<S> h_prev() const { return Vec<S>(h_prev_, H); }
  Vec<S> c_prev() const { return Vec<S>(c_prev_, H); }
  Vec<S> h() const { return Vec<S>(h_, H); }
  Vec<S> c() const { return Vec<S>(c_, H); }
  Vec<S> saved(int s) const { return Vec<S>(saved_ + s * H, H); }
  Vec<S> saved_rows(int s, int count) const { return Vec<S>(saved_ + s * H, count * H); }
  S& stat(int s) const { return saved_[saved_slots * H + s]; }
  Vec<S> tmp(int s) const { return Vec<S>(tmp_ + s * H, H); }
  ConstVec<S> ln(int p, int k) const { return ConstVec<S>(ln_[p] + k * H, H); }
  ConstVec<S> ln_row(int p) const { return ConstVec<S>(ln_[p], GH); }
  Vec<S> dh() const { return Vec<S>(dh_, H); }
  Vec<S> dc() const { return Vec<S>(dc_, H); }
  Vec<S> dc_prev() const { return Vec<S>(dc_, H); }
  Vec<S> dgates(int k) const { return Vec<S>(dgates_ + k * H, H); }
  Vec<S> dgates_row() const { return Vec<S>(dgates_, GH); }
  Vec<S> dhgates(int k) const { return Vec<S>(dhgates_ + k * H, H); }
  Vec<S> dhgates_row() const { return Vec<S>(dhgates_, GH); }
  Vec<S> dh_prev() const { return Vec<S>(dh_prev_, H); }
  Vec<S> dln(int p, int k) const { return Vec<S>(dln_[p] + k * H, H); }
  Vec<S> dln_row(int p) const { return Vec<S>(dln_[p], GH); }
  Vec<S> db_ih_row() const { return Vec<S>(db_ih_, GH); }
  Vec<S> db_hh_row() const { return Vec<S>(db_hh_, GH); }
  const CellOptions& options() const { return *options_; }
  ConstVec<S> peep(int k) const { return ConstVec<S>(peep_ + k * H, H); }
  Vec<S> dpeep(int k) const { return Vec<S>(dpeep_ + k * H, H); }
  ConstVec<S> rec() const { return ConstVec<S>(rec_, H); }
  Vec<S> drec() const { return Vec<S>(drec_, H); }

  template <typename D>
  static S mean(const Eigen::ArrayBase<D>& v) {
    return ordered_sum(v) / static_cast<S>(v.size());
  }
};

// Rows n of a state [N, width] whose sequence has length 0 (lengths may be null: none), set to
// 0: such a sequence ends in zeros (layer.h), and backward drops the gradient reaching its end.
template <typename S>
void zero_empty_rows(const index_t* lengths, index_t N, index_t width, S* state) {
  for (index_t n = 0; lengths && n < N; ++n) {
    if (lengths[n] == 0) zero_n(state + n * width, width);
  }
}

// Where the states of step t live. Training keeps all: slot t+1 holds the state after time t for
// a forward layer, slot t the state after time t for a reverse one (so the state *before* t is
// always the other neighbour). Inference alternates two slots by processing step.
struct StateSlots {
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

// A hoisted GEMM of the loops (gemm() of blas.h with alpha = 1), at the shape's precision.
template <typename S>
void layer_gemm(const LayerShape& s, Trans ta, Trans tb, index_t m, index_t n, index_t k, const S* a, index_t lda,
                const S* b, index_t ldb, S beta, S* c, index_t ldc) {
  gemm_at_precision<S>(s.bf16, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
}

// The right-hand matrix B [K, cols] of a per-step GEMM C = A B: packed once per call for
// packed_gemm when this CPU has the kernels (`packed` non-null), else multiplied by BLAS from
// its source. Column ranges given to multiply() start at multiples of align().
// At bf16 precision (`bf16`) B is always packed, as bf16 pairs in `packed`'s memory (bf16_gemm.h),
// and A is converted per multiply into this thread's workspace (sized in pack()). A streaming
// step computes in float32 (stack_step) unless it runs from a snapshot packed in bf16 once
// (StepWeights), whose panels are `packed`.
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
  bool bf16 = false;
  // This thread's columns [c0, c1), from share().
  index_t c0 = 0, c1 = 0;

  static constexpr index_t kBlasColumns = 64;
  index_t align() const {
    // Multiples of 16 floats keep the BLAS kernels on full vectors.
    if (bf16) return bf16_panel_width();
    if (packed) return packed_panel_width<S>();
    return fixed_blocks ? kBlasColumns : 16;
  }
  // Takes this thread's share of the columns (once per call: the step loop reuses it).
  void share(const TeamContext& tc) { std::tie(c0, c1) = tc.split(cols, align()); }
  // Each thread packs its own panels; the caller barriers before the first multiply.
  // M: the rows of A the multiplies will take (bf16: this thread's workspace for them).
  void pack(index_t M) const {
    if constexpr (std::is_same_v<S, float>) {
      if (bf16) {
        assert(packed != nullptr);
        pack_b_bf16(src, ld, transposed, K, cols, c0, c1, reinterpret_cast<bf16_t*>(packed));
        bf16_a_workspace(checked_mul(bf16_padded_rows(M), bf16_row_length(K), "bf16 step rows"));
        return;
      }
    }
    (void)M;
    if (packed) pack_b<S>(src, ld, transposed, K, cols, c0, c1, packed);
  }
  // C[:, c0:c1] = beta C[:, c0:c1] + A[M, K] B[:, c0:c1], this thread's columns. `descending`:
  // B^T's rows from c1 down, where row_gemm runs (a streaming step's few rows, unpacked).
  void multiply(index_t M, const S* A, index_t lda, S beta, S* C, index_t ldc, bool descending = false) const {
    if (c1 <= c0) return;
    if constexpr (std::is_same_v<S, float>) {
      if (!bf16 && !packed && transposed && M <= kRowGemmMaxM && row_gemm_available()) {
        // Each element is summed the same way whatever the column range: no fixed blocks needed.
        row_gemm(M, K, c0, c1, A, lda, src, ld, beta, C, ldc, descending);
        return;
      }
      if (bf16) {
        // Every thread converts all of A for its own columns: M*K conversions per step against
        // M*K*(c1-c0) multiply-adds, and no barrier.
        packed_gemm_bf16_from_float(M, K, cols, c0, c1, A, lda, reinterpret_cast<const bf16_t*>(packed), beta, C,
                                    ldc);
        return;
      }
    }
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

// The three per-step products of a layer, for one pass. Forward multiplies by W^T: h_{t-1} W_hh^T
// (the G1 columns of the step GEMM), (r * h_{t-1}) W_hn^T for the two-stage GRU, h_full W_hr^T for
// a projection. Backward multiplies by W: d(rec) W_hh, d(candidate) W_hn, d(h) W_hr.
template <typename S>
struct StepGemms {
  StepOperand<S> rec, stage2, proj;

  StepGemms(const TeamContext& tc, const LayerShape& s, const LayerWeights<S>& w, const PackedWeights<S>& packed,
            bool backward) {
    const index_t H = s.d.H, P = s.d.P, G1 = s.G1, G2 = s.GH - s.G1;
    const bool det = tc.deterministic(), b16 = s.bf16;
    if (!backward) {
      rec = {w.w_hh, P, true, P, G1, packed.rec, det, b16};
      stage2 = {w.w_hh + G1 * P, P, true, P, G2, packed.stage2, det, b16};
      proj = {w.w_hr, H, true, H, P, packed.proj, det, b16};
    } else {
      rec = {w.w_hh, P, false, G1, P, packed.rec, det, b16};
      stage2 = {w.w_hh + G1 * P, P, false, G2, P, packed.stage2, det, b16};
      proj = {w.w_hr, H, false, P, H, packed.proj, det, b16};
    }
    rec.share(tc);
    stage2.share(tc);
    proj.share(tc);
  }
  // Every thread packs its panels of the operands the call uses; the caller barriers after.
  // A step snapshot's operands are packed already.
  void pack(const LayerShape& s, bool prepacked) const {
    if (prepacked) return;
    if (s.cell.recurrent_gemm) rec.pack(s.d.N);
    if (s.cell.two_stage) stage2.pack(s.d.N);
    if (s.project) proj.pack(s.d.N);
  }
};

// The regularisers' row helpers below are called once per row and step, and kept out of line: inlined,
// they were copied into every cell's loops (~250 KB of the compiled core across 15 cells x 2 dtypes
// x 2 passes) for no measurable speed.
#define RNNKIT_ROW_HELPER __attribute__((noinline))

// Zoneout's share of the previous state in unit i (the stream's element index): 1 where the mask
// keeps h_{t-1} (u < p), else 0; or p itself, the expectation. The new state is
// keep * prev + (1 - keep) * new, and dL/dprev gets keep * dL/dstate, dL/dnew the rest.
template <typename S>
struct ZoneoutDraw {
  double p;
  bool masks;
  UniformStream u;
  std::uint64_t below;  // the draws below p keep h_{t-1}
  ZoneoutDraw(double p_, bool masks_, std::uint64_t seed, index_t stream)
      : p(p_), masks(masks_), u(seed, stream), below(UniformStream::threshold(p_)) {}
  S keep(index_t i) const { return masks ? (u.below(i, below) ? S(1) : S(0)) : S(p); }
  // out[j] = the mix of prev[j] and fresh[j] (element index base + j); out may alias neither.
  // With masks (a training forward: LayerBuffers keeps the draws) the draws also go to kept[j],
  // for backward.
  RNNKIT_ROW_HELPER void mix(S* out, const S* prev, const S* fresh, index_t width, index_t base,
                             unsigned char* kept) const {
    if (!masks) {
      for (index_t j = 0; j < width; ++j) out[j] = S(p) * prev[j] + S(1 - p) * fresh[j];
      return;
    }
    assert(kept != nullptr);
    for (index_t j = 0; j < width; ++j) {
      const bool k = u.below(base + j, below);
      kept[j] = k ? 1 : 0;
      out[j] = k ? prev[j] : fresh[j];
    }
  }
  // g[j] (dL/dstate) split: carried[j] = keep * g[j] (to the previous state), g[j] the rest. With
  // masks the draws are the forward's, read from kept[j] (drawing again would cost as much as the
  // forward's draws: a 64-bit hash per element).
  RNNKIT_ROW_HELPER void split(S* g, S* carried, index_t width, const unsigned char* kept) const {
    if (!masks) {
      for (index_t j = 0; j < width; ++j) {
        carried[j] = S(p) * g[j];
        g[j] = S(1 - p) * g[j];
      }
      return;
    }
    assert(kept != nullptr);
    for (index_t j = 0; j < width; ++j) {
      const bool k = kept[j] != 0;
      carried[j] = k ? g[j] : S(0);
      g[j] = k ? S(0) : g[j];
    }
  }
};

// What a cell's loops need of zoneout and recurrent dropout for one layer-direction (LayerShape;
// the call's dropout seed and group pick the streams, stack.h), the forward's and the backward's alike.
template <typename Cell, typename S>
struct LoopRegularisers {
  bool zone, zone_c, rdrop;
  ZoneoutDraw<S> zh, zc;
  std::uint64_t seed;
  index_t group;

  LoopRegularisers(const LayerShape& s, std::uint64_t seed_, index_t group_)
      : zone(s.zoneout > 0.0), zone_c(Cell::kHasCellState && s.zoneout_cell > 0.0),
        rdrop(has_recurrent_gemm<Cell>() && s.recurrent_dropout > 0.0),
        zh(s.zoneout, s.zoneout_masks, seed_, kZoneoutStream + group_),
        zc(s.zoneout_cell, s.zoneout_masks, seed_, kZoneoutCellStream + group_), seed(seed_), group(group_) {}
  // Rows [n0, n1) of recurrent dropout's mask [N, P].
  void recurrent_mask(const LayerShape& s, index_t n0, index_t n1, S* mask) const {
    fill_dropout_mask(seed, kRecurrentDropStream + group, s.recurrent_dropout, n0 * s.d.P, n1 * s.d.P, mask);
  }
};

// out[i] = v[i] * mask[i] for i in [begin, end) (out may be v).
template <typename S>
RNNKIT_ROW_HELPER void mask_elements(S* out, const S* v, const S* mask, index_t begin, index_t end) {
  for (index_t i = begin; i < end; ++i) out[i] = v[i] * mask[i];
}

// dst[i] += v[i] (* mask[i], unless mask is null) for i in [begin, end).
template <typename S>
RNNKIT_ROW_HELPER void add_elements(S* dst, const S* v, const S* mask, index_t begin, index_t end) {
  if (mask == nullptr) {
    for (index_t i = begin; i < end; ++i) dst[i] += v[i];
  } else {
    for (index_t i = begin; i < end; ++i) dst[i] += v[i] * mask[i];
  }
}

// A cell's traits and one thread's share of a call, computed once per call: the loops' phases
// read everything from here.
template <typename Cell, typename S>
struct LayerPlan {
  static constexpr bool kHasC = Cell::kHasCellState;
  static constexpr bool kSeparateRecurrent = Cell::kSeparateRecurrent;
  static constexpr bool kTwoStage = Cell::kTwoStage;

  const TeamContext& tc;
  const LayerShape& s;
  index_t T, N, C, H, P, GH, G1, SW /* saved width */, TW /* tmp width */;
  StateSlots slots;
  std::pair<index_t, index_t> rows;  // this thread's batch rows [n0, n1)
  StepGemms<S> gemms;

  LayerPlan(const TeamContext& team, const LayerShape& shape, const LayerWeights<S>& w,
            const PackedWeights<S>& packed, bool reverse, bool backward)
      : tc(team), s(shape), T(shape.d.T), N(shape.d.N), C(shape.d.C), H(shape.d.H), P(shape.d.P),
        GH(shape.GH), G1(shape.G1), SW(shape.saved_width), TW(shape.tmp_width),
        slots{shape.d.T, reverse, shape.training || backward}, rows(team.split(shape.d.N)),
        gemms(team, shape, w, packed, backward) {}

  index_t step_time(index_t s_) const { return slots.reverse ? T - 1 - s_ : s_; }
  static bool padded(const index_t* lengths, index_t t, index_t n) { return lengths != nullptr && t >= lengths[n]; }
};

}  // namespace cpu
}  // namespace rnnkit
