// The CUDA backend's kernel bodies (device.h says how a body is written and launched): the cells'
// pointwise math of cells.h through a per-element accessor, and the small elementwise kernels of the
// layer and stack loops (stack.cu). Each body is a plain struct of pointers and sizes, copied to the
// device at launch.
//
// Layout as on the CPU (layer.h): row n of gates [N,GH], hgates [N,GH], saved [N,saved_width],
// states [N,P] / [N,H]; bias [3,GH] = b_ih + b_hh, b_ih, b_hh. Race-freedom: in every body a thread
// writes only elements of its own (n, j) (plus, for j < P, element j of row n of the P-wide
// buffers), and reads only its own or ones no thread of the launch writes.
#pragma once

#include <cstring>

#include "device.h"
#include "rnnkit/cells.h"
#include "rnnkit/stack.h"

namespace rnnkit {
namespace cuda {

// The accessor of cells.h for element j of one batch row: every value is a scalar reference. The
// LayerNorm cells (a.mean over the row) use row_kernels.h's DeviceRow instead.
template <typename S>
struct DeviceElement {
  using Scalar = S;
  index_t H, GH, j;
  S* gates_;
  S* hgates_;
  const S* bias_;
  const S* h_prev_;
  const S* c_prev_;
  S* h_;
  S* c_;
  S* saved_;
  S* tmp_;
  const S* dh_;
  S* dc_;
  S* dgates_;
  S* dhgates_;
  S* dh_prev_;
  // ONNX's general cells (set after construction; null for the others)
  const CellOptions* options_ = nullptr;
  const S* peep_ = nullptr;  // [3H]
  S* dpeep_ = nullptr;       // [3H] this row's partial sums
  const S* rec_ = nullptr;   // [H] IndRNN's u
  S* drec_ = nullptr;        // [H] this row's partial sums of du

  RNNKIT_DEVICE S& gates(int k) const { return gates_[k * H + j]; }
  RNNKIT_DEVICE S& hgates(int k) const { return hgates_[k * H + j]; }
  RNNKIT_DEVICE const S& bias(int k) const { return bias_[k * H + j]; }
  RNNKIT_DEVICE const S& b_ih(int k) const { return bias_[GH + k * H + j]; }
  RNNKIT_DEVICE const S& b_hh(int k) const { return bias_[2 * GH + k * H + j]; }
  RNNKIT_DEVICE const S& h_prev() const { return h_prev_[j]; }
  RNNKIT_DEVICE const S& c_prev() const { return c_prev_[j]; }
  RNNKIT_DEVICE S& h() const { return h_[j]; }
  RNNKIT_DEVICE S& c() const { return c_[j]; }
  RNNKIT_DEVICE S& saved(int s) const { return saved_[s * H + j]; }
  RNNKIT_DEVICE S& tmp(int s) const { return tmp_[s * H + j]; }
  RNNKIT_DEVICE const S& dh() const { return dh_[j]; }
  RNNKIT_DEVICE S& dc() const { return dc_[j]; }
  RNNKIT_DEVICE S& dc_prev() const { return dc_[j]; }
  RNNKIT_DEVICE S& dgates(int k) const { return dgates_[k * H + j]; }
  RNNKIT_DEVICE S& dhgates(int k) const { return dhgates_[k * H + j]; }
  RNNKIT_DEVICE S& dh_prev() const { return dh_prev_[j]; }
  RNNKIT_DEVICE const CellOptions& options() const { return *options_; }
  RNNKIT_DEVICE const S& peep(int k) const { return peep_[k * H + j]; }
  RNNKIT_DEVICE S& dpeep(int k) const { return dpeep_[k * H + j]; }
  RNNKIT_DEVICE const S& rec() const { return rec_[j]; }
  RNNKIT_DEVICE S& drec() const { return drec_[j]; }
};

// A CellOptions as plain 64-bit words, for the kernel bodies that carry one: a body launched in a
// graphed loop is identified by its bytes and may hold no floating-point member (graph.h). Decoded
// field by field (no memcpy through local memory: it cost the double LSTM kernel a spill).
RNNKIT_DEVICE double double_of_bits(std::int64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(bits);
#else
  double v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
#endif
}

struct CellOptionWords {
  std::int64_t kind[kMaxActivations] = {};
  std::int64_t alpha[kMaxActivations] = {};
  std::int64_t beta[kMaxActivations] = {};
  std::int64_t clip = 0, peephole = 0, coupled = 0;

