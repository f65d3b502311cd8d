// The CPU forward loop of one layer-direction (cpu/layer.h), generic over the cells of cells.h.
//
// Phases of a call, each split over the team (rows for pointwise work and hoisted GEMMs, columns
// for per-step GEMMs), with a barrier where a phase reads what another thread wrote:
//   1. pack the per-step weights, project every step's input at once (x W_ih^T), load biases and
//      the initial state;
//   2. per step: the recurrent product, the cell's pointwise forward (two stages with the
//      candidate gate's own product between them for the two-stage GRU), the projection, and the
//      outputs (padded steps carry the state and output 0);
//   3. the final state.

#include <cstring>

#include "cpu/layer_loop.h"

namespace rnnkit {
namespace cpu {
namespace {

template <typename Cell, typename S>
class ForwardLoop {
 public:
  ForwardLoop(const TeamContext& tc, const LayerShape& s, const LayerWeights<S>& w, const LayerBuffers<S>& b,
              const PackedWeights<S>& packed, const LayerForwardArgs<S>& args)
      : p_(tc, s, w, packed, args.reverse, false), w_(w), b_(b), packed_(packed), a_(args) {}

  void run() {
    prepare();
    for (index_t i = 0; i < p_.T; ++i) step(p_.step_time(i));
    if constexpr (!kSharesRows) p_.tc.barrier();  // the final state's rows come from every thread
    store_final_state();
  }

 private:
  using Plan = LayerPlan<Cell, S>;
  // Whether a step reads rows of the state other threads wrote (the recurrent GEMM's h_{t-1}). A
  // cell without one (IndRNN, minGRU, minLSTM: an elementwise recurrence) runs each thread's batch
  // rows through all T steps with no barrier between steps: the scan is split over the team by rows.
  static constexpr bool kSharesRows = has_recurrent_gemm<Cell>();

  S* h_slot(index_t slot) const { return b_.h_seq + slot * p_.N * p_.P; }
  S* c_slot(index_t slot) const { return b_.c_seq + slot * p_.N * p_.H; }
  bool padded(index_t t, index_t n) const { return Plan::padded(a_.lengths, t, n); }

  // Phase 1. Biases are added in the pointwise step, not here.
  void prepare() {
    const TeamContext& tc = p_.tc;
    p_.gemms.pack(p_.s, packed_.prepacked);
    if (packed_.input != nullptr) {
      project_prepacked();
    } else if (!rec_first_ && !fused_) {
      project_inputs(S(0));
    }
    if (tc.tid() == 0) {
      S* bsum = b_.bias;
      S* bih = b_.bias + p_.GH;
      S* bhh = b_.bias + 2 * p_.GH;
      for (index_t j = 0; j < p_.GH; ++j) {
        bih[j] = w_.b_ih ? w_.b_ih[j] : S(0);
        bhh[j] = w_.b_hh ? w_.b_hh[j] : S(0);
        bsum[j] = bih[j] + bhh[j];
      }
      const index_t first = p_.slots.first();
      if (a_.state0.h) copy_n(h_slot(first), a_.state0.h, p_.N * p_.P); else zero_n(h_slot(first), p_.N * p_.P);
      if constexpr (Plan::kHasC) {
        if (a_.state0.c) copy_n(c_slot(first), a_.state0.c, p_.N * p_.H); else zero_n(c_slot(first), p_.N * p_.H);
      }
    }
    tc.barrier();
    row_.H = p_.H;
    row_.GH = p_.GH;
    row_.saved_slots = Cell::kSavedSlots;
    row_.bias_ = b_.bias;
    row_.b_ih_ = b_.bias + p_.GH;
    row_.b_hh_ = b_.bias + 2 * p_.GH;
    row_.ln_ = w_.ln;
    row_.options_ = a_.options;
    row_.peep_ = w_.w_peephole;
    row_.rec_ = w_.w_hh;
    if (reg_.rdrop) {
      // Recurrent dropout: the mask, and the masked state the first step's product reads.
      const auto [n0, n1] = p_.rows;
      reg_.recurrent_mask(p_.s, n0, n1, b_.rec_mask);
      store_dropped_state(p_.step_time(0), h_slot(p_.slots.first()), n0, n1);
      tc.barrier();
    }
  }

