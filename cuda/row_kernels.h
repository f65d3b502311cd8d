// The LayerNorm cells on the device: one block per batch row, the cell of cells.h run once per
// thread through an accessor whose values are the thread's *lanes* of the row, and whose mean() is
// a block-wide reduction. The plain cells need no reduction and run per element (kernels.h).
//
// A block of `threads` threads (a power of two) serves row n. Thread j0 holds K elements of every
// H-wide slice, columns j0, j0 + threads, ..., j0 + (K-1)*threads (those < H); a whole row of G*H
// (gates_row(), saved_rows(), ln_row()) is its K elements of each of the G slices, slice by slice.
// A lane past H reads as 0, is never written and is left out of every mean, so any H works with
// threads*K >= H. Each element of the row is owned by one thread, which alone reads and writes it;
// the only values that cross threads are the reduction's, between barriers. Every thread of the
// block reaches the same barriers: padded rows are skipped block-uniformly.
//
// The LayerNorm parameter and bias gradients are accumulated per batch row (row n's block owns
// partials row n, LayerShape::partial_width's layout), and summed in row order after the loop, as
// on the CPU.
#pragma once

#include <type_traits>

#include "kernels.h"

namespace rnnkit {
namespace cuda {

template <typename X, typename = void>
struct is_lanes : std::false_type {};
template <typename X>
struct is_lanes<X, std::void_t<typename X::IsLanes>> : std::true_type {};

template <typename X, bool = is_lanes<X>::value>
struct lane_width : std::integral_constant<int, 0> {};  // a scalar: any width
template <typename X>
struct lane_width<X, true> : std::integral_constant<int, X::kWidth> {};

// Element e of a lane value, or a scalar itself.
template <typename X>
RNNKIT_DEVICE auto lane_get(const X& x, int e) {
  if constexpr (is_lanes<X>::value) {
    return x.get(e);
  } else {
    return x;
  }
}

// W values held in registers: an intermediate of the cell's math.
template <typename S, int W>
struct Lanes {
  using IsLanes = void;
  using Scalar = S;
  static constexpr int kWidth = W;
  S v[W];

  RNNKIT_DEVICE S get(int e) const { return v[e]; }
  template <typename F>
  RNNKIT_DEVICE Lanes map(F f) const {
    Lanes out;
    for (int e = 0; e < W; ++e) out.v[e] = f(v[e]);
    return out;
  }
};

// Where a thread's lanes are: K per slice of H, `step` (the block's threads) apart from j0.
template <int K>
struct LaneMap {
  index_t H, j0, step;
  RNNKIT_DEVICE index_t col(int e) const { return j0 + (e % K) * step; }
  RNNKIT_DEVICE bool valid(int e) const { return col(e) < H; }
  RNNKIT_DEVICE index_t offset(int e) const { return (e / K) * H + col(e); }
};

// W lanes in memory: e / K selects the slice (of H), e % K the column within the thread's share.
// T is S or const S.
template <typename T, int W, int K>
struct LaneRef {
  using IsLanes = void;
  using Scalar = std::remove_const_t<T>;
  static constexpr int kWidth = W;
  T* base;
  LaneMap<K> m;

  RNNKIT_DEVICE Scalar get(int e) const { return m.valid(e) ? base[m.offset(e)] : Scalar(0); }
  template <typename F>
  RNNKIT_DEVICE Lanes<Scalar, W> map(F f) const {
    Lanes<Scalar, W> out;
    for (int e = 0; e < W; ++e) out.v[e] = f(get(e));
    return out;
  }
  // Every lane of x is read before any is written (x may be this very row).
  template <typename X>
  RNNKIT_DEVICE const LaneRef& operator=(const X& x) const {
    const Lanes<Scalar, W> v = evaluate(x);
    for (int e = 0; e < W; ++e) {
      if (m.valid(e)) base[m.offset(e)] = v.v[e];
    }
    return *this;
  }
  RNNKIT_DEVICE const LaneRef& operator=(const LaneRef& x) const { return operator= <LaneRef>(x); }
  template <typename X>
  RNNKIT_DEVICE const LaneRef& operator+=(const X& x) const {
    const Lanes<Scalar, W> v = evaluate(x);
    for (int e = 0; e < W; ++e) {
      if (m.valid(e)) base[m.offset(e)] += v.v[e];
    }
    return *this;
  }