  static CellOptionWords of(const CellOptions& o) {
    auto bits = [](double v) {
      std::int64_t b;
      std::memcpy(&b, &v, sizeof b);
      return b;
    };
    CellOptionWords w;
    for (int k = 0; k < kMaxActivations; ++k) {
      w.kind[k] = static_cast<std::int64_t>(o.act[k].kind);
      w.alpha[k] = bits(o.act[k].alpha);
      w.beta[k] = bits(o.act[k].beta);
    }
    w.clip = bits(o.clip);
    w.peephole = o.peephole;
    w.coupled = o.coupled;
    return w;
  }
  RNNKIT_DEVICE CellOptions get() const {
    CellOptions o;
    for (int k = 0; k < kMaxActivations; ++k) {
      o.act[k] = {static_cast<ActKind>(kind[k]), double_of_bits(alpha[k]), double_of_bits(beta[k])};
    }
    o.clip = double_of_bits(clip);
    o.peephole = peephole;
    o.coupled = coupled;
    return o;
  }
};

template <typename S>
RNNKIT_DEVICE const S* row_of(const S* base, index_t n, index_t width) {
  return base ? base + n * width : nullptr;
}
template <typename S>
RNNKIT_DEVICE S* row_of(S* base, index_t n, index_t width) {
  return base ? base + n * width : nullptr;
}

RNNKIT_DEVICE bool is_padded(const index_t* lengths, index_t t, index_t n) {
  return lengths != nullptr && t >= lengths[n];
}

// Which part of a cell's pointwise pass a launch runs: the whole pass, or one stage of a
// two-stage cell (kTwoStage: the candidate gate's GEMM sits between the stages).
enum class Stage { kWhole, kFirst, kSecond };

// One step's pointwise forward over N*H elements. h_out: the cell's h (h_full [N,H] with a
// projection, else h_cur [N,P] with P == H).
template <typename Cell, typename S, Stage kStage>
struct ForwardPointwise {
  index_t N, H, P, GH, SW, TW, t;
  index_t project;  // 0 or 1: an index_t, as a body launched in a graphed loop has no padding (graph.h)
  S* gates;
  S* hgates;
  const S* bias;
  const S* h_prev;
  const S* c_prev;
  S* h_out;
  S* c_cur;
  S* saved;
  S* tmp;
  const index_t* lengths;
  // ONNX's general cells: the direction's options and peephole weights [3H] (or null).
  CellOptionWords options{};
  const S* peephole = nullptr;
  const S* rec_diag = nullptr;  // IndRNN's u [H]

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < N * H; i += th.stride()) element(i / H, i % H);
  }

  // Element j of row n (the persistent kernel calls it too).
  RNNKIT_DEVICE void element(index_t n, index_t j) const {
    if (is_padded(lengths, t, n)) {
      // Rows that the step's later GEMMs read must hold numbers, not leftovers.
      if (kStage != Stage::kSecond) {
        if (project) h_out[n * H + j] = S(0);
        if (Cell::kTwoStage) saved[n * SW + j] = S(0);
      }
      return;
    }
    // The LayerNorm cells run whole rows (row_kernels.h), which take this body for its fields and
    // its padded-row rule only.
    if constexpr (Cell::kLnParams == 0) {
      DeviceElement<S> a{H, GH, j, row_of(gates, n, GH), row_of(hgates, n, GH), bias, row_of(h_prev, n, P),
                         row_of(c_prev, n, H), row_of(h_out, n, H), row_of(c_cur, n, H), row_of(saved, n, SW),
                         row_of(tmp, n, TW), nullptr, nullptr, nullptr, nullptr, nullptr};
      // Decoded for the general cells only: the default cells' kernels do no per-element work for it.
      CellOptions opts{};
      if constexpr (Cell::kOptions) opts = options.get();
      a.options_ = &opts;
      a.peep_ = peephole;
      a.rec_ = rec_diag;
      if constexpr (Cell::kTwoStage) {
        if (kStage == Stage::kFirst) Cell::forward_stage1(a);
        if (kStage == Stage::kSecond) Cell::forward_stage2(a);
      } else {
        Cell::forward(a);
      }
    }
  }
};

