// The CUDA backend's layer loops and stack (stack.h): the CPU backend's plan (cpu/layer_forward.cpp,
// cpu/layer_backward.cpp, cpu/stack.cpp) with cuBLAS GEMMs and the pointwise kernels of kernels.h,
// all on one stream. The GEMMs are written row-major, as on the CPU, through dev_blas.h's gemm_rm.
#include "stack.h"

#include <atomic>
#include <cstring>

#include "common/stack_cache.h"
#include "bf16.h"
#include "dev_blas.h"
#include "kernels.h"
#include "persistent.h"
#include "row_kernels.h"

namespace rnnkit {
namespace cuda {
namespace {

std::atomic<int> g_persistent_mode{static_cast<int>(PersistentMode::kAuto)};
std::atomic<std::uint64_t> g_persistent_launches{0};
std::atomic<int> g_row_thread_cap{kMaxBlockThreads};

// Launches a LayerNorm cell's row kernel (row_kernels.h) with the lanes per thread H needs;
// fill(body) sets the body's fields.
template <template <typename, typename, int> class Body, typename Cell, typename S, typename Fill>
void launch_rows(Stream stream, int thread_cap, index_t N, index_t H, Fill&& fill) {
  const RowLaunch r = row_launch(H, thread_cap);
  auto go = [&](auto lanes) {
    Body<Cell, S, decltype(lanes)::value> body{};
    fill(body);
    RNNKIT_LAUNCH_BLOCKS(stream, N < kMaxBlocks ? N : kMaxBlocks, r.threads,
                         static_cast<std::size_t>(r.threads) * sizeof(S), body);
  };
  switch (r.lanes) {
    case 1: return go(std::integral_constant<int, 1>{});
    case 2: return go(std::integral_constant<int, 2>{});
    case 4: return go(std::integral_constant<int, 4>{});
    default: return go(std::integral_constant<int, 8>{});
  }
}

template <typename S>
void copy_elems(Stream stream, S* dst, const S* src, index_t n) {
  if (n > 0) copy_on_device(dst, src, static_cast<std::size_t>(n) * sizeof(S), stream);
}
template <typename S>
void zero_elems(Stream stream, S* dst, index_t n) {
  if (n > 0) zero_on_device(dst, static_cast<std::size_t>(n) * sizeof(S), stream);
}

template <typename S>
struct LayerArgs {  // one layer-direction's call (cpu/layer.h's LayerForwardArgs/LayerBackwardArgs)
  Stream stream = nullptr;
  const S* x = nullptr;
  StatePair<const S*> state0;
  const index_t* lengths = nullptr;  // device
  bool reverse = false;
  const CellOptions* options = nullptr;  // the direction's (general cells)
  // zoneout's and recurrent dropout's masks: the call's dropout seed and this group's streams
  std::uint64_t seed = 0;
  index_t group = 0;
  // precision="bfloat16" (bf16.h): the activation slots, and room for the weights' copies
  Bf16Slots bf16;
  bf16_t* weights16 = nullptr;
  S* y = nullptr;
  index_t y_ld = 0;
  StatePair<S*> state_n;
  // backward
  const S* dy = nullptr;
  index_t dy_ld = 0;
  StatePair<const S*> d_state_n;
  S* dx = nullptr;
  bool dx_accumulate = false;
  StatePair<S*> d_state0;
};

// What a layer-direction's loops need of zoneout and recurrent dropout (LayerShape; stack.h's
// streams), for both passes.
template <typename Cell>
struct Regularisers {
  bool zone, zone_c, rdrop;
  ZoneoutWords zh, zc;
  std::uint64_t seed;
  index_t group;