  // gates = beta gates + x W_ih^T, every step's rows at once, split by rows over the team.
  void project_inputs(S beta) const {
    p_.tc.gemm_blocks(p_.s.TN, 1, kDeterministicRows, [&](index_t r0, index_t r1) {
      if constexpr (std::is_same_v<S, float>) {
        if (descending_) {
          row_gemm(r1 - r0, p_.C, 0, p_.GH, a_.x + r0 * p_.C, p_.C, w_.w_ih, p_.C, beta, b_.gates + r0 * p_.GH,
                   p_.GH, true);
          return;
        }
      }
      layer_gemm(p_.s, Trans::kNo, Trans::kYes, r1 - r0, p_.GH, p_.C, a_.x + r0 * p_.C, p_.C, w_.w_ih, p_.C, beta,
                 b_.gates + r0 * p_.GH, p_.GH);
    });
  }

  // A streaming step's gates = x W_ih^T + h_{t-1} W_hh^T in one pass over both matrices' rows
  // (this thread's columns of the recurrent product).
  void multiply_fused(const S* h_rec, S* gates) const {
    if constexpr (std::is_same_v<S, float>) {
      const StepOperand<S>& rec = p_.gemms.rec;
      row_gemm(p_.N, RowProduct{p_.C, a_.x, p_.C, w_.w_ih, p_.C}, RowProduct{p_.P, h_rec, p_.P, rec.src, rec.ld},
               rec.c0, rec.c1, 0.0f, gates, p_.GH, descending_);
    } else {
      (void)h_rec, (void)gates;
      assert(false && "fused step products are float32");
    }
  }

  // A step snapshot's input projection (one thread, T = 1): x W_ih^T from W_ih^T packed in bf16.
  void project_prepacked() const {
    if constexpr (std::is_same_v<S, float>) {
      assert(p_.tc.size() == 1 && p_.s.bf16);
      packed_gemm_bf16_from_float(p_.s.TN, p_.C, p_.GH, 0, p_.GH, a_.x, p_.C,
                                  reinterpret_cast<const bf16_t*>(packed_.input), 0.0f, b_.gates, p_.GH);
    } else {
      assert(false && "step snapshots are float32");
    }
  }

  // Row t of h_drop, rows [n0, n1): the state before step t times the recurrent mask.
  void store_dropped_state(index_t t, const S* state, index_t n0, index_t n1) const {
    mask_elements(b_.h_drop + t * p_.N * p_.P, state, b_.rec_mask, n0 * p_.P, n1 * p_.P);
  }