 private:
  template <typename X>
  RNNKIT_DEVICE static Lanes<Scalar, W> evaluate(const X& x) {
    static_assert(lane_width<X>::value == 0 || lane_width<X>::value == W, "lane values of different widths");
    Lanes<Scalar, W> v;
    for (int e = 0; e < W; ++e) v.v[e] = lane_get(x, e);
    return v;
  }
};

// + - * of lane values with lane values or scalars, element by element (found by ADL from cells.h).
template <typename A, typename B>
struct lane_result {
  using L = std::conditional_t<is_lanes<A>::value, A, B>;
  static_assert(lane_width<A>::value == 0 || lane_width<B>::value == 0 || lane_width<A>::value == lane_width<B>::value,
                "lane values of different widths");
  using type = Lanes<typename L::Scalar, L::kWidth>;
};
#define RNNKIT_LANE_OP(op)                                                                              \
  template <typename A, typename B, typename = std::enable_if_t<is_lanes<A>::value || is_lanes<B>::value>> \
  RNNKIT_DEVICE typename lane_result<A, B>::type operator op(const A& a, const B& b) {                     \
    typename lane_result<A, B>::type out;                                                                \
    for (int e = 0; e < lane_result<A, B>::type::kWidth; ++e) out.v[e] = lane_get(a, e) op lane_get(b, e); \
    return out;                                                                                          \
  }
RNNKIT_LANE_OP(+)
RNNKIT_LANE_OP(-)
RNNKIT_LANE_OP(*)
#undef RNNKIT_LANE_OP

// One scalar per (t, n) (a LayerNorm's 1/std): every thread computes the same value; thread 0
// stores it. Read back only by a later launch (backward), never within the one that writes it.
template <typename S>
struct StatRef {
  S* p;
  bool leader;
  RNNKIT_DEVICE const StatRef& operator=(S v) const {
    if (leader) *p = v;
    return *this;
  }
  RNNKIT_DEVICE operator S() const { return *p; }
};

// The accessor of cells.h for one thread's lanes of batch row n (the CPU's CpuRow, lane by lane).
template <typename S, int G, int K, int kSavedSlots, int kLnParams>
struct DeviceRow {
  using Scalar = S;
  template <int W>
  using Ref = LaneRef<S, W, K>;
  template <int W>
  using CRef = LaneRef<const S, W, K>;

  const Thread* th;
  LaneMap<K> m;
  index_t GH;
  // kSavedSlots: the cell's saved per-unit values before its statistics; kLnParams: its LayerNorm
  // parameters (db_ih's partial sums follow theirs). Template constants: no registers for them.
  S* reduce;  // the block's shared memory: th->block_dim scalars
  S* gates_ = nullptr;
  S* hgates_ = nullptr;
  const S* bias_ = nullptr;  // [3,GH]: b_ih + b_hh, b_ih, b_hh
  const S* h_prev_ = nullptr;
  const S* c_prev_ = nullptr;
  S* h_ = nullptr;
  S* c_ = nullptr;
  S* saved_ = nullptr;
  S* tmp_ = nullptr;
  const S* const* ln_ = nullptr;
  const S* dh_ = nullptr;
  S* dc_ = nullptr;
  S* dgates_ = nullptr;
  S* dhgates_ = nullptr;
  S* dh_prev_ = nullptr;
  S* partials_ = nullptr;  // row n's: the LN parameters in LnParam order, then db_ih, db_hh

  RNNKIT_DEVICE Ref<K> slice(S* p) const { return {p, m}; }
  RNNKIT_DEVICE CRef<K> slice(const S* p) const { return {p, m}; }
  RNNKIT_DEVICE Ref<G * K> row(S* p) const { return {p, m}; }
  RNNKIT_DEVICE CRef<G * K> row(const S* p) const { return {p, m}; }

