// The CPU BPTT loop of one layer-direction (cpu/layer.h), generic over the cells of cells.h.
//
// Phases of a call (split over the team as in the forward loop):
//   1. pack the per-step weights (W itself this time), load dL/dh_n and dL/dc_n;
//   2. per step, from the last: dL/dh_t (later steps plus this step's dy), back through the
//      projection, the cell's pointwise backward (two stages for the two-stage GRU), and
//      dL/dh_{t-1} through W_hh;
//   3. dh0, dc0;
//   4. the weight gradients, one GEMM each over all T*N rows (dW_ih, dW_hh, dW_hr, dx), the bias
//      column sums, and the LayerNorm cells' per-row partial sums added up.
//
// dL/d(gates) of every step is gathered for the phase-4 GEMMs: a step's pointwise backward writes
// it to a one-step staging buffer (the cell still reads that step's gates), and it is copied over
// the step's gates when they are no longer needed, which saves a [T,N,G*H] buffer (the largest of
// an LSTM's backward) and consumes what the forward kept: one backward per forward. A shape that
// keeps the cache (LayerShape::keep_cache: a reserve kept by a caller) gathers them in a scratch
// buffer instead and only reads what the forward kept.

#include "cpu/layer_loop.h"

namespace rnnkit {
namespace cpu {
namespace {

// sum_r rows[r, :] added into out[:] (rows is [R, W] with leading dimension ld).
template <typename S>
void add_column_sums(const S* rows, index_t R, index_t W, index_t ld, S* out) {
  Vec<S> acc(out, W);
  for (index_t r = 0; r < R; ++r) acc += ConstVec<S>(rows + r * ld, W);
}

template <typename Cell, typename S>
class BackwardLoop {
 public:
  BackwardLoop(const TeamContext& tc, const LayerShape& s, const LayerWeights<S>& w, const LayerGrads<S>& grads,
               const LayerBuffers<S>& b, const PackedWeights<S>& packed, const LayerBackwardArgs<S>& args)
      : p_(tc, s, w, packed, args.reverse, true), w_(w), grads_(grads), b_(b), a_(args),
        dgates_all_(s.keep_cache ? b.dgates_all : b.gates),
        drec_all_(Plan::kSeparateRecurrent ? b.dhgates : dgates_all_) {}

  void run() {
    prepare();
    for (index_t i = p_.T - 1; i >= 0; --i) step(p_.step_time(i));
    if constexpr (!kSharesRows) p_.tc.barrier();  // as the forward's (layer_forward.cpp)
    store_initial_state_grads();
    weight_gradients();
  }

 private:
  using Plan = LayerPlan<Cell, S>;
  // Whether a step's dL/dh_{t-1} needs rows other threads wrote (the recurrent GEMM); without one
  // each thread runs its rows through all T steps with no barrier between steps.
  static constexpr bool kSharesRows = has_recurrent_gemm<Cell>();
  // Cells that sum parameter gradients per batch row (layer.h's partial_width).
  static constexpr bool kPartials = Cell::kLnParams > 0 || Cell::kPeepholes || Cell::kDiagonalRecurrent;

  const S* h_slot(index_t slot) const { return b_.h_seq + slot * p_.N * p_.P; }
  const S* c_slot(index_t slot) const { return b_.c_seq + slot * p_.N * p_.H; }
  bool padded(index_t t, index_t n) const { return Plan::padded(a_.lengths, t, n); }