// The rows n of a state [N, width] whose sequence has length 0, set to 0: such a sequence ends in
// zeros (layer.h), and backward drops the gradient arriving at its final state.
template <typename S>
struct ZeroEmptyRows {
  index_t N, width;
  const index_t* lengths;
  S* state;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < N * width; i += th.stride()) {
      if (lengths[i / width] == 0) state[i] = S(0);
    }
  }
};

// A step's outputs after the cell (and the projection): y = h_t, or at padded steps the state
// carried (h_cur = h_prev, c_cur = c_prev) and y = 0. Over N*H elements (P <= H).
template <typename S>
struct StepOutputs {
  index_t N, H, P, t, y_ld;
  const S* h_prev;
  S* h_cur;
  const S* c_prev;  // null without a cell state
  S* c_cur;
  S* y;
  const index_t* lengths;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < N * H; i += th.stride()) element(i / H, i % H);
  }

  RNNKIT_DEVICE void element(index_t n, index_t j) const {
    S* y_row = y + (t * N + n) * y_ld;
    if (is_padded(lengths, t, n)) {
      if (j < P) {
        h_cur[n * P + j] = h_prev[n * P + j];
        y_row[j] = S(0);
      }
      if (c_cur) c_cur[n * H + j] = c_prev[n * H + j];
    } else if (j < P) {
      y_row[j] = h_cur[n * P + j];
    }
  }
};

// dh_cur = dh_next + dy_t (dy ignored at padded steps), and with a projection the gradient reaching
// it, kept per step for dW_hr (dproj: 0 at padded steps). Over N*P elements.
template <typename S>
struct StepStateGrad {
  index_t N, P, t, dy_ld;
  const S* dh_next;
  const S* dy;  // null: zeros
  S* dh_cur;
  S* dproj;  // null without a projection
  const index_t* lengths;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < N * P; i += th.stride()) {
      const index_t n = i / P, j = i % P;
      const bool pad = is_padded(lengths, t, n);
      const S v = dh_next[i] + (dy != nullptr && !pad ? dy[(t * N + n) * dy_ld + j] : S(0));
      dh_cur[i] = v;
      if (dproj) dproj[i] = pad ? S(0) : v;
    }
  }
};

// One step's pointwise backward over N*H elements. dh_cell: dL/d(the cell's h) [N,H] (dh_full with
// a projection, else dh_cur, P == H). dgates: the step's staging [N,GH]; dh_next [N,P]: the direct
// part of dL/dh_{t-1} (zeroed for cells without one; the recurrent GEMM adds the rest).
template <typename Cell, typename S, Stage kStage>
struct BackwardPointwise {
  index_t N, H, P, GH, SW, TW, t;
  S* gates;
  const S* h_prev;
  const S* c_prev;
  S* h;  // the cell's h as forward left it (h_full or the state)
  const S* c_cur;
  S* saved;
  S* tmp;
  const S* dh_cell;
  const S* dh_cur;
  S* dc;
  S* dgates;
  S* dhgates;
  S* dh_next;
  const index_t* lengths;
  // ONNX's general cells: the options, peephole weights [3H] and the per-row partial sums
  // [N, PW] their gradients accumulate into (or null).
  CellOptionWords options{};
  const S* peephole = nullptr;
  S* partials = nullptr;
  index_t PW = 0;
  const S* rec_diag = nullptr;  // IndRNN's u [H]; its du goes to partials