  // Phase 2, one step at time t.
  void step(index_t t) {
    const TeamContext& tc = p_.tc;
    const StepGemms<S>& g = p_.gemms;
    const index_t N = p_.N, H = p_.H, P = p_.P, GH = p_.GH;
    const auto [n0, n1] = p_.rows;
    S* h_prev = h_slot(p_.slots.prev(t));
    S* h_cur = h_slot(p_.slots.cur(t));
    S* c_prev = Plan::kHasC ? c_slot(p_.slots.prev(t)) : nullptr;
    S* c_cur = Plan::kHasC ? c_slot(p_.slots.cur(t)) : nullptr;
    S* gates = b_.gates + t * N * GH;
    S* saved = b_.saved + (p_.s.training ? t * N * p_.SW : 0);
    S* h_full = p_.s.project ? b_.h_full + (p_.s.training ? t * N * H : 0) : nullptr;
    // The cell's new state, before zoneout mixes it with the previous one (without zoneout: the state).
    S* h_new = reg_.zone ? b_.h_zone + (p_.s.training ? t * N * P : 0) : h_cur;
    S* c_new = reg_.zone_c ? b_.c_zone + (p_.s.training ? t * N * H : 0) : c_cur;
    // What the recurrent product reads: h_{t-1}, or its masked copy (recurrent dropout).
    const S* h_rec = reg_.rdrop ? b_.h_drop + t * N * P : h_prev;

    // h_{t-1} W_hh^T, this thread's columns: into the gates, or beside them for cells that keep
    // the recurrent part separate.
    if constexpr (!has_recurrent_gemm<Cell>()) {
      (void)g;  // IndRNN applies u itself; minGRU/minLSTM have no recurrent weight
    } else if constexpr (Plan::kSeparateRecurrent) {
      g.rec.multiply(N, h_rec, P, S(0), b_.hgates, GH, descending_);
      if (rec_first_) {
        // x W_ih^T after h W_hh^T (into their own rows): the other order of reads.
        tc.barrier();
        project_inputs(S(0));
      }
    } else if (fused_) {
      multiply_fused(h_rec, gates);
    } else {
      g.rec.multiply(N, h_rec, P, S(1), gates, GH, descending_);
    }
    if (kSharesRows) tc.barrier();

    auto point_row = [&](index_t n) {
      row_.gates_ = gates + n * GH;
      row_.hgates_ = Plan::kSeparateRecurrent ? b_.hgates + n * GH : nullptr;
      row_.h_prev_ = h_prev + n * P;
      row_.c_prev_ = c_prev ? c_prev + n * H : nullptr;
      row_.h_ = p_.s.project ? h_full + n * H : h_new + n * P;
      row_.c_ = c_cur ? c_new + n * H : nullptr;
      row_.saved_ = saved + n * p_.SW;
      row_.tmp_ = b_.tmp + n * p_.TW;
    };
    for (index_t n = n0; n < n1; ++n) {
      if (padded(t, n)) {
        // Rows that later GEMMs read must hold numbers, not leftovers.
        if (p_.s.project) zero_n(h_full + n * H, H);
        if (Plan::kTwoStage) zero_n(saved + n * p_.SW, H);
        continue;
      }
      point_row(n);
      if constexpr (Plan::kTwoStage) {
        Cell::forward_stage1(row_);
        // Recurrent dropout reaches the candidate's product through r * h_{t-1} (as Keras).
        if (reg_.rdrop) mask_elements(row_.saved_, row_.saved_, b_.rec_mask + n * P, 0, H);
      } else {
        Cell::forward(row_);
      }
    }
    if constexpr (Plan::kTwoStage) {
      // gates(n) += (r * h_{t-1}) W_hn^T, with r * h_{t-1} in saved slot 0.
      tc.barrier();
      g.stage2.multiply(N, saved, p_.SW, S(1), gates + p_.G1, GH, descending_);
      tc.barrier();
      for (index_t n = n0; n < n1; ++n) {
        if (padded(t, n)) continue;
        point_row(n);
        Cell::forward_stage2(row_);
      }
    }
    if (p_.s.project) {
      tc.barrier();
      g.proj.multiply(N, h_full, H, S(0), h_new, P, descending_);
      tc.barrier();
    }
    const index_t next = p_.slots.reverse ? t - 1 : t + 1;  // the next step's time
    const bool has_next = next >= 0 && next < p_.T;
    for (index_t n = n0; n < n1; ++n) {
      S* y_row = a_.y + (t * N + n) * a_.y_ld;
      if (padded(t, n)) {
        copy_n(h_cur + n * P, h_prev + n * P, P);
        if (c_cur) copy_n(c_cur + n * H, c_prev + n * H, H);
        zero_n(y_row, P);
      } else {
        if (reg_.zone) {
          reg_.zh.mix(h_cur + n * P, h_prev + n * P, h_new + n * P, P, (t * N + n) * P,
                      b_.h_keep ? zoneout_draws(b_.h_keep) + (t * N + n) * zoneout_draw_row(P) : nullptr);
        }
        if (reg_.zone_c) {
          reg_.zc.mix(c_cur + n * H, c_prev + n * H, c_new + n * H, H, (t * N + n) * H,
                      b_.c_keep ? zoneout_draws(b_.c_keep) + (t * N + n) * zoneout_draw_row(H) : nullptr);
        }
        copy_n(y_row, h_cur + n * P, P);
      }
    }
    if (reg_.rdrop && has_next) store_dropped_state(next, h_cur, n0, n1);
    if (kSharesRows) tc.barrier();
  }