  // Phase 1. dh_next holds dL/d(the state after the step being processed) from later steps.
  void prepare() {
    const TeamContext& tc = p_.tc;
    const index_t N = p_.N, P = p_.P, H = p_.H;
    const auto [n0, n1] = p_.rows;
    p_.gemms.pack(p_.s, false);
    if (tc.tid() == 0) {
      if (a_.d_state_n.h) copy_n(dh_next_, a_.d_state_n.h, N * P); else zero_n(dh_next_, N * P);
      if constexpr (Plan::kHasC) {
        if (a_.d_state_n.c) copy_n(b_.dc, a_.d_state_n.c, N * H); else zero_n(b_.dc, N * H);
      }
      // A sequence of length 0 has h_n = c_n = 0 whatever h0 was (layer.h): its d_state_n goes nowhere.
      zero_empty_rows(a_.lengths, N, P, dh_next_);
      if constexpr (Plan::kHasC) zero_empty_rows(a_.lengths, N, H, b_.dc);
    }
    // Cells that accumulate parameter gradients row by row (LayerNorm) do it into partial sums of
    // their own, one set per batch row (not per thread), which thread 0 adds up in row order after
    // the loop: the result does not depend on how the rows were shared among the threads.
    // Peephole gradients likewise.
    if constexpr (kPartials) {
      zero_n(b_.partials + n0 * p_.s.partial_width, (n1 - n0) * p_.s.partial_width);
    }
    if (reg_.rdrop) reg_.recurrent_mask(p_.s, n0, n1, b_.rec_mask);
    tc.barrier();
    row_.H = H;
    row_.GH = p_.GH;
    row_.saved_slots = Cell::kSavedSlots;
    row_.ln_ = w_.ln;  // cells read the biases only in forward; backward works from what it saved
    row_.options_ = a_.options;
    row_.peep_ = w_.w_peephole;
    row_.rec_ = w_.w_hh;
  }

  // Row n's partial sums (LayerShape::partial_width's layout).
  void point_partials(index_t n) {
    if constexpr (Cell::kLnParams > 0) {
      S* p = b_.partials + n * p_.s.partial_width;
      for (int k = 0; k < Cell::kLnParams; ++k) {
        dln_views_[k] = p;
        p += ln_param_width(k, p_.GH, p_.H);
      }
      row_.dln_ = dln_views_;
      row_.db_ih_ = p;
      row_.db_hh_ = p + p_.GH;
    }
    if constexpr (Cell::kPeepholes) row_.dpeep_ = b_.partials + n * p_.s.partial_width;
    if constexpr (Cell::kDiagonalRecurrent) row_.drec_ = b_.partials + n * p_.s.partial_width;
  }