  // Element j of a padded row n: nothing reaches the gates; the state was carried through the
  // step, so is its gradient.
  RNNKIT_DEVICE void padded_element(index_t n, index_t j) const {
    for (int k = 0; k < Cell::kGates; ++k) {
      dgates[n * GH + k * H + j] = S(0);
      if (dhgates) dhgates[n * GH + k * H + j] = S(0);
    }
    if (j < P) dh_next[n * P + j] = dh_cur[n * P + j];
  }
  // Cells without a direct state gradient leave dh_next's element to the recurrent GEMM alone.
  RNNKIT_DEVICE void clear_state_grad(index_t n, index_t j) const {
    if (!Cell::kDirectStateGrad && j < P) dh_next[n * P + j] = S(0);
  }

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < N * H; i += th.stride()) {
      const index_t n = i / H, j = i % H;
      if (is_padded(lengths, t, n)) {
        if (kStage != Stage::kFirst) padded_element(n, j);
        continue;
      }
      DeviceElement<S> a{H, GH, j, row_of(gates, n, GH), nullptr, nullptr, row_of(h_prev, n, P),
                         row_of(c_prev, n, H), row_of(h, n, H), const_cast<S*>(row_of(c_cur, n, H)),
                         row_of(saved, n, SW), row_of(tmp, n, TW), row_of(dh_cell, n, H), row_of(dc, n, H),
                         row_of(dgates, n, GH), row_of(dhgates, n, GH), row_of(dh_next, n, P)};
      CellOptions opts{};
      if constexpr (Cell::kOptions) opts = options.get();
      a.options_ = &opts;
      a.peep_ = peephole;
      a.dpeep_ = row_of(partials, n, PW);
      a.rec_ = rec_diag;
      a.drec_ = row_of(partials, n, PW);
      if constexpr (Cell::kTwoStage) {
        if (kStage == Stage::kSecond) Cell::backward_stage2(a);
        if (kStage == Stage::kFirst) Cell::backward_stage1(a);
      } else {
        clear_state_grad(n, j);
        Cell::backward(a);
      }
    }
  }
};

// bias [3,GH] = b_ih + b_hh, b_ih, b_hh (zeros for an absent bias).
template <typename S>
struct BiasRows {
  index_t GH;
  const S* b_ih;
  const S* b_hh;
  S* bias;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < GH; i += th.stride()) {
      const S bi = b_ih ? b_ih[i] : S(0), bh = b_hh ? b_hh[i] : S(0);
      bias[i] = bi + bh;
      bias[GH + i] = bi;
      bias[2 * GH + i] = bh;
    }
  }
};

// out[c] += sum_r rows[r * ld + c], r = 0 .. R-1 in order (the CPU's order), one thread per column.
template <typename S>
struct AddColumnSums {
  index_t R, W, ld;
  const S* rows;
  S* out;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t c = th.global(); c < W; c += th.stride()) {
      S acc = out[c];
      for (index_t r = 0; r < R; ++r) acc += rows[r * ld + c];
      out[c] = acc;
    }
  }
};

// Layer 0's input, copied into the cache with padded steps zeroed (a NaN the caller left there must
// not reach dW_ih through 0 * NaN). Over TN*C elements.
template <typename S>
struct CopyInput {
  index_t N, C, count;
  const S* x;
  S* out;
  const index_t* lengths;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < count; i += th.stride()) {
      const index_t r = i / C;
      out[i] = is_padded(lengths, r / N, r % N) ? S(0) : x[i];
    }
  }
};