  RNNKIT_DEVICE Ref<K> gates(int k) const { return slice(gates_ + k * m.H); }
  RNNKIT_DEVICE Ref<G * K> gates_row() const { return row(gates_); }
  RNNKIT_DEVICE Ref<K> hgates(int k) const { return slice(hgates_ + k * m.H); }
  RNNKIT_DEVICE Ref<G * K> hgates_row() const { return row(hgates_); }
  RNNKIT_DEVICE CRef<K> bias(int k) const { return slice(bias_ + k * m.H); }
  RNNKIT_DEVICE CRef<K> b_ih(int k) const { return slice(bias_ + GH + k * m.H); }
  RNNKIT_DEVICE CRef<K> b_hh(int k) const { return slice(bias_ + 2 * GH + k * m.H); }
  RNNKIT_DEVICE CRef<K> h_prev() const { return slice(h_prev_); }
  RNNKIT_DEVICE CRef<K> c_prev() const { return slice(c_prev_); }
  RNNKIT_DEVICE Ref<K> h() const { return slice(h_); }
  RNNKIT_DEVICE Ref<K> c() const { return slice(c_); }
  RNNKIT_DEVICE Ref<K> saved(int s) const { return slice(saved_ + s * m.H); }
  // On the device a run of saved slots is always a whole row's worth (count == G).
  RNNKIT_DEVICE Ref<G * K> saved_rows(int s, int count) const {
    assert(count == G);
    (void)count;
    return row(saved_ + s * m.H);
  }
  RNNKIT_DEVICE StatRef<S> stat(int s) const { return {saved_ + kSavedSlots * m.H + s, th->thread == 0}; }
  RNNKIT_DEVICE Ref<K> tmp(int s) const { return slice(tmp_ + s * m.H); }
  RNNKIT_DEVICE CRef<K> ln(int p, int k) const { return slice(ln_[p] + k * m.H); }
  RNNKIT_DEVICE CRef<G * K> ln_row(int p) const { return row(ln_[p]); }
  RNNKIT_DEVICE CRef<K> dh() const { return slice(dh_); }
  RNNKIT_DEVICE Ref<K> dc() const { return slice(dc_); }
  RNNKIT_DEVICE Ref<K> dc_prev() const { return slice(dc_); }
  RNNKIT_DEVICE Ref<K> dgates(int k) const { return slice(dgates_ + k * m.H); }
  RNNKIT_DEVICE Ref<G * K> dgates_row() const { return row(dgates_); }
  RNNKIT_DEVICE Ref<K> dhgates(int k) const { return slice(dhgates_ + k * m.H); }
  RNNKIT_DEVICE Ref<G * K> dhgates_row() const { return row(dhgates_); }
  RNNKIT_DEVICE Ref<K> dh_prev() const { return slice(dh_prev_); }
  RNNKIT_DEVICE S* partial(int p) const {  // start of LN parameter p's partial sums
    S* q = partials_;
    for (int i = 0; i < p; ++i) q += ln_param_width(i, GH, m.H);
    return q;
  }
  RNNKIT_DEVICE Ref<K> dln(int p, int k) const { return slice(partial(p) + k * m.H); }
  RNNKIT_DEVICE Ref<G * K> dln_row(int p) const { return row(partial(p)); }
  RNNKIT_DEVICE Ref<G * K> db_ih_row() const { return row(partial(kLnParams)); }
  RNNKIT_DEVICE Ref<G * K> db_hh_row() const { return row(partial(kLnParams) + GH); }