  // Phase 2, one step at time t.
  void step(index_t t) {
    const TeamContext& tc = p_.tc;
    const StepGemms<S>& g = p_.gemms;
    const index_t N = p_.N, H = p_.H, P = p_.P, GH = p_.GH;
    const auto [n0, n1] = p_.rows;
    for (index_t n = n0; n < n1; ++n) {
      Vec<S> cur(dh_cur_ + n * P, P);
      if (a_.dy != nullptr && !padded(t, n)) {
        cur = ConstVec<S>(dh_next_ + n * P, P) + ConstVec<S>(a_.dy + (t * N + n) * a_.dy_ld, P);
      } else {
        cur = ConstVec<S>(dh_next_ + n * P, P);
      }
      // Zoneout: the part of dL/dh_t (dL/dc_t) that the mix took from the previous state goes
      // straight to it, after the cell's backward; the cell sees the rest.
      if (padded(t, n)) continue;
      if (reg_.zone) {
        reg_.zh.split(dh_cur_ + n * P, b_.dzone_h + n * P, P,
                      b_.h_keep ? zoneout_draws(b_.h_keep) + (t * N + n) * zoneout_draw_row(P) : nullptr);
      }
      if (reg_.zone_c) {
        reg_.zc.split(b_.dc + n * H, b_.dzone_c + n * H, H,
                      b_.c_keep ? zoneout_draws(b_.c_keep) + (t * N + n) * zoneout_draw_row(H) : nullptr);
      }
    }
    // The gradient reaching the cell's h output: through the projection if there is one.
    const S* dh_cell = dh_cur_;
    if (p_.s.project) {
      S* dproj = b_.dh_proj + t * N * P;
      for (index_t n = n0; n < n1; ++n) {
        if (padded(t, n)) zero_n(dproj + n * P, P); else copy_n(dproj + n * P, dh_cur_ + n * P, P);
      }
      tc.barrier();
      g.proj.multiply(N, dproj, P, S(0), b_.dh_full, H);
      tc.barrier();
      dh_cell = b_.dh_full;
    }

    const S* h_prev = h_slot(p_.slots.prev(t));
    const S* h_cur = h_slot(p_.slots.cur(t));
    const S* c_prev = Plan::kHasC ? c_slot(p_.slots.prev(t)) : nullptr;
    const S* c_cur = Plan::kHasC ? c_slot(p_.slots.cur(t)) : nullptr;
    S* gates = b_.gates + t * N * GH;
    S* saved = b_.saved + t * N * p_.SW;
    S* h_full = p_.s.project ? b_.h_full + t * N * H : nullptr;
    S* dgates = b_.dgates;  // staging: this step's dL/d(gates)
    S* dhgates = Plan::kSeparateRecurrent ? b_.dhgates + t * N * GH : nullptr;
    // The cell's new state before zoneout's mix, as the forward kept it.
    const S* h_new = reg_.zone ? b_.h_zone + t * N * P : h_cur;
    const S* c_new = reg_.zone_c ? b_.c_zone + t * N * H : c_cur;

    // The accessor is read-write for the cell's sake; backward never writes the forward's values.
    auto point_row = [&](index_t n) {
      row_.gates_ = gates + n * GH;
      row_.h_prev_ = const_cast<S*>(h_prev + n * P);
      row_.c_prev_ = c_prev ? const_cast<S*>(c_prev + n * H) : nullptr;
      row_.h_ = p_.s.project ? h_full + n * H : const_cast<S*>(h_new + n * P);
      row_.c_ = c_cur ? const_cast<S*>(c_new + n * H) : nullptr;
      row_.saved_ = saved + n * p_.SW;
      row_.tmp_ = b_.tmp + n * p_.TW;
      row_.dh_ = const_cast<S*>(dh_cell + n * H);
      row_.dc_ = Plan::kHasC ? b_.dc + n * H : nullptr;
      row_.dgates_ = dgates + n * GH;
      row_.dhgates_ = dhgates ? dhgates + n * GH : nullptr;
      row_.dh_prev_ = dh_next_ + n * P;
      point_partials(n);
    };
    auto padded_row = [&](index_t n) {
      zero_n(dgates + n * GH, GH);
      if (dhgates) zero_n(dhgates + n * GH, GH);
      copy_n(dh_next_ + n * P, dh_cur_ + n * P, P);  // the state was carried: so is its gradient
    };
    // After the cell's backward of row n: zoneout's carried parts join dL/dh_{t-1}, dL/dc_{t-1}.
    auto add_carried = [&](index_t n) {
      if (reg_.zone) add_elements<S>(dh_next_ + n * P, b_.dzone_h + n * P, nullptr, 0, P);
      if (reg_.zone_c) add_elements<S>(b_.dc + n * H, b_.dzone_c + n * H, nullptr, 0, H);
    };

    if constexpr (Plan::kTwoStage) {
      for (index_t n = n0; n < n1; ++n) {
        if (padded(t, n)) { padded_row(n); continue; }
        point_row(n);
        Cell::backward_stage2(row_);
      }
      tc.barrier();
      // tmp(0) = dL/d(r*h_{t-1}) = dgates(n) W_hn, this thread's columns.
      g.stage2.multiply(N, dgates + p_.G1, GH, S(0), b_.tmp, p_.TW);
      tc.barrier();
      for (index_t n = n0; n < n1; ++n) {
        if (padded(t, n)) continue;
        point_row(n);
        // The forward's r * h_{t-1} was masked (recurrent dropout): so is its gradient.
        if (reg_.rdrop) mask_elements(row_.tmp_, row_.tmp_, b_.rec_mask + n * P, 0, H);
        Cell::backward_stage1(row_);
        add_carried(n);
      }
    } else {
      for (index_t n = n0; n < n1; ++n) {
        if (padded(t, n)) { padded_row(n); continue; }
        point_row(n);
        if constexpr (!Cell::kDirectStateGrad) zero_n(dh_next_ + n * P, P);
        Cell::backward(row_);
        add_carried(n);
      }
    }
    // This thread's rows of the step's gates are done with: their gradients take their place (or,
    // keeping the cache, go to their own buffer).
    copy_n(dgates_all_ + (t * N + n0) * GH, dgates + n0 * GH, (n1 - n0) * GH);
    if (kSharesRows) tc.barrier();
    // dL/dh_{t-1} = (direct part written by the cell) + d(recurrent pre-activations) W_hh,
    // this thread's columns (IndRNN: the cell's direct part is all of it).
    if constexpr (has_recurrent_gemm<Cell>()) {
      const S* drec = Plan::kSeparateRecurrent ? drec_all_ + t * N * GH : dgates;
      if (reg_.rdrop) {
        // h_{t-1} entered the product masked: its gradient from there is masked too.
        g.rec.multiply(N, drec, GH, S(0), b_.drec, P);
        tc.barrier();
        add_elements<S>(dh_next_, b_.drec, b_.rec_mask, n0 * P, n1 * P);
      } else {
        g.rec.multiply(N, drec, GH, S(1), dh_next_, P);
      }
    }
    if (kSharesRows) tc.barrier();
  }