// Dropout between layers and weight drop (stack.h), the CPU's apply_dropout (cpu/stack.cpp) on
// the device: element i of src dropped (0) when draw i of the stream is below p, else times
// 1/(1-p), into dst (accumulate 1: added to dst). Between-layer dropout runs in place on a layer's
// output or its gradient; weight drop masks the cache's copy of W_hh (forward) and adds W_hh's
// gradient through the mask (backward). The draws are integers, as UniformStream::below.
template <typename S>
struct ApplyDropout {
  index_t count;
  std::uint64_t key, below;
  S scale;
  const S* src;
  S* dst;
  index_t accumulate;

  static ApplyDropout of(index_t count, double p, std::uint64_t seed, index_t stream, const S* src, S* dst,
                         bool accumulate) {
    return {count, UniformStream(seed, stream).key, UniformStream::threshold(p), p >= 1.0 ? S(0) : S(1.0 / (1.0 - p)),
            src, dst, accumulate ? 1 : 0};
  }
  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < count; i += th.stride()) {
      const bool dropped = (splitmix64(key + static_cast<std::uint64_t>(i)) >> 11) < below;
      const S v = dropped ? S(0) : src[i] * scale;
      dst[i] = accumulate ? dst[i] + v : v;
    }
  }
};

// ---- zoneout and variational dropout (stack.h; cpu/layer_loop.h is the CPU's form) -------------
// Zoneout's draws for a body launched in a graphed loop (no floating-point members, graph.h): the
// stream's key, the integer threshold below which a draw keeps the previous state, p's bits and
// whether to draw masks (1) or use the expectation p (0).
struct ZoneoutWords {
  std::uint64_t key = 0, below = 0;
  std::int64_t p_bits = 0;
  index_t masks = 0;

  static ZoneoutWords of(double p, bool masks, std::uint64_t seed, index_t stream) {
    ZoneoutWords w;
    w.key = UniformStream(seed, stream).key;
    w.below = UniformStream::threshold(p);
    std::memcpy(&w.p_bits, &p, sizeof p);
    w.masks = masks ? 1 : 0;
    return w;
  }
  // keep * previous + (1 - keep) * new; dL/dprevious gets keep * dL/dstate.
  template <typename S>
  RNNKIT_DEVICE S keep(index_t i) const {
    if (!masks) return S(double_of_bits(p_bits));
    return (splitmix64(key + static_cast<std::uint64_t>(i)) >> 11) < below ? S(1) : S(0);
  }
};

// After a step's cell (and projection): the state h_t = keep * h_{t-1} + (1 - keep) * h_new at
// valid rows (h_new null: h unzoned), c likewise. Padded rows are StepOutputs'. A training
// forward's draws also go to h_keep / c_keep (bytes, rows of zoneout_draw_row(P or H): LayerBuffers;
// null: not kept), which backward reads. Over N*H.
template <typename S>
struct ZoneoutMix {
  index_t N, H, P, t;
  ZoneoutWords zh, zc;
  const S* h_prev;
  const S* h_new;
  S* h_cur;
  const S* c_prev;
  const S* c_new;
  S* c_cur;
  unsigned char* h_keep;
  unsigned char* c_keep;
  const index_t* lengths;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < N * H; i += th.stride()) {
      const index_t n = i / H, j = i % H;
      if (is_padded(lengths, t, n)) continue;
      if (h_new && j < P) {
        const index_t e = (t * N + n) * P + j;
        const S k = zh.keep<S>(e);
        if (h_keep) h_keep[(t * N + n) * zoneout_draw_row(P) + j] = k != S(0) ? 1 : 0;
        h_cur[n * P + j] = k * h_prev[n * P + j] + (S(1) - k) * h_new[n * P + j];
      }
      if (c_new) {
        const index_t e = (t * N + n) * H + j;
        const S k = zc.keep<S>(e);
        if (c_keep) c_keep[(t * N + n) * zoneout_draw_row(H) + j] = k != S(0) ? 1 : 0;
        c_cur[n * H + j] = k * c_prev[n * H + j] + (S(1) - k) * c_new[n * H + j];
      }
    }
  }
};

