// The recurrent network on the CPU (cpu/network.h): embedding, layer stack, output layer and fused
// loss; generation.
#include "cpu/network.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <Eigen/Core>

#include "cpu/bf16_gemm.h"
#include "cpu/blas.h"
#include "cpu/team.h"
#include "cpu/util.h"
#include "common/network_rows.h"

namespace rnnkit {
namespace cpu {
namespace {

// The final states of the last layer, both directions side by side: rows [n0, n1) of [N, D*P].
template <typename S>
void gather_last_states(const NetworkConfig& cfg, index_t n0, index_t n1, index_t N, const S* h_n, S* features) {
  const index_t D = cfg.stack.num_directions, P = cfg.stack.state_size();
  const index_t first = (cfg.stack.num_layers - 1) * D;
  for (index_t n = n0; n < n1; ++n) {
    for (index_t d = 0; d < D; ++d) {
      copy_n(features + n * D * P + d * P, h_n + ((first + d) * N + n) * P, P);
    }
  }
}

// Writes softmax(row) in place.
template <typename S>
void softmax_in_place(S* row, index_t K) {
  Vec<S> v(row, K);
  const S mx = v.maxCoeff();
  v = (v - mx).exp();
  v /= ordered_sum(v);
}

// Cross-entropy of rows [r0, r1), summed; with `grad` (may alias `logits`) also dL/dlogits, where
// `inv` = 1 / (valid rows). One vectorised exp pass per row: the exponentials are kept (in `grad`,
// or `scratch_row`) and become the softmax.
template <typename S>
void cross_entropy_rows(const NetworkConfig& cfg, const S* logits, const std::int64_t* targets,
                        index_t r0, index_t r1, index_t N, const index_t* lengths, S* grad,
                        S* scratch_row, double inv, double* row_loss) {
  const index_t K = cfg.output_size;
  for (index_t r = r0; r < r1; ++r) {
    row_loss[r] = 0.0;
    const S* row = logits + r * K;
    const bool valid = !row_is_padding(cfg, lengths, N, r) && targets[r] != cfg.ignore_index;
    S* e = grad != nullptr ? grad + r * K : scratch_row;
    if (!valid) {
      if (grad != nullptr) std::memset(e, 0, static_cast<std::size_t>(K) * sizeof(S));
      continue;
    }
    const S target_logit = row[targets[r]];  // read before `e` (maybe `row` itself) is overwritten
    const S mx = ConstVec<S>(row, K).maxCoeff();
    Vec<S> ev(e, K);
    ev = (ConstVec<S>(row, K) - mx).exp();
    const double sum = static_cast<double>(ordered_sum(ev));
    row_loss[r] = static_cast<double>(mx) + std::log(sum) - static_cast<double>(target_logit);
    if (grad != nullptr) {
      ev *= static_cast<S>(inv / sum);
      e[targets[r]] -= static_cast<S>(inv);
    }
  }
}

// Squared error of rows [r0, r1), each row's sum into row_loss[r]; with `grad` (may alias `pred`)
// also dL/dpred for the mean over `denom` = valid rows * K.
template <typename S>
void squared_error_rows(const NetworkConfig& cfg, const S* pred, const S* targets, index_t r0, index_t r1,
                        index_t N, const index_t* lengths, S* grad, double denom, double* row_loss) {
  const index_t K = cfg.output_size;
  for (index_t r = r0; r < r1; ++r) {
    const bool valid = !row_is_padding(cfg, lengths, N, r);
    double total = 0.0;
    for (index_t k = 0; k < K; ++k) {
      const double diff = valid ? static_cast<double>(pred[r * K + k]) - static_cast<double>(targets[r * K + k]) : 0.0;
      total += diff * diff;
      if (grad != nullptr) grad[r * K + k] = static_cast<S>(2.0 * diff / denom);
    }
    row_loss[r] = total;
  }
}

}  // namespace

template <typename S>
CpuNetworkPlan plan_network(const NetworkConfig& cfg, index_t T, index_t N, bool training) {
  CpuNetworkPlan p;
  p.cfg = cfg;
  p.T = T;
  p.N = N;
  p.training = training;
  p.specs = network_param_specs(cfg);
  // The stack's own list serves only a training forward (it copies the parameters); an inference
  // call, a streaming step among them, does without building it.
  std::vector<ParamSpec> stack_specs;
  for (const ParamSpec& s : p.specs) {
    if (training && s.in_stack()) stack_specs.push_back(s);
  }
  p.stack = plan_stack<S>(cfg.stack, T, N, training, std::move(stack_specs));
  p.rows = cfg.head_rows(T, N);
  p.streaming = !training && T == 1 && cfg.stack.num_directions == 1;
  p.elems = network_call_elems(cfg, p.stack.footprint.cache, p.stack.footprint.forward_scratch, p.stack.shape.TN,
                               p.rows, training);
  return p;
}

template <typename S>
void network_forward(const CpuNetworkPlan& plan, const NetworkForwardArgs<S>& args, CpuNetworkCache<S>* cache) {
  const NetworkConfig& cfg = plan.cfg;
  const bool bf16 = cfg.stack.precision == Precision::kBfloat16;  // the output layer's GEMMs too
  const NetworkWeights<S>& w = *args.weights;
  const NetworkInputs& in = args.in;
  const bool training = plan.training;
  const index_t T = plan.T, N = plan.N;
  const index_t E = cfg.stack.input_size, F = cfg.feature_size(), K = cfg.output_size;
  const index_t R = plan.rows;
  const bool sequence = cfg.head == HeadKind::kSequence;
  S* const outputs = args.outputs;
  assert(training == (cache != nullptr));

  // Scratch: the embedded input, the head's features and the outputs, as needed.
  const index_t emb_n = cfg.vocab_size > 0 ? T * N * E : 0;
  const index_t feat_n = training ? 0 : R * F;
  const index_t out_n = (training || outputs != nullptr) ? 0 : R * K;
  Buffer<S> scratch(emb_n + feat_n + out_n, "network scratch");
  S* emb = scratch.data();
  S* features = emb + emb_n;
  S* logits = features + feat_n;
  if (training) {
    cache->plan_ = plan;
    cache->block.allocate(R * F + R * K + K * F, "the network cache");
    cache->features = cache->block.data();
    cache->d_out = cache->features + R * F;
    cache->out_w = cache->d_out + R * K;
    copy_n(cache->out_w, w.out_w, K * F);
    features = cache->features;
    logits = cache->d_out;
    if (cfg.vocab_size > 0) cache->tokens.assign(in.tokens, in.tokens + T * N);
  } else if (outputs != nullptr) {
    logits = outputs;
  }

  const S* x = static_cast<const S*>(in.x);
  if (cfg.vocab_size > 0) {
    for (index_t r = 0; r < T * N; ++r) copy_n(emb + r * E, w.embedding + in.tokens[r] * E, E);
    x = emb;
  }
  // The sequence head reads the last layer's outputs straight from where the stack writes them.
  Buffer<S> y_scratch(sequence ? 0 : T * N * F, "stack output");
  S* y = sequence ? features : y_scratch.data();
  StackForwardArgs<S> sf;
  sf.params = &w.stack;
  sf.x = x;
  sf.state0 = args.state0;
  sf.lengths = in.lengths;
  sf.dropout_seed = args.dropout_seed;
  sf.y = y;  // a last head reads the final states: y is then scratch
  sf.state_n = args.state_n;
  if (plan.streaming) {
    // A streaming step: the allocation-free one-step path (zero states made here when absent).
    const index_t groups = cfg.stack.groups(), P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
    const bool has_c = plan.stack.shape.cell.has_cell_state;
    const StatePair<const S*>& s0 = args.state0;
    Buffer<S> zeros((s0.h ? 0 : groups * N * P) + (has_c && !s0.c ? groups * N * H : 0), "zero state");
    zeros.zero();
    sf.state0.h = s0.h ? s0.h : zeros.data();
    sf.state0.c = has_c ? (s0.c ? s0.c : zeros.data() + (s0.h ? 0 : groups * N * P)) : nullptr;
    stack_step<S>(cfg.stack, N, sf);
  } else {
    stack_forward<S>(plan.stack, sf, training ? &cache->stack : nullptr);
  }
  // The head, split by rows over the team: outputs = features V^T + c, then the loss.
  const int team = plan.stack.team;
  const bool ce = cfg.loss == LossKind::kCrossEntropy;
  const bool with_loss = args.targets != nullptr && args.loss != nullptr;
  double scale = 0.0;  // 1 / (what the loss averages over)
  if (with_loss) {
    const index_t valid = count_valid_rows(cfg, static_cast<const std::int64_t*>(args.targets), R, N, in.lengths);
    if (valid == 0) {
      throw std::invalid_argument("targets: expected at least one target that is not padding or ignore_index, got none");
    }
    scale = 1.0 / (static_cast<double>(valid) * (ce ? 1.0 : static_cast<double>(K)));
  }
  S* grad = training ? cache->d_out : nullptr;  // the loss's gradient, in place over the cached logits
  Buffer<S> softmax_rows(with_loss && ce && grad == nullptr ? team * K : 0, "softmax rows");
  // Each row's loss, summed in row order below: the total does not depend on the thread count.
  std::vector<double> row_loss(with_loss ? static_cast<std::size_t>(R) : 0, 0.0);
  ThreadTeam::instance().run(team, [&](const TeamContext& tc) {
    if (!sequence) {
      const auto [n0, n1] = tc.split(N);
      gather_last_states(cfg, n0, n1, N, args.state_n.h, features);
      tc.barrier();
    }
    const auto [r0, r1] = tc.split(R);
    for (index_t r = r0; r < r1; ++r) copy_n(logits + r * K, w.out_b, K);
    tc.barrier();
    tc.gemm_blocks(R, 1, kDeterministicRows, [&](index_t b0, index_t b1) {
      gemm_at_precision<S>(bf16, Trans::kNo, Trans::kYes, b1 - b0, K, F, features + b0 * F, F, w.out_w, F, S(1),
           logits + b0 * K, K);
    });
    tc.barrier();
    if (outputs != nullptr && outputs != logits) copy_n(outputs + r0 * K, logits + r0 * K, (r1 - r0) * K);
    if (with_loss) {
      if (ce) {
        cross_entropy_rows(cfg, logits, static_cast<const std::int64_t*>(args.targets), r0, r1, N, in.lengths,
                           grad, softmax_rows.data() + tc.tid() * K, scale, row_loss.data());
      } else {
        squared_error_rows(cfg, logits, static_cast<const S*>(args.targets), r0, r1, N, in.lengths, grad,
                           1.0 / scale, row_loss.data());
      }
    }
    if (outputs != nullptr && args.softmax_outputs) {  // after the loss, which reads the logits
      for (index_t r = r0; r < r1; ++r) softmax_in_place(outputs + r * K, K);
    }
  });
  if (with_loss) {
    double total = 0.0;
    for (double v : row_loss) total += v;
    *args.loss = total * scale;
    if (training) cache->has_loss_grad_ = true;
  }
}

template <typename S>
void network_backward(CpuNetworkCache<S>& cache, const NetworkBackwardArgs<S>& args) {
  const CpuNetworkPlan& plan = cache.plan_;
  const NetworkConfig& cfg = plan.cfg;
  const bool bf16 = cfg.stack.precision == Precision::kBfloat16;  // the output layer's GEMMs too
  const NetworkGrads<S>& grads = *args.grads;
  const index_t T = plan.T, N = plan.N, R = plan.rows;
  const index_t E = cfg.stack.input_size, F = cfg.feature_size(), K = cfg.output_size;
  const index_t groups = cfg.stack.groups(), P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  const bool sequence = cfg.head == HeadKind::kSequence;
  const bool has_c = plan.stack.shape.cell.has_cell_state;
  const S* d_out = args.d_outputs != nullptr ? args.d_outputs : cache.d_out;
  S* dh0 = args.d_state0.h;
  S* dc0 = args.d_state0.c;

  // The embedding's gradient goes through dL/d(embedded input); a dense input's goes to args.dx.
  const index_t demb_n = cfg.vocab_size > 0 ? T * N * E : 0;
  const index_t dhn_n = sequence ? 0 : groups * N * P;
  const index_t state_n = (dh0 ? 0 : groups * N * P) + ((has_c && !dc0) ? groups * N * H : 0);
  Buffer<S> scratch(R * F + demb_n + dhn_n + state_n, "network backward scratch");
  S* d_features = scratch.data();
  S* d_emb = demb_n ? d_features + R * F : nullptr;
  S* dh_n = dhn_n ? d_features + R * F + demb_n : nullptr;
  S* spare = d_features + R * F + demb_n + dhn_n;
  if (dh0 == nullptr) { dh0 = spare; spare += groups * N * P; }
  if (has_c && dc0 == nullptr) dc0 = spare;

  // Output layer: dV += d_out^T features, dc += column sums, d_features = d_out V; each thread
  // owns rows of dV and entries of dc, rows of d_features.
  const int team = plan.stack.team;
  const index_t D = cfg.stack.num_directions, first = (cfg.stack.num_layers - 1) * D;
  ThreadTeam::instance().run(team, [&](const TeamContext& tc) {
    tc.gemm_blocks(K, 16, kDeterministicRows, [&](index_t k0, index_t k1) {
      gemm_at_precision<S>(bf16, Trans::kYes, Trans::kNo, k1 - k0, F, R, d_out + k0, K, cache.features, F, S(1),
           grads.out_w + k0 * F, F);
      Vec<S> db(grads.out_b + k0, k1 - k0);
      for (index_t r = 0; r < R; ++r) db += ConstVec<S>(d_out + r * K + k0, k1 - k0);
    });
    tc.gemm_blocks(R, 1, kDeterministicRows, [&](index_t r0, index_t r1) {
      gemm_at_precision<S>(bf16, Trans::kNo, Trans::kNo, r1 - r0, F, K, d_out + r0 * K, K, cache.out_w, F, S(0),
           d_features + r0 * F, F);
    });
    if (!sequence) {
      // The last head's gradient enters the stack as dh_n of the last layer.
      const auto [n0, n1] = tc.split(N);
      for (index_t g = 0; g < groups; ++g) {
        std::memset(dh_n + (g * N + n0) * P, 0, static_cast<std::size_t>((n1 - n0) * P) * sizeof(S));
      }
      for (index_t n = n0; n < n1; ++n) {
        for (index_t d = 0; d < D; ++d) {
          copy_n(dh_n + ((first + d) * N + n) * P, d_features + n * F + d * P, P);
        }
      }
    }
  });
  StackBackwardArgs<S> sb;
  sb.grads = &grads.stack;
  sb.dy = sequence ? d_features : nullptr;
  sb.d_state_n.h = dh_n;
  sb.dx = cfg.vocab_size > 0 ? d_emb : args.dx;
  sb.d_state0 = {dh0, has_c ? dc0 : nullptr};
  stack_backward<S>(cache.stack, sb);
  if (cfg.vocab_size > 0) {
    // Each thread adds the rows of the embedding ids in its range, in row order: no two threads
    // touch the same row, and each row sums in the same order for any thread count.
    const index_t* lengths = cache.stack.lengths.empty() ? nullptr : cache.stack.lengths.data();
    ThreadTeam::instance().run(team, [&](const TeamContext& tc) {
      const auto [v0, v1] = tc.split(cfg.vocab_size);
      for (index_t r = 0; r < T * N; ++r) {
        const std::int64_t id = cache.tokens[r];
        if (id < v0 || id >= v1) continue;
        if (lengths && r / N >= lengths[r % N]) continue;  // padded: zero gradient
        Vec<S>(grads.embedding + id * E, E) += ConstVec<S>(d_emb + r * E, E);
      }
    });
  }
}

template <typename S>
void network_generate(const NetworkConfig& cfg, const NetworkGenerateArgs<S>& args) {
  const index_t K = cfg.output_size, groups = cfg.stack.groups();
  const index_t P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  NetworkConfig step_cfg = cfg;
  step_cfg.head = HeadKind::kSequence;
  // Two shapes of call: the prefix, then one token at a time.
  const CpuNetworkPlan prefix_plan = plan_network<S>(step_cfg, args.prefix_len, 1, false);
  const CpuNetworkPlan token_plan = plan_network<S>(step_cfg, 1, 1, false);
  Buffer<S> buf(args.prefix_len * K + groups * P + (has_c ? groups * H : 0), "generation");
  S* logits = buf.data();
  S* h_next = logits + args.prefix_len * K;
  S* c_next = has_c ? h_next + groups * P : nullptr;
  NetworkForwardArgs<S> fa;
  fa.weights = args.weights;
  fa.in.N = 1;
  fa.state0 = {args.state.h, args.state.c};
  fa.outputs = logits;
  fa.state_n = {h_next, c_next};
  run_generation(
      args, K,
      [&](const std::int64_t* tokens, index_t T, bool first) {
        fa.in.tokens = tokens;
        fa.in.T = T;
        network_forward<S>(first ? prefix_plan : token_plan, fa, nullptr);
        copy_n(args.state.h, h_next, groups * P);
        if (has_c) copy_n(args.state.c, c_next, groups * H);
      },
      [&](index_t T) -> const S* { return logits + (T - 1) * K; });
}

#define RNNKIT_INSTANTIATE_NETWORK(S)                                                                  \
  template CpuNetworkPlan plan_network<S>(const NetworkConfig&, index_t, index_t, bool);               \
  template void network_forward<S>(const CpuNetworkPlan&, const NetworkForwardArgs<S>&,                \
                                   CpuNetworkCache<S>*);                                               \
  template void network_backward<S>(CpuNetworkCache<S>&, const NetworkBackwardArgs<S>&);               \
  template void network_generate<S>(const NetworkConfig&, const NetworkGenerateArgs<S>&);
RNNKIT_INSTANTIATE_NETWORK(float)
RNNKIT_INSTANTIATE_NETWORK(double)
#undef RNNKIT_INSTANTIATE_NETWORK

std::unique_ptr<NetworkStepWeights> pack_network_step(const NetworkConfig& cfg, const NetworkWeights<float>& w) {
  if (cfg.head != HeadKind::kSequence) {
    throw_expected("a step snapshot's network", "head='sequence'", "head='last'");
  }
  auto ws = std::make_unique<NetworkStepWeights>();
  ws->cfg = cfg;
  ws->stack = pack_step_weights(cfg.stack, w.stack);
  const index_t F = cfg.feature_size(), K = cfg.output_size;
  ws->head.allocate(bf16_packed_elems<float>(F, K), "step snapshot head");
  pack_b_bf16(w.out_w, F, true, F, K, 0, K, reinterpret_cast<bf16_t*>(ws->head.data()));
  return ws;
}

template <typename S>
void network_step(const NetworkConfig& cfg, const NetworkWeights<S>& w, const NetworkInputs& in,
                  StatePair<const S*> state0, S* outputs, StatePair<S*> state_n, bool softmax,
                  const NetworkStepWeights* packed) {
  assert(in.T == 1 && state0.h != nullptr && cfg.head == HeadKind::kSequence);
  const index_t N = in.N, E = cfg.stack.input_size, F = cfg.feature_size(), K = cfg.output_size;
  // This thread's scratch, kept: the embedded tokens and the top layer's outputs (the features).
  thread_local Buffer<S> scratch;
  const index_t emb_n = cfg.vocab_size > 0 ? N * E : 0;
  const index_t need = checked_add(emb_n, N * F, "network step scratch");
  if (scratch.size() < need) scratch.allocate(need, "network step scratch");
  S* emb = scratch.data();
  S* features = emb + emb_n;
  const S* x = static_cast<const S*>(in.x);
  if (cfg.vocab_size > 0) {
    for (index_t n = 0; n < N; ++n) copy_n(emb + n * E, w.embedding + in.tokens[n] * E, E);
    x = emb;
  }
  StackForwardArgs<S> sf;
  sf.params = &w.stack;
  sf.x = x;
  sf.state0 = state0;
  sf.y = features;
  sf.state_n = state_n;
  for (index_t n = 0; n < N; ++n) copy_n(outputs + n * K, w.out_b, K);
  if constexpr (std::is_same_v<S, float>) {
    if (packed != nullptr) {
      stack_step_packed(*packed->stack, N, sf);
      packed_gemm_bf16_from_float(N, F, K, 0, K, features, F, reinterpret_cast<const bf16_t*>(packed->head.data()),
                                  1.0f, outputs, K);
    }
  }
  if (packed == nullptr) {
    stack_step<S>(cfg.stack, N, sf);
    // The stack steps in float32 (stack_step); the output layer at the network's precision, as
    // the forward's head and the CUDA backend's step.
    const bool bf16 = cfg.stack.precision == Precision::kBfloat16;
    gemm_at_precision<S>(bf16, Trans::kNo, Trans::kYes, N, K, F, features, F, w.out_w, F, S(1), outputs, K);
  }
  if (softmax) {
    for (index_t n = 0; n < N; ++n) softmax_in_place(outputs + n * K, K);
  }
}

template void network_step<float>(const NetworkConfig&, const NetworkWeights<float>&, const NetworkInputs&,
                                   StatePair<const float*>, float*, StatePair<float*>, bool,
                                   const NetworkStepWeights*);
template void network_step<double>(const NetworkConfig&, const NetworkWeights<double>&, const NetworkInputs&,
                                    StatePair<const double*>, double*, StatePair<double*>, bool,
                                    const NetworkStepWeights*);

}  // namespace cpu
}  // namespace rnnkit