  // Phase 3.
  void store_initial_state_grads() {
    if (p_.tc.tid() != 0) return;
    copy_n(a_.d_state0.h, dh_next_, p_.N * p_.P);
    if constexpr (Plan::kHasC) {
      if (a_.d_state0.c) copy_n(a_.d_state0.c, b_.dc, p_.N * p_.H);
    }
  }

  // Phase 4. Each thread owns a block of output rows (columns for the bias sums), so no two
  // threads write the same element.
  void weight_gradients() {
    const TeamContext& tc = p_.tc;
    const index_t N = p_.N, C = p_.C, H = p_.H, P = p_.P, GH = p_.GH, G1 = p_.G1, TN = p_.s.TN;
    const S* dall = dgates_all_;
    const S* drec = drec_all_;
    // h_{t-1} for every t, in time order: slots 0..T-1 (forward) or 1..T (reverse).
    // (Recurrent dropout: the masked copies the products read.)
    const S* h_prev_all = reg_.rdrop ? b_.h_drop : h_slot(p_.slots.reverse ? 1 : 0);
    tc.gemm_blocks(GH, 16, kDeterministicRows, [&](index_t w0, index_t w1) {
      layer_gemm(p_.s, Trans::kYes, Trans::kNo, w1 - w0, C, TN, dall + w0, GH, a_.x, C, S(1), grads_.w_ih + w0 * C, C);
      if constexpr (Plan::kTwoStage) {
        // Rows of W_hh below G1 multiply h_{t-1}; the candidate gate's rows multiply r * h_{t-1}.
        const index_t a1 = std::min(w1, G1), b0 = std::max(w0, G1);
        if (a1 > w0) {
          layer_gemm(p_.s, Trans::kYes, Trans::kNo, a1 - w0, P, TN, dall + w0, GH, h_prev_all, P, S(1),
               grads_.w_hh + w0 * P, P);
        }
        if (w1 > b0) {
          layer_gemm(p_.s, Trans::kYes, Trans::kNo, w1 - b0, P, TN, dall + b0, GH, b_.saved, p_.SW, S(1),
               grads_.w_hh + b0 * P, P);
        }
      } else if constexpr (has_recurrent_gemm<Cell>()) {  // IndRNN's du: the partial sums below
        layer_gemm(p_.s, Trans::kYes, Trans::kNo, w1 - w0, P, TN, drec + w0, GH, h_prev_all, P, S(1),
             grads_.w_hh + w0 * P, P);
      }
      if constexpr (!Cell::kCellBiasGrads) {
        if (grads_.b_ih) add_column_sums(dall + w0, TN, w1 - w0, GH, grads_.b_ih + w0);
        if (grads_.b_hh) add_column_sums(drec + w0, TN, w1 - w0, GH, grads_.b_hh + w0);
      }
    });
    if (p_.s.project) {
      tc.gemm_blocks(P, 16, kDeterministicRows, [&](index_t a0, index_t a1) {
        layer_gemm(p_.s, Trans::kYes, Trans::kNo, a1 - a0, H, TN, b_.dh_proj + a0, P, b_.h_full, H, S(1),
             grads_.w_hr + a0 * H, H);
      });
    }
    if (a_.dx) {
      tc.gemm_blocks(TN, 1, kDeterministicRows, [&](index_t r0, index_t r1) {
        layer_gemm(p_.s, Trans::kNo, Trans::kNo, r1 - r0, C, GH, dall + r0 * GH, GH, w_.w_ih, C,
             a_.dx_accumulate ? S(1) : S(0), a_.dx + r0 * C, C);
      });
    }
    if constexpr (Cell::kLnParams > 0) {
      tc.barrier();
      if (tc.tid() == 0) {
        // Sum every row's partials into the gradients, in row order (biases only where they exist).
        for (index_t n = 0; n < N; ++n) {
          const S* p = b_.partials + n * p_.s.partial_width;
          for (int k = 0; k < Cell::kLnParams; ++k) {
            const index_t len = ln_param_width(k, GH, H);
            Vec<S>(grads_.ln[k], len) += ConstVec<S>(p, len);
            p += len;
          }
          if (grads_.b_ih) Vec<S>(grads_.b_ih, GH) += ConstVec<S>(p, GH);
          if (grads_.b_hh) Vec<S>(grads_.b_hh, GH) += ConstVec<S>(p + GH, GH);
        }
      }
    }
    if constexpr (Cell::kDiagonalRecurrent) {
      tc.barrier();
      if (tc.tid() == 0) {
        for (index_t n = 0; n < N; ++n) Vec<S>(grads_.w_hh, H) += ConstVec<S>(b_.partials + n * p_.s.partial_width, H);
      }
    }
    if constexpr (Cell::kPeepholes) {
      tc.barrier();
      if (tc.tid() == 0 && grads_.w_peephole) {
        for (index_t n = 0; n < N; ++n) {
          Vec<S>(grads_.w_peephole, 3 * H) += ConstVec<S>(b_.partials + n * p_.s.partial_width, 3 * H);
        }
      }
    }
  }