// Backward of the mix at valid rows, before the cell's backward: keep * dL/dh_t goes to dzone_h
// (added to dL/dh_{t-1} after the cell: AddCarried), the cell sees the rest in dh_cur (and dproj,
// the projection's copy of it); c likewise in dc. keep: the forward's draws (h_keep, c_keep) when
// it drew masks, else the expectation p. Over N*H.
template <typename S>
struct ZoneoutSplit {
  index_t N, H, P, t, split_h, split_c;
  ZoneoutWords zh, zc;
  const unsigned char* h_keep;
  const unsigned char* c_keep;
  S* dh_cur;
  S* dproj;  // null without a projection
  S* dzone_h;
  S* dc;
  S* dzone_c;
  const index_t* lengths;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < N * H; i += th.stride()) {
      const index_t n = i / H, j = i % H;
      if (is_padded(lengths, t, n)) continue;
      if (split_h && j < P) {
        const index_t e = (t * N + n) * P + j;
        const S k = zh.masks ? S(h_keep[(t * N + n) * zoneout_draw_row(P) + j]) : zh.keep<S>(e), g = dh_cur[n * P + j];
        dzone_h[n * P + j] = k * g;
        dh_cur[n * P + j] = g - k * g;
        if (dproj) dproj[n * P + j] = g - k * g;
      }
      if (split_c) {
        const index_t e = (t * N + n) * H + j;
        const S k = zc.masks ? S(c_keep[(t * N + n) * zoneout_draw_row(H) + j]) : zc.keep<S>(e), g = dc[n * H + j];
        dzone_c[n * H + j] = k * g;
        dc[n * H + j] = g - k * g;
      }
    }
  }
};

// After the cell's backward, at valid rows: dh_next += dzone_h, dc += dzone_c (null: none). Over N*H.
template <typename S>
struct AddCarried {
  index_t N, H, P, t;
  const S* dzone_h;
  S* dh_next;
  const S* dzone_c;
  S* dc;
  const index_t* lengths;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < N * H; i += th.stride()) {
      const index_t n = i / H, j = i % H;
      if (is_padded(lengths, t, n)) continue;
      if (dzone_h && j < P) dh_next[n * P + j] += dzone_h[n * P + j];
      if (dzone_c) dc[n * H + j] += dzone_c[n * H + j];
    }
  }
};

// A per-sequence dropout mask [rows, width]: 0 where the draw is below p, else 1/(1-p) (recurrent
// dropout's [N, P] of a group, input dropout's [N, C] of a layer). Outside the graphed loops.
template <typename S>
struct SequenceMask {
  index_t count;
  std::uint64_t key, below;
  double p;
  S* mask;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    const S scale = S(1.0 / (1.0 - p));
    for (index_t i = th.global(); i < count; i += th.stride()) {
      mask[i] = (splitmix64(key + static_cast<std::uint64_t>(i)) >> 11) < below ? S(0) : scale;
    }
  }
};

// v[r * ld + j] (into out, or in place when out is v) times mask[(r % N) * width + j], for rows
// r < R and j < width: a state times the recurrent mask (R = N), r * h_{t-1} or its gradient in a
// saved/tmp slot, a layer input [T*N, C] times the input mask (R = T*N). Over R*width.
template <typename S>
struct MaskRows {
  index_t R, N, width, ld, out_ld;
  const S* mask;
  const S* v;
  S* out;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < R * width; i += th.stride()) {
      const index_t r = i / width, j = i % width;
      out[r * out_ld + j] = v[r * ld + j] * mask[(r % N) * width + j];
    }
  }
};

// dst[i] += v[i] * mask[i], i < count: the recurrent product's gradient through the mask.
template <typename S>
struct AddMasked {
  index_t count;
  const S* v;
  const S* mask;
  S* dst;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < count; i += th.stride()) dst[i] += v[i] * mask[i];
  }
};

}  // namespace cuda
}  // namespace rnnkit