  Regularisers(const LayerShape& s, std::uint64_t seed_, index_t group_)
      : zone(s.zoneout > 0.0), zone_c(Cell::kHasCellState && s.zoneout_cell > 0.0),
        rdrop(has_recurrent_gemm<Cell>() && s.recurrent_dropout > 0.0),
        zh(ZoneoutWords::of(s.zoneout, s.zoneout_masks, seed_, kZoneoutStream + group_)),
        zc(ZoneoutWords::of(s.zoneout_cell, s.zoneout_masks, seed_, kZoneoutCellStream + group_)),
        seed(seed_), group(group_) {}
  // Recurrent dropout's mask [N, P] (before the graphed loop).
  template <typename S>
  void recurrent_mask(Stream stream, const LayerShape& s, S* mask) const {
    if (!rdrop) return;
    const index_t count = s.d.N * s.d.P;
    RNNKIT_LAUNCH(stream, count, (SequenceMask<S>{count, UniformStream(seed, kRecurrentDropStream + group).key,
                                                  UniformStream::threshold(s.recurrent_dropout), s.recurrent_dropout,
                                                  mask}));
  }
};

// The layer's weights rounded to bf16 once per call, into `dst` (null: float32 precision). A
// GEMM reads a copy where it would read the weight (bf16.h's Operand); null copies are not read.
struct RoundedWeights {
  const bf16_t* w_ih = nullptr;
  const bf16_t* w_hh = nullptr;
  const bf16_t* w_hr = nullptr;
};

// Elements of the weights' copies a layer-direction of `cfg` rounds (the widest layer's).
index_t bf16_weight_elems(const StackConfig& cfg, const LayerShape& s) {
  return bf16_aligned(s.GH * cfg.widest_layer_input()) + bf16_aligned(s.GH * s.d.P) + s.d.P * s.d.H;
}
// Elements of one activation slot: the largest operand a GEMM of the loops rounds ([T*N, width]).
index_t bf16_slot_elems(const StackConfig& cfg, const LayerShape& s) {
  index_t width = s.GH;
  for (index_t w : {cfg.widest_layer_input(), s.d.H, s.d.P}) width = w > width ? w : width;
  return checked_mul(s.TN, width, "bf16 activation slot");
}

// The GEMM of a layer call's loops: gemm_at_precision with the call's bf16 slots.
template <typename S>
auto layer_gemm(const LayerArgs<S>& a) {
  return [&a](Stream ls, Op op_a, Op op_b, index_t m, index_t n, index_t k, const Operand<S>& A, const Operand<S>& B,
              S beta, S* c, index_t ldc) { gemm_at_precision<S>(a.bf16, ls, op_a, op_b, m, n, k, A, B, beta, c, ldc); };
}

template <typename Cell, typename S>
RoundedWeights round_weights(Stream stream, const LayerShape& s, const LayerWeights<S>& w, bf16_t* dst) {
  RoundedWeights r;
  if constexpr (std::is_same_v<S, float>) {
    if (!s.bf16) return r;
    r.w_ih = round_rows(stream, w.w_ih, s.GH, s.d.C, s.d.C, dst);
    dst += bf16_aligned(s.GH * s.d.C);
    if constexpr (has_recurrent_gemm<Cell>()) {
      r.w_hh = round_rows(stream, w.w_hh, s.GH, s.d.P, s.d.P, dst);
      dst += bf16_aligned(s.GH * s.d.P);
    }
    if (s.project) r.w_hr = round_rows(stream, w.w_hr, s.d.P, s.d.H, s.d.H, dst);
  } else {
    (void)stream, (void)s, (void)w, (void)dst;
  }
  return r;
}

template <typename Cell, typename S>
void layer_forward(const LayerShape& s, const LayerWeights<S>& w, const LayerBuffers<S>& b, const LayerArgs<S>& a) {
  const index_t T = s.d.T, N = s.d.N, C = s.d.C, H = s.d.H, P = s.d.P, GH = s.GH, G1 = s.G1;
  const index_t SW = s.saved_width, TW = s.tmp_width;
  const Slots slots{T, a.reverse, s.training};
  const Stream st = a.stream;
  // Read once: the graphed loop's record and capture passes must launch the same rows.
  const int row_cap = g_row_thread_cap.load(std::memory_order_relaxed);
  auto h_slot = [&](index_t slot) { return b.h_seq + slot * N * P; };
  auto c_slot = [&](index_t slot) { return b.c_seq + slot * N * H; };

  // Every GEMM at the call's precision (bf16.h): bf16 copies of the weights first.
  const RoundedWeights w16 = round_weights<Cell>(st, s, w, a.weights16);
  const auto mm = layer_gemm(a);

  // gates = x W_ih^T for every step at once; the biases are added in the pointwise kernel.
  mm(st, Op::kN, Op::kT, s.TN, GH, C, {a.x, C}, {w.w_ih, C, w16.w_ih}, S(0), b.gates, GH);
  RNNKIT_LAUNCH(st, GH, (BiasRows<S>{GH, w.b_ih, w.b_hh, b.bias}));
  if (a.state0.h) copy_elems(st, h_slot(slots.first()), a.state0.h, N * P); else zero_elems(st, h_slot(slots.first()), N * P);
  if constexpr (Cell::kHasCellState) {
    if (a.state0.c) copy_elems(st, c_slot(slots.first()), a.state0.c, N * H); else zero_elems(st, c_slot(slots.first()), N * H);
  }

  // Zoneout and recurrent dropout (LayerShape): the cell's new state goes to h_zone/c_zone first
  // and a mix makes the state; the recurrent product reads the state times the recurrent mask.
  const Regularisers<Cell> reg(s, a.seed, a.group);
  const bool zone = reg.zone, zone_c = reg.zone_c, rdrop = reg.rdrop;
  const ZoneoutWords zh = reg.zh, zc = reg.zc;
  reg.recurrent_mask(st, s, b.rec_mask);

  // Small batches: every step in one persistent launch, where the shape and the device allow.
  bool stepped = false;
  if constexpr (persistent_cell<Cell>()) {
    const PersistentPlan pp = persistent_plan<Cell>(s, sizeof(S), device_limits());
    // (Not at bf16: its dot products read the float32 weights kept on chip.)
    if (pp.use && !zone && !zone_c && !rdrop && !s.bf16) {
      PersistentForward<Cell, S> body{T, N, H, GH, SW, pp.units, pp.split, slots, w.w_hh, b.h_seq, b.c_seq,
                                      b.gates, b.hgates, b.saved, {}, {}};
      body.point = {N, H, P, GH, SW, TW, 0, false, nullptr, b.hgates, b.bias, nullptr, nullptr, nullptr, nullptr,
                    nullptr, b.tmp, a.lengths};
      body.out = {N, H, P, 0, a.y_ld, nullptr, nullptr, nullptr, nullptr, a.y, a.lengths};
      stepped = RNNKIT_LAUNCH_PERSISTENT(st, pp.blocks, pp.threads, pp.shared_bytes, body);
      if (stepped) count_persistent_launch();
    }
  }

  // The per-step launches, run as one CUDA graph (graph.h): nothing but launches in here.
  auto steps = [&](Stream ls) {
    for (index_t i = 0; i < T; ++i) {
      const index_t t = slots.step(i);
      S* h_prev = h_slot(slots.prev(t));
      S* h_cur = h_slot(slots.cur(t));
      S* c_prev = Cell::kHasCellState ? c_slot(slots.prev(t)) : nullptr;
      S* c_cur = Cell::kHasCellState ? c_slot(slots.cur(t)) : nullptr;
      S* gates = b.gates + t * N * GH;
      S* saved = b.saved + (s.training ? t * N * SW : 0);
      S* h_full = s.project ? b.h_full + (s.training ? t * N * H : 0) : nullptr;
      S* h_new = zone ? b.h_zone + (s.training ? t * N * P : 0) : h_cur;  // before zoneout's mix
      S* c_new = zone_c ? b.c_zone + (s.training ? t * N * H : 0) : c_cur;
      S* h_out = s.project ? h_full : h_new;
      const S* h_rec = h_prev;  // what the recurrent product reads
      if (rdrop) {
        S* dropped = b.h_drop + t * N * P;
        RNNKIT_LAUNCH(ls, N * P, (MaskRows<S>{N, N, P, P, P, b.rec_mask, h_prev, dropped}));
        h_rec = dropped;
      }

      // h_{t-1} W_hh^T: into the gates, or beside them for cells that keep the recurrent part apart.
      if constexpr (!has_recurrent_gemm<Cell>()) {
        (void)h_rec;  // IndRNN applies u itself; minGRU/minLSTM have no recurrent weight.
      } else if constexpr (Cell::kSeparateRecurrent) {
        mm(ls, Op::kN, Op::kT, N, G1, P, {h_rec, P}, {w.w_hh, P, w16.w_hh}, S(0), b.hgates, GH);
      } else {
        mm(ls, Op::kN, Op::kT, N, G1, P, {h_rec, P}, {w.w_hh, P, w16.w_hh}, S(1), gates, GH);
      }
      auto pointwise = [&](auto stage) {
        ForwardPointwise<Cell, S, decltype(stage)::value> f{N, H, P, GH, SW, TW, t, s.project, gates, b.hgates,
                                                           b.bias, h_prev, c_prev, h_out, c_new, saved, b.tmp,
                                                           a.lengths};
        if constexpr (Cell::kOptions) {
          f.options = CellOptionWords::of(*a.options);
          f.peephole = w.w_peephole;
        }
        if constexpr (Cell::kDiagonalRecurrent) f.rec_diag = w.w_hh;
        return f;
      };
      auto point = [&](auto stage) { RNNKIT_LAUNCH(ls, N * H, pointwise(stage)); };
      if constexpr (Cell::kLnParams > 0) {
        launch_rows<ForwardRows, Cell, S>(ls, row_cap, N, H, [&](auto& k) {
          k.f = pointwise(std::integral_constant<Stage, Stage::kWhole>{});
          for (int p = 0; p < kMaxLnParams; ++p) k.ln[p] = w.ln[p];
        });
      } else if constexpr (Cell::kTwoStage) {
        point(std::integral_constant<Stage, Stage::kFirst>{});
        // Recurrent dropout reaches the candidate's product through r * h_{t-1} (as Keras).
        if (rdrop) RNNKIT_LAUNCH(ls, N * H, (MaskRows<S>{N, N, H, SW, SW, b.rec_mask, saved, saved}));
        // gates(n) += (r * h_{t-1}) W_hn^T, with r * h_{t-1} in saved slot 0.
        mm(ls, Op::kN, Op::kT, N, GH - G1, P, {saved, SW}, {w.w_hh + G1 * P, P, bf16_at(w16.w_hh, G1 * P)},
           S(1), gates + G1, GH);
        point(std::integral_constant<Stage, Stage::kSecond>{});
      } else {
        point(std::integral_constant<Stage, Stage::kWhole>{});
      }
      if (s.project) mm(ls, Op::kN, Op::kT, N, P, H, {h_full, H}, {w.w_hr, H, w16.w_hr}, S(0), h_new, P);
      if (zone || zone_c) {
        RNNKIT_LAUNCH(ls, N * H, (ZoneoutMix<S>{N, H, P, t, zh, zc, h_prev, zone ? h_new : nullptr, h_cur, c_prev,
                                                zone_c ? c_new : nullptr, c_cur, zoneout_draws(b.h_keep),
                                                zoneout_draws(b.c_keep), a.lengths}));
      }
      RNNKIT_LAUNCH(ls, N * H, (StepOutputs<S>{N, H, P, t, a.y_ld, h_prev, h_cur, c_prev, c_cur, a.y, a.lengths}));
    }
  };
  if (!stepped) run_graphed(st, steps);
  copy_elems(st, a.state_n.h, h_slot(slots.last()), N * P);
  if constexpr (Cell::kHasCellState) {
    if (a.state_n.c) copy_elems(st, a.state_n.c, c_slot(slots.last()), N * H);
  }
  if (a.lengths) {  // sequences of length 0 end in zeros (layer.h)
    RNNKIT_LAUNCH(st, N * P, (ZeroEmptyRows<S>{N, P, a.lengths, a.state_n.h}));
    if (Cell::kHasCellState && a.state_n.c) RNNKIT_LAUNCH(st, N * H, (ZeroEmptyRows<S>{N, H, a.lengths, a.state_n.c}));
  }
}

template <typename Cell, typename S>
void layer_backward(const LayerShape& s, const LayerWeights<S>& w, const LayerGrads<S>& g, const LayerBuffers<S>& b,
                    const LayerArgs<S>& a) {
  const index_t T = s.d.T, N = s.d.N, C = s.d.C, H = s.d.H, P = s.d.P, GH = s.GH, G1 = s.G1, TN = s.TN;
  const index_t SW = s.saved_width, TW = s.tmp_width;
  const Slots slots{T, a.reverse, true};
  const Stream st = a.stream;
  // Read once: the graphed loop's record and capture passes must launch the same rows.
  const int row_cap = g_row_thread_cap.load(std::memory_order_relaxed);
  auto h_slot = [&](index_t slot) { return b.h_seq + slot * N * P; };
  auto c_slot = [&](index_t slot) { return b.c_seq + slot * N * H; };
  // The gates' gradients of every step: over the forward's gates, or in scratch keeping the cache.
  S* dall = s.keep_cache ? b.dgates_all : b.gates;
  // The gradient through W_hh: the recurrent pre-activations' of separate-recurrent cells.
  S* drec_all = Cell::kSeparateRecurrent ? b.dhgates : dall;
  S* dh_next = b.dh_a;  // dL/d(state after the step being processed), from later steps
  S* dh_cur = b.dh_b;   // ... plus this step's dy

  if (a.d_state_n.h) copy_elems(st, dh_next, a.d_state_n.h, N * P); else zero_elems(st, dh_next, N * P);
  if constexpr (Cell::kHasCellState) {
    if (a.d_state_n.c) copy_elems(st, b.dc, a.d_state_n.c, N * H); else zero_elems(st, b.dc, N * H);
  }
  if (a.lengths) {  // a sequence of length 0 ends in zeros whatever h0 was: its d_state_n goes nowhere
    RNNKIT_LAUNCH(st, N * P, (ZeroEmptyRows<S>{N, P, a.lengths, dh_next}));
    if constexpr (Cell::kHasCellState) RNNKIT_LAUNCH(st, N * H, (ZeroEmptyRows<S>{N, H, a.lengths, b.dc}));
  }
  // LayerNorm cells sum their parameter and bias gradients per batch row (row_kernels.h).
  // Peephole gradients likewise.
  if constexpr (Cell::kLnParams > 0 || Cell::kPeepholes || Cell::kDiagonalRecurrent) {
    zero_elems(st, b.partials, N * s.partial_width);
  }

  // Every GEMM at the call's precision (bf16.h), as the forward's.
  const RoundedWeights w16 = round_weights<Cell>(st, s, w, a.weights16);
  const auto mm = layer_gemm(a);

  // The regularisers, as the forward's.
  const Regularisers<Cell> reg(s, a.seed, a.group);
  const bool zone = reg.zone, zone_c = reg.zone_c, rdrop = reg.rdrop;
  const ZoneoutWords zh = reg.zh, zc = reg.zc;
  reg.recurrent_mask(st, s, b.rec_mask);

  // The per-step launches, run as one CUDA graph (graph.h): nothing but launches in here.
  auto steps = [&](Stream ls) {
    for (index_t i = T - 1; i >= 0; --i) {
      const index_t t = slots.step(i);
      S* dproj = s.project ? b.dh_proj + t * N * P : nullptr;
      RNNKIT_LAUNCH(ls, N * P, (StepStateGrad<S>{N, P, t, a.dy_ld, dh_next, a.dy, dh_cur, dproj, a.lengths}));
      if (zone || zone_c) {
        RNNKIT_LAUNCH(ls, N * H, (ZoneoutSplit<S>{N, H, P, t, zone ? 1 : 0, zone_c ? 1 : 0, zh, zc,
                                                  zoneout_draws(b.h_keep), zoneout_draws(b.c_keep), dh_cur, dproj,
                                                  b.dzone_h, b.dc, b.dzone_c, a.lengths}));
      }
      const S* dh_cell = dh_cur;
      if (s.project) {
        mm(ls, Op::kN, Op::kN, N, H, P, {dproj, P}, {w.w_hr, H, w16.w_hr}, S(0), b.dh_full, H);
        dh_cell = b.dh_full;
      }
      S* gates = b.gates + t * N * GH;
      S* saved = b.saved + t * N * SW;
      S* h_cell = s.project ? b.h_full + t * N * H : (zone ? b.h_zone + t * N * P : h_slot(slots.cur(t)));
      const S* c_cell = Cell::kHasCellState ? (zone_c ? b.c_zone + t * N * H : c_slot(slots.cur(t))) : nullptr;
      S* dhgates = Cell::kSeparateRecurrent ? b.dhgates + t * N * GH : nullptr;
      auto pointwise = [&](auto stage) {
        BackwardPointwise<Cell, S, decltype(stage)::value> k{
            N, H, P, GH, SW, TW, t, gates, h_slot(slots.prev(t)), Cell::kHasCellState ? c_slot(slots.prev(t)) : nullptr,
            h_cell, c_cell, saved, b.tmp, dh_cell, dh_cur, b.dc,
            b.dgates, dhgates, dh_next, a.lengths};
        if constexpr (Cell::kOptions) {
          k.options = CellOptionWords::of(*a.options);
          k.peephole = w.w_peephole;
          k.partials = Cell::kPeepholes ? b.partials : nullptr;
          k.PW = s.partial_width;
        }
        if constexpr (Cell::kDiagonalRecurrent) {
          k.rec_diag = w.w_hh;
          k.partials = b.partials;
          k.PW = s.partial_width;
        }
        return k;
      };
      auto point = [&](auto stage) { RNNKIT_LAUNCH(ls, N * H, pointwise(stage)); };
      if constexpr (Cell::kLnParams > 0) {
        launch_rows<BackwardRows, Cell, S>(ls, row_cap, N, H, [&](auto& k) {
          k.b = pointwise(std::integral_constant<Stage, Stage::kWhole>{});
          k.PW = s.partial_width;
          k.partials = b.partials;
          for (int p = 0; p < kMaxLnParams; ++p) k.ln[p] = w.ln[p];
        });
      } else if constexpr (Cell::kTwoStage) {
        point(std::integral_constant<Stage, Stage::kSecond>{});
        // tmp(0) = dL/d(r*h_{t-1}) = dgates(n) W_hn.
        mm(ls, Op::kN, Op::kN, N, P, GH - G1, {b.dgates + G1, GH},
           {w.w_hh + G1 * P, P, bf16_at(w16.w_hh, G1 * P)}, S(0), b.tmp, TW);
        // The forward's r * h_{t-1} was masked (recurrent dropout): so is its gradient.
        if (rdrop) RNNKIT_LAUNCH(ls, N * H, (MaskRows<S>{N, N, H, TW, TW, b.rec_mask, b.tmp, b.tmp}));
        point(std::integral_constant<Stage, Stage::kFirst>{});
      } else {
        point(std::integral_constant<Stage, Stage::kWhole>{});
      }
      if (zone || zone_c) {
        RNNKIT_LAUNCH(ls, N * H, (AddCarried<S>{N, H, P, t, zone ? b.dzone_h : nullptr, dh_next,
                                                zone_c ? b.dzone_c : nullptr, b.dc, a.lengths}));
      }
      // The step's gates are done with: their gradients take their place (or their own buffer).
      copy_elems(ls, dall + t * N * GH, b.dgates, N * GH);
      // dL/dh_{t-1} += d(recurrent pre-activations) W_hh (IndRNN: the cell wrote all of it).
      if constexpr (has_recurrent_gemm<Cell>()) {
        const S* drec = Cell::kSeparateRecurrent ? drec_all + t * N * GH : b.dgates;
        if (rdrop) {  // h_{t-1} entered the product masked: its gradient from there is masked too
          mm(ls, Op::kN, Op::kN, N, P, G1, {drec, GH}, {w.w_hh, P, w16.w_hh}, S(0), b.drec, P);
          RNNKIT_LAUNCH(ls, N * P, (AddMasked<S>{N * P, b.drec, b.rec_mask, dh_next}));
        } else {
          mm(ls, Op::kN, Op::kN, N, P, G1, {drec, GH}, {w.w_hh, P, w16.w_hh}, S(1), dh_next, P);
        }
      }
    }
  };
  run_graphed(st, steps);
  copy_elems(st, a.d_state0.h, dh_next, N * P);
  if constexpr (Cell::kHasCellState) {
    if (a.d_state0.c) copy_elems(st, a.d_state0.c, b.dc, N * H);
  }

  // The weight gradients, one GEMM each over all T*N rows (ACCUMULATED), dx, the bias column sums.
  // h_{t-1} for every t, in time order (recurrent dropout: the masked copies the products read)
  const S* h_prev_all = rdrop ? b.h_drop : h_slot(slots.reverse ? 1 : 0);
  // At bf16 the gates' gradients are rounded once for the three GEMMs that read them (slot 0, kept
  // until dx is done; the operands after it round into slot 0 again).
  const Operand<S> dgates_all = rounded_once(a.bf16, st, dall, TN, GH, 0);
  mm(st, Op::kT, Op::kN, GH, C, TN, dgates_all, {a.x, C}, S(1), g.w_ih, C);
  if (a.dx) mm(st, Op::kN, Op::kN, TN, C, GH, dgates_all, {w.w_ih, C, w16.w_ih}, a.dx_accumulate ? S(1) : S(0), a.dx, C);
  if constexpr (Cell::kTwoStage) {
    mm(st, Op::kT, Op::kN, G1, P, TN, dgates_all, {h_prev_all, P}, S(1), g.w_hh, P);
    mm(st, Op::kT, Op::kN, GH - G1, P, TN, {dall + G1, GH, bf16_at(dgates_all.rounded, G1)}, {b.saved, SW}, S(1),
       g.w_hh + G1 * P, P);
  } else if constexpr (Cell::kDiagonalRecurrent) {
    RNNKIT_LAUNCH(st, H, (AddColumnSums<S>{N, H, s.partial_width, b.partials, g.w_hh}));  // du
  } else if constexpr (Cell::kNoRecurrentWeight) {
    (void)h_prev_all;  // no recurrent weight: nothing to add up
  } else {
    const Operand<S> drec = drec_all == dall ? dgates_all : Operand<S>{drec_all, GH};
    mm(st, Op::kT, Op::kN, GH, P, TN, drec, {h_prev_all, P}, S(1), g.w_hh, P);
  }
  if constexpr (Cell::kCellBiasGrads) {
    // Every row's partial sums into the gradients, in row order (the CPU's order).
    const index_t PW = s.partial_width;
    const S* part = b.partials;
    for (int p = 0; p < Cell::kLnParams; ++p) {
      const index_t width = ln_param_width(p, GH, H);
      RNNKIT_LAUNCH(st, width, (AddColumnSums<S>{N, width, PW, part, g.ln[p]}));
      part += width;
    }
    if (g.b_ih) RNNKIT_LAUNCH(st, GH, (AddColumnSums<S>{N, GH, PW, part, g.b_ih}));
    if (g.b_hh) RNNKIT_LAUNCH(st, GH, (AddColumnSums<S>{N, GH, PW, part + GH, g.b_hh}));
  } else {
    if (g.b_ih) RNNKIT_LAUNCH(st, GH, (AddColumnSums<S>{TN, GH, GH, dall, g.b_ih}));
    if (g.b_hh) RNNKIT_LAUNCH(st, GH, (AddColumnSums<S>{TN, GH, GH, drec_all, g.b_hh}));
  }
  if constexpr (Cell::kPeepholes) {
    if (g.w_peephole) RNNKIT_LAUNCH(st, 3 * H, (AddColumnSums<S>{N, 3 * H, s.partial_width, b.partials, g.w_peephole}));
  }
  if (s.project) mm(st, Op::kT, Op::kN, P, H, TN, {b.dh_proj, P}, {b.h_full, H}, S(1), g.w_hr, H);
}

// Input dropout of layer l: its per-sequence mask [N, C_l] into `mask`, then v [T*N, C_l] (a layer
// input in the cache, or its gradient) times it in place (cpu/stack.cpp's input_dropout).
template <typename S>
void input_dropout(Stream stream, const StackConfig& cfg, std::uint64_t seed, index_t l, index_t TN, index_t N,
                   S* mask, S* v) {
  const index_t C = cfg.layer_input_size(l);
  RNNKIT_LAUNCH(stream, N * C, (SequenceMask<S>{N * C, UniformStream(seed, kInputDropStream + l).key,
                                                UniformStream::threshold(cfg.input_dropout), cfg.input_dropout, mask}));
  RNNKIT_LAUNCH(stream, TN * C, (MaskRows<S>{TN, N, C, C, C, mask, v, v}));
}

template <typename Ptr>
StatePair<Ptr> group_state(const StatePair<Ptr>& all, index_t g, index_t N, index_t P, index_t H) {
  return {all.h ? all.h + g * N * P : nullptr, all.c ? all.c + g * N * H : nullptr};
}


void copy_lengths(Stream stream, DeviceBuffer<index_t>& dst, const index_t* lengths, index_t N) {
  if (lengths == nullptr) return;
  dst.allocate(N, "sequence lengths");
  copy_to_device(dst.data(), lengths, static_cast<std::size_t>(N) * sizeof(index_t), stream);
}

}  // namespace

void count_persistent_launch() { g_persistent_launches.fetch_add(1, std::memory_order_relaxed); }

void set_persistent_mode(int mode) {
  if (mode < 0 || mode > 2) throw std::invalid_argument(concat("mode: expected 0, 1 or 2, got ", mode));
  g_persistent_mode.store(mode, std::memory_order_relaxed);
}
int get_persistent_mode() { return g_persistent_mode.load(std::memory_order_relaxed); }
std::uint64_t persistent_launches() { return g_persistent_launches.load(std::memory_order_relaxed); }

void set_row_thread_cap(int threads) {
  if (threads < 32 || threads > kMaxBlockThreads || (threads & (threads - 1)) != 0) {
    throw std::invalid_argument(concat("threads: expected a power of two in [32, ", kMaxBlockThreads, "], got ", threads));
  }
  g_row_thread_cap.store(threads, std::memory_order_relaxed);
}

template <typename S>
CudaStackPlan plan_stack(const StackConfig& cfg, index_t T, index_t N, bool training, std::vector<ParamSpec> specs,
                         bool keep_cache) {
  if (cell_info(cfg.cell).ln_params > 0 && cfg.hidden_size > kMaxRowLanes * g_row_thread_cap.load()) {
    throw std::invalid_argument(concat("hidden_size: expected at most ", kMaxRowLanes * g_row_thread_cap.load(),
                                       " for a LayerNorm cell on the "
                                       "CUDA backend (a row is one block of threads), got ", cfg.hidden_size));
  }
  CudaStackPlan p;
  p.cfg = cfg;
  p.T = T;
  p.N = N;
  p.training = training;
  p.specs = std::move(specs);
  check_precision(cfg, std::is_same_v<S, float>);
  p.shape = stack_layer_shape(cfg, T, N, training);
  p.shape.bf16 = cfg.precision == Precision::kBfloat16;
  p.shape.keep_cache = keep_cache;
  p.layer_kept = layer_buffer_elems(p.shape, kKept);
  p.layer_forward = layer_buffer_elems(p.shape, kForwardScratch);
  p.layer_backward = layer_buffer_elems(p.shape, kBackwardScratch);

  p.footprint = stack_footprint(cfg, p.shape, p.specs, training, p.layer_kept, p.layer_forward, p.layer_backward);
  return p;
}

template <typename S>
void stack_forward(const CudaStackPlan& plan, const StackForwardArgs<S>& args, CudaStackCache<S>* cache) {
  const StackConfig& cfg = plan.cfg;
  const bool training = plan.training;
  const index_t N = plan.N, TN = plan.shape.TN;
  const index_t L = cfg.num_layers, D = cfg.num_directions, H = cfg.hidden_size, P = cfg.state_size();
  const index_t between = TN * D * P;
  assert(training == (cache != nullptr));
  const Stream stream = current_stream();
  refuse_external_capture(stream, "a layer forward");

  DeviceBuffer<S> scratch(plan.footprint.forward_scratch, "forward scratch");
  LayerBuffers<S> shared;
  S* p = carve_layer_buffers(plan.shape, kForwardScratch, scratch.data(), &shared);

  DeviceBuffer<index_t> lengths_local;
  DeviceBuffer<index_t>& lengths_dev = training ? cache->lengths : lengths_local;
  copy_lengths(stream, lengths_dev, args.lengths, N);
  const index_t* lengths = args.lengths ? lengths_dev.data() : nullptr;

  std::vector<const S*> inputs(L);
  std::vector<S*> outputs(L);
  std::vector<LayerBuffers<S>> buffers(cfg.groups(), shared);
  const std::vector<LayerWeights<S>>* weights = args.params;
  if (training) {
    cache->plan_ = plan;
    cache->dropout_seed = args.dropout_seed;
    cache->block.allocate(plan.footprint.cache, "the training cache");
    if (args.zero_cache) zero_elems(stream, cache->block.data(), plan.footprint.cache);
    const std::vector<S*> layer_inputs = carve_stack_cache(plan, *cache);
    RNNKIT_LAUNCH(stream, TN * cfg.input_size,
                  (CopyInput<S>{N, cfg.input_size, TN * cfg.input_size, args.x, layer_inputs[0], lengths}));
    for (index_t l = 0; l < L; ++l) inputs[l] = layer_inputs[l];
    for (index_t l = 1; l < L; ++l) outputs[l - 1] = layer_inputs[l];
    for (const ParamSpec& spec : plan.specs) {
      S* copy = const_cast<S*>(param_field(cache->weights[spec.group], spec.role));
      const S* src = param_field((*args.params)[spec.group], spec.role);
      if (spec.role == ParamRole::kWHh && cfg.weight_dropout > 0.0) {  // the masked copy (weight drop)
        RNNKIT_LAUNCH(stream, spec.numel(), ApplyDropout<S>::of(spec.numel(), cfg.weight_dropout, args.dropout_seed,
                                                                kWeightDropStream + spec.group, src, copy, false));
      } else {
        copy_elems(stream, copy, src, spec.numel());
      }
    }
    for (index_t g = 0; g < cfg.groups(); ++g) carve_layer_buffers(plan.shape, kKept, cache->kept[g], &buffers[g]);
    weights = &cache->weights;
  } else {
    p = carve_layer_buffers(plan.shape, kKept, p, &shared);
    for (auto& b : buffers) b = shared;
    inputs[0] = args.x;
    for (index_t l = 0; l + 1 < L; ++l) {
      outputs[l] = p + (l % 2) * between;
      inputs[l + 1] = outputs[l];
    }
  }
  outputs[L - 1] = args.y;

  // Input dropout (variational): each layer's input in the cache times its per-sequence mask.
  const bool drop_inputs = training && cfg.input_dropout > 0.0;
  DeviceBuffer<S> input_mask(drop_inputs ? N * cfg.widest_layer_input() : 0, "input dropout mask");
  const Bf16Scratch bf16(plan.shape.bf16, bf16_slot_elems(cfg, plan.shape), bf16_weight_elems(cfg, plan.shape));
  dispatch_cell(cfg.kernel_cell(), [&](auto cell) {
    using Cell = decltype(cell);
    LayerShape shape = plan.shape;
    for (index_t l = 0; l < L; ++l) {
      shape.d.C = cfg.layer_input_size(l);
      if (drop_inputs) input_dropout(stream, cfg, args.dropout_seed, l, TN, N, input_mask.data(), const_cast<S*>(inputs[l]));
      for (index_t d = 0; d < D; ++d) {
        const index_t g = l * D + d;
        LayerArgs<S> la;
        la.stream = stream;
        la.x = inputs[l];
        la.state0 = group_state(args.state0, g, N, P, H);
        la.lengths = lengths;
        la.reverse = cfg.runs_reverse(d);
        la.options = &cfg.options[d];
        la.seed = args.dropout_seed;
        la.group = g;
        la.bf16 = bf16.slots;
        la.weights16 = bf16.extra;
        la.y = outputs[l] + d * P;
        la.y_ld = D * P;
        la.state_n = group_state(args.state_n, g, N, P, H);
        layer_forward<Cell, S>(shape, (*weights)[g], buffers[g], la);
      }
      if (training && l + 1 < L && cfg.dropout > 0.0) {
        RNNKIT_LAUNCH(stream, between, ApplyDropout<S>::of(between, cfg.dropout, args.dropout_seed, l, outputs[l],
                                                           outputs[l], false));
      }
    }
  });
  synchronize(stream);  // the scratch is freed on return
}

template <typename S>
std::unique_ptr<CudaStackCache<S>> stack_cache_from_block(const CudaStackPlan& plan, const S* block,
                                                          const index_t* lengths, std::uint64_t dropout_seed) {
  assert(plan.training);
  auto cache = std::make_unique<CudaStackCache<S>>();
  cache->plan_ = plan_stack<S>(plan.cfg, plan.T, plan.N, true, plan.specs, /*keep_cache=*/true);
  copy_lengths(current_stream(), cache->lengths, lengths, plan.N);
  cache->dropout_seed = dropout_seed;
  cache->external = block;
  carve_stack_cache(cache->plan_, *cache);
  return cache;
}

template <typename S>
void stack_backward(CudaStackCache<S>& cache, const StackBackwardArgs<S>& args) {
  if (cache.consumed) {
    throw std::invalid_argument(
        "cache: expected the cache of a forward that has not been backpropagated yet, got one that has "
        "(backward uses up what forward kept; run forward again)");
  }
  cache.consumed = !cache.plan_.shape.keep_cache;
  const CudaStackPlan& plan = cache.plan_;
  const StackConfig& cfg = plan.cfg;
  const index_t N = plan.N, TN = plan.shape.TN;
  const index_t L = cfg.num_layers, D = cfg.num_directions, H = cfg.hidden_size, P = cfg.state_size();
  const index_t between = TN * D * P;
  const index_t* lengths = cache.lengths.size() > 0 ? cache.lengths.data() : nullptr;
  const Stream stream = current_stream();
  refuse_external_capture(stream, "a layer backward");

  DeviceBuffer<S> scratch(plan.footprint.backward_scratch, "backward scratch");
  LayerBuffers<S> shared;
  S* p = carve_layer_buffers(plan.shape, kBackwardScratch, scratch.data(), &shared);
  S* ping = L > 1 ? p : nullptr;
  S* pong = L > 1 ? p + between : nullptr;
  std::vector<LayerBuffers<S>> buffers(cfg.groups(), shared);
  for (index_t g = 0; g < cfg.groups(); ++g) carve_layer_buffers(plan.shape, kKept, cache.kept[g], &buffers[g]);
  // Weight drop: W_hh's gradient into a scratch first, then through the mask (cpu/stack.cpp).
  index_t w_hh_numel = 0;
  for (const ParamSpec& spec : plan.specs) {
    if (spec.role == ParamRole::kWHh) w_hh_numel = spec.numel();
  }
  DeviceBuffer<S> w_hh_grad(cfg.weight_dropout > 0.0 ? w_hh_numel : 0, "weight drop gradient");
  DeviceBuffer<S> input_mask(cfg.input_dropout > 0.0 ? N * cfg.widest_layer_input() : 0, "input dropout mask");
  const Bf16Scratch bf16(plan.shape.bf16, bf16_slot_elems(cfg, plan.shape), bf16_weight_elems(cfg, plan.shape));

  dispatch_cell(cfg.kernel_cell(), [&](auto cell) {
    using Cell = decltype(cell);
    const S* d_out = args.dy;
    LayerShape shape = plan.shape;
    for (index_t l = L - 1; l >= 0; --l) {
      shape.d.C = cfg.layer_input_size(l);
      S* d_in = (l == 0) ? args.dx : ((l % 2 == 0) ? ping : pong);
      for (index_t d = 0; d < D; ++d) {
        const index_t g = l * D + d;
        LayerArgs<S> la;
        la.stream = stream;
        la.x = cache.inputs[l];
        la.lengths = lengths;
        la.reverse = cfg.runs_reverse(d);
        la.options = &cfg.options[d];
        la.seed = cache.dropout_seed;
        la.group = g;
        la.bf16 = bf16.slots;
        la.weights16 = bf16.extra;
        la.dy = d_out ? d_out + d * P : nullptr;
        la.dy_ld = D * P;
        la.d_state_n = group_state(args.d_state_n, g, N, P, H);
        la.dx = d_in;
        la.dx_accumulate = d > 0;
        la.d_state0 = group_state(args.d_state0, g, N, P, H);
        LayerGrads<S> grads = (*args.grads)[g];
        if (cfg.weight_dropout > 0.0) {
          zero_elems(stream, w_hh_grad.data(), w_hh_numel);
          grads.w_hh = w_hh_grad.data();
        }
        layer_backward<Cell, S>(shape, cache.weights[g], grads, buffers[g], la);
        if (cfg.weight_dropout > 0.0) {
          RNNKIT_LAUNCH(stream, w_hh_numel, ApplyDropout<S>::of(w_hh_numel, cfg.weight_dropout, cache.dropout_seed,
                                                                kWeightDropStream + g, w_hh_grad.data(),
                                                                (*args.grads)[g].w_hh, true));
        }
      }
      if (cfg.input_dropout > 0.0 && d_in) input_dropout(stream, cfg, cache.dropout_seed, l, TN, N, input_mask.data(), d_in);
      if (l > 0) {
        if (cfg.dropout > 0.0) {
          RNNKIT_LAUNCH(stream, between, ApplyDropout<S>::of(between, cfg.dropout, cache.dropout_seed, l - 1, d_in,
                                                             d_in, false));
        }
        d_out = d_in;
      }
    }
  });
  synchronize(stream);
}

template <typename S>
void stack_step(const StackConfig& cfg, index_t N, const StackForwardArgs<S>& args) {
  assert(cfg.num_directions == 1);
  // One step is an inference forward over T = 1 (no lengths, no dropout), in float32 whatever the
  // precision, as the CPU's streaming step (cpu/stack.cpp).
  check_precision(cfg, std::is_same_v<S, float>);
  StackConfig step_cfg = cfg;
  step_cfg.precision = Precision::kFloat32;
  const CudaStackPlan plan = plan_stack<S>(step_cfg, 1, N, false, stack_param_specs(step_cfg));
  StackForwardArgs<S> one = args;
  one.lengths = nullptr;
  stack_forward<S>(plan, one, nullptr);
}

#define RNNKIT_INSTANTIATE_STACK(S)                                                                          \
  template CudaStackPlan plan_stack<S>(const StackConfig&, index_t, index_t, bool, std::vector<ParamSpec>, bool); \
  template void stack_forward<S>(const CudaStackPlan&, const StackForwardArgs<S>&, CudaStackCache<S>*);       \
  template void stack_backward<S>(CudaStackCache<S>&, const StackBackwardArgs<S>&);                          \
  template std::unique_ptr<CudaStackCache<S>> stack_cache_from_block<S>(const CudaStackPlan&, const S*,       \
                                                                         const index_t*, std::uint64_t);    \
  template void stack_step<S>(const StackConfig&, index_t, const StackForwardArgs<S>&);
RNNKIT_INSTANTIATE_STACK(float)
RNNKIT_INSTANTIATE_STACK(double)
#undef RNNKIT_INSTANTIATE_STACK

}  // namespace cuda
}  // namespace rnnkit