  const Plan p_;
  const LayerWeights<S>& w_;
  const LayerGrads<S>& grads_;
  const LayerBuffers<S>& b_;
  const LayerBackwardArgs<S>& a_;
  S* const dgates_all_;  // the gates' gradients of every step: over the forward's gates, or in
                         // scratch when the shape keeps the cache
  S* const drec_all_;    // the gradient that goes through W_hh: the recurrent pre-activations' of
                         // separate-recurrent cells, the shared gates' otherwise
  S* dh_next_ = b_.dh_a;  // dL/d(state after the step being processed), from later steps
  S* dh_cur_ = b_.dh_b;   // ... plus this step's dy
  S* dln_views_[kMaxLnParams] = {};
  CpuRow<S> row_;
  // Zoneout of h and c, recurrent dropout (layer_loop.h).
  const LoopRegularisers<Cell, S> reg_{p_.s, a_.seed, a_.group};
};

}  // namespace

template <typename S>
void layer_backward(const TeamContext& tc, CellKind cell, const LayerShape& s, const LayerWeights<S>& w,
                    const LayerGrads<S>& grads, const LayerBuffers<S>& buffers, const PackedWeights<S>& packed,
                    const LayerBackwardArgs<S>& args) {
  dispatch_cell(cell, [&](auto c) { BackwardLoop<decltype(c), S>(tc, s, w, grads, buffers, packed, args).run(); });
}

template void layer_backward<float>(const TeamContext&, CellKind, const LayerShape&, const LayerWeights<float>&,
                                    const LayerGrads<float>&, const LayerBuffers<float>&,
                                    const PackedWeights<float>&, const LayerBackwardArgs<float>&);
template void layer_backward<double>(const TeamContext&, CellKind, const LayerShape&, const LayerWeights<double>&,
                                     const LayerGrads<double>&, const LayerBuffers<double>&,
                                     const PackedWeights<double>&, const LayerBackwardArgs<double>&);

}  // namespace cpu
}  // namespace rnnkit