  // Phase 3. A sequence of length 0 ends in zeros (layer.h).
  void store_final_state() {
    if (p_.tc.tid() != 0) return;
    copy_n(a_.state_n.h, h_slot(p_.slots.last()), p_.N * p_.P);
    if constexpr (Plan::kHasC) {
      if (a_.state_n.c) copy_n(a_.state_n.c, c_slot(p_.slots.last()), p_.N * p_.H);
    }
    zero_empty_rows(a_.lengths, p_.N, p_.P, a_.state_n.h);
    if (Plan::kHasC && a_.state_n.c) zero_empty_rows(a_.lengths, p_.N, p_.H, a_.state_n.c);
  }

  const Plan p_;
  const LayerWeights<S>& w_;
  const LayerBuffers<S>& b_;
  const PackedWeights<S>& packed_;
  const LayerForwardArgs<S>& a_;
  // A streaming step whose products run row_gemm (LayerForwardArgs::step_order): float, at most
  // kRowGemmMaxM rows, nothing packed; descending_ in a kDescending call.
  const bool step_rows_ = std::is_same_v<S, float> && a_.step_order != StepOrder::kNone && p_.T == 1 &&
                          p_.N <= kRowGemmMaxM && !p_.s.bf16 && packed_.input == nullptr &&
                          p_.gemms.rec.packed == nullptr && row_gemm_available();
  const bool descending_ = step_rows_ && a_.step_order == StepOrder::kDescending;
  // Cells that add h W_hh^T into the gates take both products in one pass (multiply_fused);
  // cells that keep it apart (GRU) multiply by W_hh first in a descending call. The two-stage
  // GRU's candidate needs the projection first: only its rows reverse.
  const bool fused_ = step_rows_ && has_recurrent_gemm<Cell>() && !Plan::kSeparateRecurrent && !Plan::kTwoStage;
  const bool rec_first_ = descending_ && has_recurrent_gemm<Cell>() && Plan::kSeparateRecurrent && !Plan::kTwoStage;
  CpuRow<S> row_;
  // Zoneout of h and c, recurrent dropout (layer_loop.h).
  const LoopRegularisers<Cell, S> reg_{p_.s, a_.seed, a_.group};
};

}  // namespace

template <typename S>
void layer_forward(const TeamContext& tc, CellKind cell, const LayerShape& s, const LayerWeights<S>& w,
                   const LayerBuffers<S>& buffers, const PackedWeights<S>& packed, const LayerForwardArgs<S>& args) {
  dispatch_cell(cell, [&](auto c) { ForwardLoop<decltype(c), S>(tc, s, w, buffers, packed, args).run(); });
}

template void layer_forward<float>(const TeamContext&, CellKind, const LayerShape&, const LayerWeights<float>&,
                                   const LayerBuffers<float>&, const PackedWeights<float>&,
                                   const LayerForwardArgs<float>&);
template void layer_forward<double>(const TeamContext&, CellKind, const LayerShape&, const LayerWeights<double>&,
                                    const LayerBuffers<double>&, const PackedWeights<double>&,
                                    const LayerForwardArgs<double>&);

}  // namespace cpu
}  // namespace rnnkit