  // The mean over the whole row (or slice) x: the valid lanes' sum, then the block's sum of those
  // in a fixed tree order (so a result does not depend on timing), divided by the row's width.
  template <typename X>
  RNNKIT_DEVICE S mean(const X& x) const {
    constexpr int W = X::kWidth;
    S partial_sum = S(0);
    for (int e = 0; e < W; ++e) {
      if (m.valid(e)) partial_sum += lane_get(x, e);
    }
    const index_t tid = th->thread;
    reduce[tid] = partial_sum;
    th->sync();
    for (index_t half = th->block_dim / 2; half > 0; half /= 2) {
      if (tid < half) reduce[tid] += reduce[tid + half];
      th->sync();
    }
    const S total = reduce[0];
    th->sync();  // every thread has read it before the next mean writes
    return total / static_cast<S>((W / K) * m.H);
  }
};

// The threads and lanes per thread for rows of H: the fewest lanes K in {1, 2, 4, 8} that keep the
// block within `max_threads` (kMaxBlockThreads unless a test lowers it: set_row_thread_cap), so
// rows up to 1024 wide take one lane per thread, the case whose registers ptxas keeps without
// spilling (CI checks it); H beyond kMaxRowLanes * kMaxBlockThreads is refused by plan_stack.
constexpr index_t kMaxRowLanes = 8;
struct RowLaunch {
  int lanes = 1;
  int threads = 32;
};
inline RowLaunch row_launch(index_t H, int max_threads) {
  RowLaunch r;
  while (r.lanes < kMaxRowLanes && (H + r.lanes - 1) / r.lanes > max_threads) r.lanes *= 2;
  const index_t need = (H + r.lanes - 1) / r.lanes;
  while (r.threads < need) r.threads *= 2;
  return r;
}

// One step's forward of a LayerNorm cell, one block per batch row (grid-stride over rows): the
// standard path's per-element body `f` gives the fields and the padded-row rule; ln: the LayerNorm
// parameters in LnParam order.
template <typename Cell, typename S, int K>
struct ForwardRows {
  ForwardPointwise<Cell, S, Stage::kWhole> f;
  const S* ln[kMaxLnParams];

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    const LaneMap<K> m{f.H, th.thread, th.block_dim};
    for (index_t n = th.block; n < f.N; n += th.grid_dim) {
      if (is_padded(f.lengths, f.t, n)) {  // the whole block skips the row: no barrier is split
        for (int e = 0; e < K; ++e) {
          if (m.valid(e)) f.element(n, m.col(e));  // its padded-row rule
        }
        continue;
      }
      DeviceRow<S, Cell::kGates, K, Cell::kSavedSlots, Cell::kLnParams> a{&th, m, f.GH, static_cast<S*>(th.shared)};
      a.gates_ = row_of(f.gates, n, f.GH);
      a.hgates_ = row_of(f.hgates, n, f.GH);
      a.bias_ = f.bias;
      a.h_prev_ = row_of(f.h_prev, n, f.P);
      a.c_prev_ = row_of(f.c_prev, n, f.H);
      a.h_ = row_of(f.h_out, n, f.H);
      a.c_ = row_of(f.c_cur, n, f.H);
      a.saved_ = row_of(f.saved, n, f.SW);
      a.tmp_ = row_of(f.tmp, n, f.TW);
      a.ln_ = ln;
      Cell::forward(a);
    }
  }
};

// One step's backward of a LayerNorm cell, one block per batch row: `b` as in ForwardRows;
// partials [N,PW]: each row's parameter and bias gradient sums (accumulated).
template <typename Cell, typename S, int K>
struct BackwardRows {
  BackwardPointwise<Cell, S, Stage::kWhole> b;
  index_t PW;
  S* partials;
  const S* ln[kMaxLnParams];

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    const LaneMap<K> m{b.H, th.thread, th.block_dim};
    for (index_t n = th.block; n < b.N; n += th.grid_dim) {
      const bool pad = is_padded(b.lengths, b.t, n);
      for (int e = 0; e < K; ++e) {
        if (!m.valid(e)) continue;
        if (pad) {
          b.padded_element(n, m.col(e));
        } else {
          b.clear_state_grad(n, m.col(e));
        }
      }
      if (pad) continue;  // block-uniform
      DeviceRow<S, Cell::kGates, K, Cell::kSavedSlots, Cell::kLnParams> a{&th, m, b.GH, static_cast<S*>(th.shared)};
      a.gates_ = row_of(b.gates, n, b.GH);
      a.h_prev_ = row_of(b.h_prev, n, b.P);
      a.c_prev_ = row_of(b.c_prev, n, b.H);
      a.h_ = row_of(b.h, n, b.H);
      a.c_ = const_cast<S*>(row_of(b.c_cur, n, b.H));
      a.saved_ = row_of(b.saved, n, b.SW);
      a.tmp_ = row_of(b.tmp, n, b.TW);
      a.ln_ = ln;
      a.dh_ = row_of(b.dh_cell, n, b.H);
      a.dc_ = row_of(b.dc, n, b.H);
      a.dgates_ = row_of(b.dgates, n, b.GH);
      a.dhgates_ = row_of(b.dhgates, n, b.GH);
      a.dh_prev_ = row_of(b.dh_next, n, b.P);
      a.partials_ = row_of(partials, n, PW);
      Cell::backward(a);
    }
  }
};

}  // namespace cuda
}  // namespace rnnkit
