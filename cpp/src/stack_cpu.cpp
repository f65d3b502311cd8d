// The layer stack on the CPU: layers x directions around the generic layer loop, dropout between
// layers, and the one allocation per call that everything is carved from (stack.h).
#include "rnnkit/stack.h"

#include <atomic>
#include <cstring>

#include <Eigen/Core>

#include "cpu_util.h"
#include "rnnkit/blas.h"
#include "rnnkit/team.h"

namespace rnnkit {
namespace {

using cpu::copy_n;
using cpu::splitmix64;

// Multiplies elements [begin, end) of layer `layer`'s output [T,N,D*P] by its dropout mask, in
// place. The same call applied to a gradient is dropout's backward.
template <typename S>
void apply_dropout(S* v, index_t begin, index_t end, double p, std::uint64_t seed, index_t layer) {
  if (p <= 0.0) return;
  if (p >= 1.0) {
    std::memset(v + begin, 0, static_cast<std::size_t>(end - begin) * sizeof(S));
    return;
  }
  const S scale = S(1.0 / (1.0 - p));
  for (index_t i = begin; i < end; ++i) {
    v[i] = dropout_uniform(seed, layer, i) < p ? S(0) : v[i] * scale;
  }
}

LayerDims layer_dims(const StackConfig& cfg, index_t layer, index_t T, index_t N) {
  return LayerDims{T, N, cfg.layer_input_size(layer), cfg.hidden_size, cfg.state_size()};
}

// Copies parameters into `dst` in spec order and returns views of the copies.
template <typename S>
std::vector<LayerWeights<S>> copy_params(const StackConfig& cfg,
                                         const std::vector<LayerWeights<S>>& src, S* dst) {
  std::vector<LayerWeights<S>> out(src.size());
  for (const ParamSpec& spec : stack_param_specs(cfg)) {
    index_t n = 1;
    for (index_t v : spec.shape) n *= v;
    const LayerWeights<S>& from = src[spec.group];
    LayerWeights<S>& to = out[spec.group];
    const S* s = nullptr;
    const S** slot = nullptr;
    switch (spec.role) {
      case kRoleWIh: s = from.w_ih; slot = &to.w_ih; break;
      case kRoleWHh: s = from.w_hh; slot = &to.w_hh; break;
      case kRoleBIh: s = from.b_ih; slot = &to.b_ih; break;
      case kRoleBHh: s = from.b_hh; slot = &to.b_hh; break;
      case kRoleWHr: s = from.w_hr; slot = &to.w_hr; break;
      default: s = from.ln[spec.role - kRoleLn0]; slot = &to.ln[spec.role - kRoleLn0]; break;
    }
    copy_n(dst, s, n);
    *slot = dst;
    dst += n;
  }
  return out;
}

}  // namespace

double dropout_uniform(std::uint64_t seed, index_t layer, index_t i) {
  const std::uint64_t stream = splitmix64(seed ^ splitmix64(static_cast<std::uint64_t>(layer) + 1));
  const std::uint64_t bits = splitmix64(stream + static_cast<std::uint64_t>(i));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

void check_stack_config(const StackConfig& cfg) {
  if (cfg.num_layers < 1) throw_expected("num_layers", "an integer >= 1", cfg.num_layers);
  if (cfg.num_directions != 1 && cfg.num_directions != 2) {
    throw_expected("num_directions", "1 or 2", cfg.num_directions);
  }
  if (cfg.input_size < 1) throw_expected("input_size", "an integer >= 1", cfg.input_size);
  if (cfg.hidden_size < 1) throw_expected("hidden_size", "an integer >= 1", cfg.hidden_size);
  if (cfg.proj_size < 0) throw_expected("proj_size", "an integer >= 0", cfg.proj_size);
  if (cfg.proj_size > 0 && cfg.cell != CellKind::kLSTM) {
    throw_expected("proj_size", "0 (projections exist for LSTM only)", cfg.proj_size);
  }
  if (cfg.proj_size >= cfg.hidden_size && cfg.proj_size > 0) {
    throw_expected("proj_size", concat("less than hidden_size (", cfg.hidden_size, ")"), cfg.proj_size);
  }
  if (!(cfg.dropout >= 0.0 && cfg.dropout <= 1.0)) throw_expected("dropout", "a probability in [0, 1]", cfg.dropout);
}

std::vector<ParamSpec> stack_param_specs(const StackConfig& cfg) {
  const CellInfo ci = cell_info(cfg.cell);
  const index_t GH = ci.gates * cfg.hidden_size;
  const index_t H = cfg.hidden_size;
  const index_t P = cfg.state_size();
  static const char* kLnNames[6] = {"ln_ih_weight", "ln_ih_bias", "ln_hh_weight",
                                    "ln_hh_bias", "ln_c_weight", "ln_c_bias"};
  std::vector<ParamSpec> specs;
  for (index_t l = 0; l < cfg.num_layers; ++l) {
    for (index_t d = 0; d < cfg.num_directions; ++d) {
      const index_t g = l * cfg.num_directions + d;
      // Plain string operations (no stream): this runs on every call from Python.
      const std::string sfx = "_l" + std::to_string(l) + (d == 1 ? "_reverse" : "");
      specs.push_back({"weight_ih" + sfx, {GH, cfg.layer_input_size(l)}, g, kRoleWIh});
      specs.push_back({"weight_hh" + sfx, {GH, P}, g, kRoleWHh});
      if (cfg.bias) {
        specs.push_back({"bias_ih" + sfx, {GH}, g, kRoleBIh});
        specs.push_back({"bias_hh" + sfx, {GH}, g, kRoleBHh});
      }
      if (cfg.proj_size > 0) specs.push_back({"weight_hr" + sfx, {P, H}, g, kRoleWHr});
      for (int p = 0; p < ci.ln_params; ++p) {
        specs.push_back({kLnNames[p] + sfx, {p < 4 ? GH : H}, g, kRoleLn0 + p});
      }
    }
  }
  return specs;
}

namespace {
// Threads pay off only when each step's GEMM is big enough to split: below ~2^19 multiply-adds
// per step the two barriers of a step cost more than half the step saves. Tests lower it to run
// the threaded code on small shapes.
std::atomic<index_t> g_min_parallel_step_work{index_t(1) << 19};
}  // namespace

void set_min_parallel_step_work(index_t work) { g_min_parallel_step_work.store(work < 0 ? 0 : work); }

int stack_team_size(const StackConfig& cfg, index_t T, index_t N) {
  const int wanted = ThreadTeam::instance().default_size();
  if (wanted <= 1) return 1;
  const index_t step_work = N * cell_info(cfg.cell).gates * cfg.hidden_size * cfg.state_size();
  if (step_work < g_min_parallel_step_work.load()) return 1;
  (void)T;
  return wanted;
}

StackFootprint stack_footprint(const StackConfig& cfg, index_t T, index_t N, bool training, int elem_bytes) {
  const index_t L = cfg.num_layers;
  const index_t D = cfg.num_directions;
  const index_t groups = cfg.groups();
  const index_t TN = checked_mul(T, N, "T*N");
  const index_t between = checked_mul(TN, D * cfg.state_size(), "layer output");
  StackFootprint f;
  const LayerSizes kept = layer_sizes(cfg.cell, layer_dims(cfg, 0, T, N), training, elem_bytes);
  if (training) {
    index_t params = 0;
    for (const ParamSpec& s : stack_param_specs(cfg)) {
      index_t n = 1;
      for (index_t v : s.shape) n = checked_mul(n, v, "parameters");
      params = checked_add(params, n, "parameters");
    }
    f.cache = checked_add(checked_mul(TN, cfg.input_size, "input"),
                          checked_mul(L - 1, between, "layer inputs"), "cache");
    f.cache = checked_add(f.cache, params, "cache");
    f.cache = checked_add(f.cache, checked_mul(groups, kept.forward_kept(), "layer states"), "cache");
    f.forward_scratch = kept.forward_scratch();
    f.backward_scratch = checked_add(kept.backward_scratch(),
                                     L > 1 ? checked_mul(2, between, "layer gradients") : 0,
                                     "backward scratch");
  } else {
    f.forward_scratch = checked_add(kept.forward_scratch(), kept.forward_kept(), "forward scratch");
    if (L > 1) f.forward_scratch = checked_add(f.forward_scratch, checked_mul(2, between, "layer outputs"), "forward scratch");
  }
  return f;
}

template <typename S>
void stack_forward(const StackConfig& cfg, index_t T, index_t N,
                   const std::vector<LayerWeights<S>>& params, const S* x, const S* h0,
                   const S* c0, const index_t* lengths, bool training, std::uint64_t dropout_seed,
                   S* y, S* h_n, S* c_n, StackCache<S>* cache) {
  const index_t L = cfg.num_layers;
  const index_t D = cfg.num_directions;
  const index_t H = cfg.hidden_size;
  const index_t P = cfg.state_size();
  const index_t TN = T * N;
  const index_t between = TN * D * P;
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  const int team = stack_team_size(cfg, T, N);
  const LayerSizes sz = layer_sizes(cfg.cell, layer_dims(cfg, 0, T, N), training, sizeof(S));
  const StackFootprint foot = stack_footprint(cfg, T, N, training, sizeof(S));

  Buffer<S> scratch(foot.forward_scratch, "forward scratch");
  ForwardScratch<S> fs;
  S* p = carve(sz, scratch.data(), &fs);

  std::vector<const S*> inputs(L);
  std::vector<S*> outputs(L);
  std::vector<LayerState<S>> states(cfg.groups());
  const std::vector<LayerWeights<S>>* weights = &params;
  S* x_copy = nullptr;

  if (training) {
    assert(cache != nullptr);
    cache->cfg = cfg;
    cache->dims0 = layer_dims(cfg, 0, T, N);
    cache->lengths.assign(lengths ? lengths : nullptr, lengths ? lengths + N : nullptr);
    cache->dropout_seed = dropout_seed;
    cache->block.allocate(foot.cache, "the training cache");
    S* c = cache->block.data();
    x_copy = c;  // filled by the team below
    inputs[0] = x_copy;
    c += TN * cfg.input_size;
    for (index_t l = 1; l < L; ++l) {
      outputs[l - 1] = c;
      inputs[l] = c;
      c += between;
    }
    S* param_copy = c;
    index_t param_elems = 0;
    for (const ParamSpec& s : stack_param_specs(cfg)) {
      index_t n = 1;
      for (index_t v : s.shape) n *= v;
      param_elems += n;
    }
    cache->weights = copy_params(cfg, params, param_copy);
    cache->param_elems = param_elems;
    c += param_elems;
    for (index_t g = 0; g < cfg.groups(); ++g) c = carve(sz, c, &states[g]);
    assert(c == cache->block.data() + foot.cache);
    weights = &cache->weights;
  } else {
    LayerState<S> shared;
    p = carve(sz, p, &shared);
    for (auto& st : states) st = shared;  // inference: every group reuses the same scratch
    inputs[0] = x;
    if (L > 1) {
      S* ping = p;
      S* pong = p + between;
      for (index_t l = 0; l + 1 < L; ++l) {
        outputs[l] = (l % 2 == 0) ? ping : pong;
        inputs[l + 1] = outputs[l];
      }
    }
  }
  outputs[L - 1] = y;

  ThreadTeam::instance().run(team, [&](const TeamContext& tc) {
    if (x_copy != nullptr) {
      // Layer 0's input: a copy, with padded steps zeroed (they are never read as data, and a
      // NaN left there by the caller must not reach dW_ih through 0 * NaN).
      const index_t C = cfg.input_size;
      const auto [r0, r1] = tc.split(TN);
      copy_n(x_copy + r0 * C, x + r0 * C, (r1 - r0) * C);
      for (index_t r = r0; lengths && r < r1; ++r) {
        if (r / N >= lengths[r % N]) std::memset(x_copy + r * C, 0, C * sizeof(S));
      }
      tc.barrier();
    }
    for (index_t l = 0; l < L; ++l) {
      const LayerDims dims = layer_dims(cfg, l, T, N);
      for (index_t d = 0; d < D; ++d) {
        const index_t g = l * D + d;
        layer_forward<S>(tc, cfg.cell, dims, (*weights)[g], inputs[l], h0 ? h0 + g * N * P : nullptr,
                         c0 ? c0 + g * N * H : nullptr, lengths, d == 1, training, outputs[l] + d * P,
                         D * P, h_n + g * N * P, (has_c && c_n) ? c_n + g * N * H : nullptr,
                         states[g], fs);
        tc.barrier();
      }
      if (training && l + 1 < L && cfg.dropout > 0.0) {
        const auto [e0, e1] = tc.split(between);
        apply_dropout(outputs[l], e0, e1, cfg.dropout, dropout_seed, l);
        tc.barrier();
      }
    }
  });
  if (training) {
    cache->inputs = std::move(inputs);
    cache->states = std::move(states);
  }
}

template <typename S>
void stack_backward(const StackCache<S>& cache, const S* dy, const S* dh_n, const S* dc_n,
                    const std::vector<LayerGrads<S>>& grads, S* dx, S* dh0, S* dc0) {
  if (cache.consumed) {
    throw std::invalid_argument(
        "cache: expected the cache of a forward that has not been backpropagated yet, got one that has "
        "(backward uses up what forward kept; run forward again)");
  }
  cache.consumed = true;
  const StackConfig& cfg = cache.cfg;
  const index_t T = cache.dims0.T, N = cache.dims0.N;
  const index_t L = cfg.num_layers;
  const index_t D = cfg.num_directions;
  const index_t H = cfg.hidden_size;
  const index_t P = cfg.state_size();
  const index_t between = T * N * D * P;
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  const index_t* lengths = cache.lengths.empty() ? nullptr : cache.lengths.data();
  const int team = stack_team_size(cfg, T, N);
  const LayerSizes sz = layer_sizes(cfg.cell, cache.dims0, true, sizeof(S));
  const StackFootprint foot = stack_footprint(cfg, T, N, true, sizeof(S));

  Buffer<S> scratch(foot.backward_scratch, "backward scratch");
  BackwardScratch<S> bs;
  S* p = carve(sz, scratch.data(), &bs);
  S* ping = L > 1 ? p : nullptr;
  S* pong = L > 1 ? p + between : nullptr;

  ThreadTeam::instance().run(team, [&](const TeamContext& tc) {
    const S* d_out = dy;  // dL/d(output of layer l), [T,N,D*P]
    for (index_t l = L - 1; l >= 0; --l) {
      const LayerDims dims = layer_dims(cfg, l, T, N);
      S* d_in = (l == 0) ? dx : ((l % 2 == 0) ? ping : pong);
      for (index_t d = 0; d < D; ++d) {
        const index_t g = l * D + d;
        layer_backward<S>(tc, cfg.cell, dims, cache.weights[g], cache.inputs[l], lengths, d == 1,
                          cache.states[g], d_out ? d_out + d * P : nullptr, D * P,
                          dh_n ? dh_n + g * N * P : nullptr, dc_n ? dc_n + g * N * H : nullptr,
                          grads[g], d_in, d > 0, dh0 + g * N * P,
                          (has_c && dc0) ? dc0 + g * N * H : nullptr, bs);
        tc.barrier();
      }
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

template <typename S>
void stack_step(const StackConfig& cfg, index_t N, const std::vector<LayerWeights<S>>& params, const S* x,
                const S* h, const S* c, S* y, S* h_new, S* c_new) {
  assert(cfg.num_directions == 1);
  const index_t L = cfg.num_layers, H = cfg.hidden_size, P = cfg.state_size();
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  const LayerDims d0 = layer_dims(cfg, 0, 1, N);
  const LayerSizes sz = layer_sizes(cfg.cell, d0, false, sizeof(S));  // T = 1: nothing packed
  // One buffer per thread, grown when needed and kept: a stream of steps allocates nothing.
  thread_local Buffer<S> scratch;
  const index_t need = checked_add(checked_add(sz.forward_scratch(), sz.forward_kept(), "step scratch"),
                                   L > 1 ? 2 * N * P : 0, "step scratch");
  if (scratch.size() < need) scratch.allocate(need, "step scratch");
  ForwardScratch<S> fs;
  LayerState<S> st;
  S* p = carve(sz, scratch.data(), &fs);
  p = carve(sz, p, &st);
  S* between[2] = {p, p + N * P};
  const TeamContext solo(nullptr, 0, 1);
  const S* in = x;
  for (index_t l = 0; l < L; ++l) {
    const LayerDims dims = layer_dims(cfg, l, 1, N);
    S* out = l + 1 == L ? y : between[l % 2];
    layer_forward<S>(solo, cfg.cell, dims, params[l], in, h + l * N * P, has_c ? c + l * N * H : nullptr,
                     nullptr, false, false, out, P, h_new + l * N * P, has_c ? c_new + l * N * H : nullptr,
                     st, fs);
    in = out;
  }
}

template void stack_step<float>(const StackConfig&, index_t, const std::vector<LayerWeights<float>>&,
                                const float*, const float*, const float*, float*, float*, float*);
template void stack_step<double>(const StackConfig&, index_t, const std::vector<LayerWeights<double>>&,
                                 const double*, const double*, const double*, double*, double*, double*);

template void stack_forward<float>(const StackConfig&, index_t, index_t,
                                   const std::vector<LayerWeights<float>>&, const float*,
                                   const float*, const float*, const index_t*, bool,
                                   std::uint64_t, float*, float*, float*, StackCache<float>*);
template void stack_forward<double>(const StackConfig&, index_t, index_t,
                                    const std::vector<LayerWeights<double>>&, const double*,
                                    const double*, const double*, const index_t*, bool,
                                    std::uint64_t, double*, double*, double*, StackCache<double>*);
template void stack_backward<float>(const StackCache<float>&, const float*, const float*,
                                    const float*, const std::vector<LayerGrads<float>>&, float*,
                                    float*, float*);
template void stack_backward<double>(const StackCache<double>&, const double*, const double*,
                                     const double*, const std::vector<LayerGrads<double>>&, double*,
                                     double*, double*);

}  // namespace rnnkit
