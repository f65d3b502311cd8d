// The layer stack on the CPU (cpu/stack.h): plans, the forward and backward over layers x
// directions with dropout between layers, and the streaming step.
#include "cpu/stack.h"

#include "common/stack_cache.h"

#include <atomic>
#include <cstring>

#include "cpu/layer_loop.h"
#include "cpu/team.h"
#include "cpu/util.h"

namespace rnnkit {
namespace cpu {
namespace {

// Elements [begin, end) of v times a dropout mask drawn from `stream` (dropout_uniform's draws, in
// integers: element i is zeroed when u < p, else scaled by 1/(1-p)), in place: dropout between
// layers (stream: the layer; p may be 1) and weight drop (kWeightDropStream + group; W_hh's copy in
// the cache, and its gradient). The same call applied to a gradient is the mask's backward.
template <typename S>
void apply_dropout(S* v, index_t begin, index_t end, double p, std::uint64_t seed, index_t stream) {
  if (p <= 0.0) return;
  if (p >= 1.0) {
    std::memset(v + begin, 0, static_cast<std::size_t>(end - begin) * sizeof(S));
    return;
  }
  const UniformStream u(seed, stream);
  const std::uint64_t below = UniformStream::threshold(p);
  const S scale = S(1.0 / (1.0 - p));
  for (index_t i = begin; i < end; ++i) v[i] = u.below(i, below) ? S(0) : v[i] * scale;
}

// Multiplies rows [r0, r1) of v [T*N, C] by the per-sequence mask [N, C]: input dropout's forward
// on a layer input, and its backward on the input's gradient.
template <typename S>
void apply_input_mask(S* v, const S* mask, index_t N, index_t C, index_t r0, index_t r1) {
  for (index_t r = r0; r < r1; ++r) Vec<S>(v + r * C, C) *= ConstVec<S>(mask + (r % N) * C, C);
}

// Layer l's input mask (all threads, then a barrier) and, when `v` is not null, v multiplied by it.
template <typename S>
void input_dropout(const TeamContext& tc, const StackConfig& cfg, std::uint64_t seed, index_t l, index_t T,
                   index_t N, S* mask, S* v) {
  const index_t C = cfg.layer_input_size(l);
  const auto [m0, m1] = tc.split(N);
  fill_dropout_mask(seed, kInputDropStream + l, cfg.input_dropout, m0 * C, m1 * C, mask);
  tc.barrier();
  if (v == nullptr) return;
  const auto [r0, r1] = tc.split(T * N);
  apply_input_mask(v, mask, N, C, r0, r1);
  tc.barrier();
}

// Group g's part of a stack's state [L*D,N,..] (null stays null).
template <typename Ptr>
StatePair<Ptr> group_state(const StatePair<Ptr>& all, index_t g, index_t N, index_t P, index_t H) {
  return {all.h ? all.h + g * N * P : nullptr, all.c ? all.c + g * N * H : nullptr};
}


// Copies the parameters into the cache's copies of them (carved by carve_cache).
template <typename S>
void copy_params(const std::vector<ParamSpec>& specs, const std::vector<LayerWeights<S>>& src,
                 const std::vector<LayerWeights<S>>& dst) {
  for (const ParamSpec& spec : specs) {
    copy_n(const_cast<S*>(param_field(dst[spec.group], spec.role)), param_field(src[spec.group], spec.role),
           spec.numel());
  }
}

// Threads pay off only when each step's GEMM is big enough to split: below ~2^19 multiply-adds
// per step the two barriers of a step cost more than half the step saves. Tests lower it to run
// the threaded code on small shapes.
std::atomic<index_t> g_min_parallel_step_work{index_t(1) << 19};

}  // namespace

void set_min_parallel_step_work(index_t work) { g_min_parallel_step_work.store(work < 0 ? 0 : work); }

int stack_team_size(const StackConfig& cfg, index_t N) {
  const int wanted = ThreadTeam::instance().default_size();
  if (wanted <= 1) return 1;
  const index_t step_work = N * cell_info(cfg.cell).gates * cfg.hidden_size * cfg.state_size();
  return step_work < g_min_parallel_step_work.load() ? 1 : wanted;
}

template <typename S>
CpuStackPlan plan_stack(const StackConfig& cfg, index_t T, index_t N, bool training, std::vector<ParamSpec> specs,
                        bool keep_cache) {
  CpuStackPlan p;
  p.cfg = cfg;
  p.T = T;
  p.N = N;
  p.training = training;
  p.specs = std::move(specs);
  check_precision(cfg, std::is_same_v<S, float>);
  p.shape = stack_layer_shape(cfg, T, N, training);
  p.shape.keep_cache = keep_cache;
  p.shape.bf16 = cfg.precision == Precision::kBfloat16;
  p.layer_kept = layer_buffer_elems(p.shape, kKept);
  p.layer_forward = layer_buffer_elems(p.shape, kForwardScratch);
  p.layer_backward = layer_buffer_elems(p.shape, kBackwardScratch);
  p.packed_forward = packed_buffer_elems<S>(p.shape, false);
  p.packed_backward = packed_buffer_elems<S>(p.shape, true);
  p.team = stack_team_size(cfg, N);

  p.footprint = stack_footprint(cfg, p.shape, p.specs, training, p.layer_kept,
                                checked_add(p.layer_forward, p.packed_forward, "forward scratch"),
                                checked_add(p.layer_backward, p.packed_backward, "backward scratch"));
  return p;
}

template <typename S>
void stack_forward(const CpuStackPlan& plan, const StackForwardArgs<S>& args, CpuStackCache<S>* cache) {
  const StackConfig& cfg = plan.cfg;
  const bool training = plan.training;
  const index_t N = plan.N, TN = plan.shape.TN;
  const index_t L = cfg.num_layers, D = cfg.num_directions, H = cfg.hidden_size, P = cfg.state_size();
  const index_t between = TN * D * P;
  assert(training == (cache != nullptr));

  // This call's scratch: the layer buffers every group shares, then the packed weights.
  Buffer<S> scratch(plan.footprint.forward_scratch, "forward scratch");
  LayerBuffers<S> shared;
  PackedWeights<S> packed;
  S* p = carve_layer_buffers(plan.shape, kForwardScratch, scratch.data(), &shared);
  p = carve_packed_buffers(plan.shape, false, p, &packed);

  std::vector<const S*> inputs(L);
  std::vector<S*> outputs(L);
  std::vector<LayerBuffers<S>> buffers(cfg.groups(), shared);
  const std::vector<LayerWeights<S>>* weights = args.params;
  S* x_copy = nullptr;
  if (training) {
    cache->plan_ = plan;
    cache->lengths.assign(args.lengths ? args.lengths : nullptr, args.lengths ? args.lengths + N : nullptr);
    cache->dropout_seed = args.dropout_seed;
    cache->block.allocate(plan.footprint.cache, "the training cache");
    if (args.zero_cache) std::memset(cache->block.data(), 0, static_cast<std::size_t>(plan.footprint.cache) * sizeof(S));
    const std::vector<S*> layer_inputs = carve_stack_cache(plan, *cache);
    x_copy = layer_inputs[0];  // filled by the team below
    for (index_t l = 0; l < L; ++l) inputs[l] = layer_inputs[l];
    for (index_t l = 1; l < L; ++l) outputs[l - 1] = layer_inputs[l];
    copy_params(plan.specs, *args.params, cache->weights);
    for (index_t g = 0; g < cfg.groups(); ++g) carve_layer_buffers(plan.shape, kKept, cache->kept[g], &buffers[g]);
    weights = &cache->weights;
  } else {
    // Inference: every group reuses the same kept-buffer views.
    p = carve_layer_buffers(plan.shape, kKept, p, &shared);
    for (auto& b : buffers) b = shared;
    inputs[0] = args.x;
    if (L > 1) {
      S* ping = p;
      S* pong = p + between;
      for (index_t l = 0; l + 1 < L; ++l) {
        outputs[l] = (l % 2 == 0) ? ping : pong;
        inputs[l + 1] = outputs[l];
      }
    }
  }
  outputs[L - 1] = args.y;
  const bool drop_inputs = training && cfg.input_dropout > 0.0;
  Buffer<S> input_mask(drop_inputs ? N * cfg.widest_layer_input() : 0, "input dropout mask");

  ThreadTeam::instance().run(plan.team, [&](const TeamContext& tc) {
    if (training && cfg.weight_dropout > 0.0) {
      // Weight drop masks the cache's copy of each W_hh, so the steps and BPTT use the masked weights.
      for (const ParamSpec& spec : plan.specs) {
        if (spec.role != ParamRole::kWHh) continue;
        const auto [e0, e1] = tc.split(spec.numel());
        apply_dropout(const_cast<S*>(param_field(cache->weights[spec.group], spec.role)), e0, e1, cfg.weight_dropout,
                      args.dropout_seed, kWeightDropStream + spec.group);
      }
      tc.barrier();
    }
    if (x_copy != nullptr) {
      // Layer 0's input: a copy, with padded steps zeroed (they are never read as data, and a
      // NaN left there by the caller must not reach dW_ih through 0 * NaN).
      const index_t C = cfg.input_size;
      const auto [r0, r1] = tc.split(TN);
      copy_n(x_copy + r0 * C, args.x + r0 * C, (r1 - r0) * C);
      for (index_t r = r0; args.lengths && r < r1; ++r) {
        if (r / N >= args.lengths[r % N]) std::memset(x_copy + r * C, 0, C * sizeof(S));
      }
      tc.barrier();
    }
    LayerShape shape = plan.shape;
    for (index_t l = 0; l < L; ++l) {
      shape.d.C = cfg.layer_input_size(l);
      // The training cache's copy of the input is masked in place: the layer's GEMMs read it so.
      if (drop_inputs) input_dropout(tc, cfg, args.dropout_seed, l, plan.T, N, input_mask.data(), const_cast<S*>(inputs[l]));
      for (index_t d = 0; d < D; ++d) {
        const index_t g = l * D + d;
        LayerForwardArgs<S> la;
        la.x = inputs[l];
        la.seed = args.dropout_seed;
        la.group = g;
        la.state0 = group_state(args.state0, g, N, P, H);
        la.lengths = args.lengths;
        la.reverse = cfg.runs_reverse(d);
        la.options = &cfg.options[d];
        la.y = outputs[l] + d * P;
        la.y_ld = D * P;
        la.state_n = group_state(args.state_n, g, N, P, H);
        layer_forward<S>(tc, cfg.kernel_cell(), shape, (*weights)[g], buffers[g], packed, la);
        tc.barrier();
      }
      if (training && l + 1 < L && cfg.dropout > 0.0) {
        const auto [e0, e1] = tc.split(between);
        apply_dropout(outputs[l], e0, e1, cfg.dropout, args.dropout_seed, l);
        tc.barrier();
      }
    }
  });
}

template <typename S>
std::unique_ptr<CpuStackCache<S>> stack_cache_from_block(const CpuStackPlan& plan, const S* block,
                                                         const index_t* lengths, std::uint64_t dropout_seed) {
  assert(plan.training);
  auto cache = std::make_unique<CpuStackCache<S>>();
  cache->plan_ = plan_stack<S>(plan.cfg, plan.T, plan.N, true, plan.specs, /*keep_cache=*/true);
  cache->lengths.assign(lengths ? lengths : nullptr, lengths ? lengths + plan.N : nullptr);
  cache->dropout_seed = dropout_seed;
  cache->external = block;
  carve_stack_cache(cache->plan_, *cache);
  return cache;
}

template <typename S>
void stack_backward(CpuStackCache<S>& cache, const StackBackwardArgs<S>& args) {
  if (cache.consumed) {
    throw std::invalid_argument(
        "cache: expected the cache of a forward that has not been backpropagated yet, got one that has "
        "(backward uses up what forward kept; run forward again)");
  }
  cache.consumed = true;
  const CpuStackPlan& plan = cache.plan_;
  const StackConfig& cfg = plan.cfg;
  const index_t N = plan.N, TN = plan.shape.TN;
  const index_t L = cfg.num_layers, D = cfg.num_directions, H = cfg.hidden_size, P = cfg.state_size();
  const index_t between = TN * D * P;
  const index_t* lengths = cache.lengths.empty() ? nullptr : cache.lengths.data();

  // The layer scratch every group shares, the packed weights, then two layer gradients to
  // ping-pong between layers.
  Buffer<S> scratch(plan.footprint.backward_scratch, "backward scratch");
  LayerBuffers<S> shared;
  PackedWeights<S> packed;
  S* p = carve_layer_buffers(plan.shape, kBackwardScratch, scratch.data(), &shared);
  p = carve_packed_buffers(plan.shape, true, p, &packed);
  S* ping = L > 1 ? p : nullptr;
  S* pong = L > 1 ? p + between : nullptr;
  std::vector<LayerBuffers<S>> buffers(cfg.groups(), shared);
  for (index_t g = 0; g < cfg.groups(); ++g) carve_layer_buffers(plan.shape, kKept, cache.kept[g], &buffers[g]);
  // Weight drop: each group's W_hh gradient goes to a scratch of its own first, then through the
  // forward's mask into the accumulated gradient (the loop accumulates into what it is given).
  index_t w_hh_numel = 0;
  for (const ParamSpec& spec : plan.specs) {
    if (spec.role == ParamRole::kWHh) w_hh_numel = spec.numel();
  }
  Buffer<S> w_hh_grad(cfg.weight_dropout > 0.0 ? w_hh_numel : 0, "weight drop gradient");
  Buffer<S> input_mask(cfg.input_dropout > 0.0 ? N * cfg.widest_layer_input() : 0, "input dropout mask");

  ThreadTeam::instance().run(plan.team, [&](const TeamContext& tc) {
    const S* d_out = args.dy;  // dL/d(output of layer l), [T,N,D*P]
    LayerShape shape = plan.shape;
    for (index_t l = L - 1; l >= 0; --l) {
      shape.d.C = cfg.layer_input_size(l);
      S* d_in = (l == 0) ? args.dx : ((l % 2 == 0) ? ping : pong);
      for (index_t d = 0; d < D; ++d) {
        const index_t g = l * D + d;
        LayerBackwardArgs<S> la;
        la.x = cache.inputs[l];
        la.seed = cache.dropout_seed;
        la.group = g;
        la.lengths = lengths;
        la.reverse = cfg.runs_reverse(d);
        la.options = &cfg.options[d];
        la.dy = d_out ? d_out + d * P : nullptr;
        la.dy_ld = D * P;
        la.d_state_n = group_state(args.d_state_n, g, N, P, H);
        la.dx = d_in;
        la.dx_accumulate = d > 0;
        la.d_state0 = group_state(args.d_state0, g, N, P, H);
        LayerGrads<S> grads = (*args.grads)[g];
        if (cfg.weight_dropout > 0.0) {
          const auto [z0, z1] = tc.split(w_hh_numel);
          zero_n(w_hh_grad.data() + z0, z1 - z0);
          tc.barrier();
          grads.w_hh = w_hh_grad.data();
        }
        layer_backward<S>(tc, cfg.kernel_cell(), shape, cache.weights[g], grads, buffers[g], packed, la);
        tc.barrier();
        if (cfg.weight_dropout > 0.0) {
          const auto [e0, e1] = tc.split(w_hh_numel);
          apply_dropout(w_hh_grad.data(), e0, e1, cfg.weight_dropout, cache.dropout_seed, kWeightDropStream + g);
          S* dst = (*args.grads)[g].w_hh;
          for (index_t i = e0; i < e1; ++i) dst[i] += w_hh_grad.data()[i];
          tc.barrier();
        }
      }
      if (cfg.input_dropout > 0.0) input_dropout(tc, cfg, cache.dropout_seed, l, plan.T, N, input_mask.data(), d_in);
      if (l > 0) {
        if (cfg.dropout > 0.0) {
          const auto [e0, e1] = tc.split(between);
          apply_dropout(d_in, e0, e1, cfg.dropout, cache.dropout_seed, l - 1);
          tc.barrier();
        }
        d_out = d_in;
      }
    }
  });
}

namespace {

// One streaming step, from a snapshot's packed weights (`packed`, bf16) or from the parameters.
template <typename S>
void step_layers(const StackConfig& cfg, index_t N, const StackForwardArgs<S>& args,
                 const std::vector<PackedWeights<S>>* packed) {
  assert(cfg.num_directions == 1);
  const index_t L = cfg.num_layers, H = cfg.hidden_size, P = cfg.state_size();
  check_precision(cfg, std::is_same_v<S, float>);
  // Without a snapshot a streaming step computes in float32 whatever the precision: it reads each
  // weight once, and a bfloat16 copy of them per call cost more than the float32 step (LSTM,
  // C = H = 256, B = 1: 137 against 58 us).
  LayerShape shape0 = stack_layer_shape(cfg, 1, N, false);  // T = 1: nothing packed per call
  shape0.bf16 = packed != nullptr;
  // One buffer per thread, grown when needed and kept: a stream of steps allocates nothing. The
  // layer buffers every layer reuses, then two outputs to ping-pong between layers.
  constexpr unsigned kStepBuffers = kKept | kForwardScratch;
  thread_local Buffer<S> scratch;
  const index_t need = checked_add(layer_buffer_elems(shape0, kStepBuffers), L > 1 ? 2 * N * P : 0, "step scratch");
  if (scratch.size() < need) scratch.allocate(need, "step scratch");
  LayerBuffers<S> buffers;
  S* p = carve_layer_buffers(shape0, kStepBuffers, scratch.data(), &buffers);
  S* between[2] = {p, p + N * P};
  const PackedWeights<S> unpacked;
  const TeamContext solo(nullptr, 0, 1);
  // A stream of steps reads the same weights every call. Each call reads them in the reverse of
  // the previous call's order (LayerForwardArgs::step_order), so it starts on the rows still in
  // L2: an LSTM at C = H = 256 reads 2 MiB per step, the whole L2 of many cores, and in one order
  // most reads came from L3 (bench/NOTES.md).
  thread_local bool descending = false;
  descending = !descending;
  const StepOrder order = descending ? StepOrder::kDescending : StepOrder::kAscending;
  LayerShape shape = shape0;
  const S* in = args.x;
  for (index_t l = 0; l < L; ++l) {
    shape.d.C = cfg.layer_input_size(l);
    LayerForwardArgs<S> la;
    la.x = in;
    la.state0 = group_state(args.state0, l, N, P, H);
    la.options = &cfg.options[0];
    la.y = l + 1 == L ? args.y : between[l % 2];
    la.y_ld = P;
    la.state_n = group_state(args.state_n, l, N, P, H);
    la.step_order = order;
    layer_forward<S>(solo, cfg.kernel_cell(), shape, (*args.params)[l], buffers,
                     packed != nullptr ? (*packed)[l] : unpacked, la);
    in = la.y;
  }
}

}  // namespace

template <typename S>
void stack_step(const StackConfig& cfg, index_t N, const StackForwardArgs<S>& args) {
  step_layers<S>(cfg, N, args, nullptr);
}

std::unique_ptr<StepWeights> pack_step_weights(const StackConfig& cfg, const std::vector<LayerWeights<float>>& params) {
  if (cfg.num_directions != 1) throw_expected("a step snapshot's layer", "a unidirectional layer", "bidirectional");
  if (cfg.precision != Precision::kBfloat16) {
    throw_expected("a step snapshot's precision", "'bfloat16' (float32 steps read the parameters as they are)",
                   "'float32'");
  }
  assert(static_cast<index_t>(params.size()) == cfg.num_layers);
  auto w = std::make_unique<StepWeights>();
  w->cfg = cfg;
  const index_t L = cfg.num_layers;
  // Each layer's shape, and the float elements of what it packs: the step GEMMs' panels (the
  // forward's table), then W_ih^T.
  std::vector<LayerShape> shapes;
  std::vector<index_t> input_elems;
  index_t total = 0;
  for (index_t l = 0; l < L; ++l) {
    LayerShape s = stack_layer_shape(cfg, 1, 1, false);
    s.d.C = cfg.layer_input_size(l);
    s.bf16 = true;
    const index_t in = bf16_packed_elems<float>(s.d.C, s.GH);
    total = checked_add(total, checked_add(packed_buffer_elems<float>(s, false), in, "step snapshot"), "step snapshot");
    shapes.push_back(s);
    input_elems.push_back(in);
  }
  w->block.allocate(total, "step snapshot");
  float* p = w->block.data();
  const TeamContext solo(nullptr, 0, 1);
  for (index_t l = 0; l < L; ++l) {
    const LayerShape& s = shapes[l];
    PackedWeights<float> pw;
    p = carve_packed_buffers<float>(s, false, p, &pw);
    pw.input = p;
    p += input_elems[l];
    const LayerWeights<float>& lw = params[l];
    pack_b_bf16(lw.w_ih, s.d.C, true, s.d.C, s.GH, 0, s.GH, reinterpret_cast<bf16_t*>(const_cast<float*>(pw.input)));
    StepGemms<float>(solo, s, lw, pw, false).pack(s, false);  // the forward's own packing of W_hh, W_hn, W_hr
    pw.prepacked = true;
    w->layers.push_back(pw);
  }
  return w;
}

void stack_step_packed(const StepWeights& w, index_t N, const StackForwardArgs<float>& args) {
  step_layers<float>(w.cfg, N, args, &w.layers);
}

#define RNNKIT_INSTANTIATE_STACK(S)                                                                        \
  template CpuStackPlan plan_stack<S>(const StackConfig&, index_t, index_t, bool, std::vector<ParamSpec>, bool); \
  template void stack_forward<S>(const CpuStackPlan&, const StackForwardArgs<S>&, CpuStackCache<S>*);     \
  template void stack_backward<S>(CpuStackCache<S>&, const StackBackwardArgs<S>&);                        \
  template std::unique_ptr<CpuStackCache<S>> stack_cache_from_block<S>(const CpuStackPlan&, const S*,      \
                                                                        const index_t*, std::uint64_t);  \
  template void stack_step<S>(const StackConfig&, index_t, const StackForwardArgs<S>&);
RNNKIT_INSTANTIATE_STACK(float)
RNNKIT_INSTANTIATE_STACK(double)
#undef RNNKIT_INSTANTIATE_STACK

}  // namespace cpu
}  // namespace rnnkit
