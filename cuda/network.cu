// The recurrent network on the CUDA backend (network.h): embedding, the layer stack of stack.cu,
// the output layer (cuBLAS) and the fused loss, as the CPU backend's cpu/network.cpp does them.
#include "network.h"

#include <cmath>
#include <limits>
#include <vector>

#include "bf16.h"
#include "common/network_rows.h"
#include "dev_blas.h"
#include "kernels.h"

namespace rnnkit {
namespace cuda {
namespace {

// ---- kernel bodies -------------------------------------------------------------------------------
// out [rows, E] = table[tokens[r]] row by row (the embedding lookup).
template <typename S>
struct EmbedRows {
  index_t rows, E;
  const std::int64_t* tokens;
  const S* table;
  S* out;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < rows * E; i += th.stride()) out[i] = table[tokens[i / E] * E + i % E];
  }
};

// features [N, D*P] = the last layer's final states of both directions, side by side (a "last"
// head), from h_n [L*D, N, P]; `scatter` runs it backwards (dh_n from d_features, dh_n zeroed).
template <typename S>
struct LastStates {
  index_t N, D, P, first;  // first: the last layer's first group
  const S* from;
  S* to;
  bool scatter;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < N * D * P; i += th.stride()) {
      const index_t n = i / (D * P), d = (i / P) % D, p = i % P;
      const index_t state = ((first + d) * N + n) * P + p;
      if (scatter) {
        to[state] = from[i];
      } else {
        to[i] = from[state];
      }
    }
  }
};

// out [R, K] = the bias row in every row (the GEMM then adds features V^T).
template <typename S>
struct FillRows {
  index_t R, K;
  const S* row;
  S* out;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < R * K; i += th.stride()) out[i] = row[i % K];
  }
};

RNNKIT_DEVICE bool padded_row(const index_t* lengths, bool sequence, index_t N, index_t r) {
  return sequence && lengths != nullptr && r / N >= lengths[r % N];
}

// The block's threads' values reduced by `op` in a fixed tree order (every thread gets the result).
// red: the block's shared memory, a double per thread.
template <typename Op>
RNNKIT_DEVICE double block_reduce(const Thread& th, double* red, double v, Op op) {
  red[th.thread] = v;
  for (index_t s = th.block_dim / 2; s > 0; s /= 2) {
    th.sync();
    if (th.thread < s) red[th.thread] = op(red[th.thread], red[th.thread + s]);
  }
  th.sync();
  const double out = red[0];
  th.sync();  // before red is written again
  return out;
}

struct MaxOp {
  RNNKIT_DEVICE double operator()(double a, double b) const { return a > b ? a : b; }
};
struct SumOp {
  RNNKIT_DEVICE double operator()(double a, double b) const { return a + b; }
};

// A row's max and the sum of exp(x - max) over it [K], each a fixed-order block reduction (every
// thread gets both): what softmax and the cross-entropy need.
template <typename S>
RNNKIT_DEVICE void max_and_exp_sum(const Thread& th, double* red, const S* row, index_t K, double* mx, double* sum) {
  double m = -std::numeric_limits<double>::infinity();
  for (index_t k = th.thread; k < K; k += th.block_dim) m = MaxOp{}(m, static_cast<double>(row[k]));
  m = block_reduce(th, red, m, MaxOp{});
  double s = 0.0;
  for (index_t k = th.thread; k < K; k += th.block_dim) s += std::exp(static_cast<double>(row[k]) - m);
  *sum = block_reduce(th, red, s, SumOp{});
  *mx = m;
}

// Cross-entropy, one block per row of logits [R, K]: row_loss[r] = logsumexp(row) - row[target]
// (0 for a padded or ignore_index row), and with `grad` (may alias logits) dL/dlogits for the mean
// over the valid rows (inv = 1 / their count): softmax(row) * inv, minus inv at the target.
template <typename S>
struct CrossEntropyRows {
  index_t R, K, N, ignore_index;
  bool sequence;
  const S* logits;
  const std::int64_t* targets;
  const index_t* lengths;
  S* grad;
  double inv;
  double* row_loss;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    double* red = static_cast<double*>(th.shared);
    for (index_t r = th.block; r < R; r += th.grid_dim) {  // the same rows for the whole block
      const S* row = logits + r * K;
      const bool padded = padded_row(lengths, sequence, N, r);
      const std::int64_t target = padded ? ignore_index : targets[r];
      if (target == ignore_index) {
        if (grad != nullptr) {
          for (index_t k = th.thread; k < K; k += th.block_dim) grad[r * K + k] = S(0);
        }
        if (th.thread == 0) row_loss[r] = 0.0;
        continue;
      }
      // Read before any thread writes the gradient over it (the reductions' barriers come first).
      const double target_logit = static_cast<double>(row[target]);
      double mx = 0.0, sum = 0.0;
      max_and_exp_sum(th, red, row, K, &mx, &sum);
      if (th.thread == 0) row_loss[r] = mx + std::log(sum) - target_logit;
      if (grad != nullptr) {
        for (index_t k = th.thread; k < K; k += th.block_dim) {
          double g = std::exp(static_cast<double>(row[k]) - mx) * (inv / sum);
          if (k == target) g -= inv;
          grad[r * K + k] = static_cast<S>(g);
        }
      }
    }
  }
};

// softmax over each row of out [R, K], in place, one block per row.
template <typename S>
struct SoftmaxRows {
  index_t R, K;
  S* out;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    double* red = static_cast<double*>(th.shared);
    for (index_t r = th.block; r < R; r += th.grid_dim) {
      S* row = out + r * K;
      double mx = 0.0, sum = 0.0;
      max_and_exp_sum(th, red, row, K, &mx, &sum);
      for (index_t k = th.thread; k < K; k += th.block_dim) {
        row[k] = static_cast<S>(std::exp(static_cast<double>(row[k]) - mx) / sum);
      }
    }
  }
};

// Squared error, one thread per row of pred [R, K]: row_loss[r] = sum_k (pred - target)^2 (0 for a
// padded row), and with `grad` (may alias pred) 2 (pred - target) / denom.
template <typename S>
struct SquaredErrorRows {
  index_t R, K, N;
  bool sequence;
  const S* pred;
  const S* targets;
  const index_t* lengths;
  S* grad;
  double denom;
  double* row_loss;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t r = th.global(); r < R; r += th.stride()) {
      const bool valid = !padded_row(lengths, sequence, N, r);
      double total = 0.0;
      for (index_t k = 0; k < K; ++k) {
        const double diff = valid ? static_cast<double>(pred[r * K + k]) - static_cast<double>(targets[r * K + k]) : 0.0;
        total += diff * diff;
        if (grad != nullptr) grad[r * K + k] = static_cast<S>(2.0 * diff / denom);
      }
      row_loss[r] = total;
    }
  }
};

// grad [vocab, E] += d_emb [TN, E] row by row at each row's token (padded steps add nothing). A
// thread owns column e of the ids in one of `buckets` residue classes and adds their rows in row
// order: no two threads touch one element, and each element sums in the CPU's order.
template <typename S>
struct EmbeddingGrad {
  index_t TN, N, E, buckets;
  const std::int64_t* tokens;
  const index_t* lengths;
  const S* d_emb;
  S* grad;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    for (index_t i = th.global(); i < E * buckets; i += th.stride()) {
      const index_t e = i % E, bucket = i / E;
      for (index_t r = 0; r < TN; ++r) {
        const std::int64_t id = tokens[r];
        if (id % buckets != bucket) continue;
        if (lengths != nullptr && r / N >= lengths[r % N]) continue;
        grad[id * E + e] += d_emb[r * E + e];
      }
    }
  }
};

constexpr int kRowThreads = 256;  // a loss or softmax row's block
constexpr index_t kEmbeddingBuckets = 64;

// Host ids to the device (tokens, class-id targets, lengths).
void ids_to_device(Stream stream, DeviceBuffer<index_t>& dst, const std::int64_t* src, index_t n, const char* what) {
  dst.allocate(n, what);
  copy_to_device(dst.data(), src, static_cast<std::size_t>(n) * sizeof(index_t), stream);
}

template <typename S>
void copy_elems(Stream stream, S* dst, const S* src, index_t n) {
  if (n > 0) copy_on_device(dst, src, static_cast<std::size_t>(n) * sizeof(S), stream);
}

// The output layer's bf16 slots at precision="bfloat16" (its operands: features [R, F], the
// logits' gradient [R, K], V [K, F]); none at float32.
template <typename S>
Bf16Scratch head_bf16_scratch(const NetworkConfig& cfg, index_t R) {
  const bool on = std::is_same_v<S, float> && cfg.stack.precision == Precision::kBfloat16;
  const index_t F = cfg.feature_size(), K = cfg.output_size;
  index_t elems = checked_mul(R, F > K ? F : K, "bf16 head slot");
  if (K * F > elems) elems = K * F;
  return Bf16Scratch(on, elems);
}

}  // namespace

template <typename S>
CudaNetworkPlan plan_network(const NetworkConfig& cfg, index_t T, index_t N, bool training) {
  CudaNetworkPlan p;
  p.cfg = cfg;
  p.T = T;
  p.N = N;
  p.training = training;
  p.specs = network_param_specs(cfg);
  std::vector<ParamSpec> stack_specs;
  for (const ParamSpec& s : p.specs) {
    if (s.in_stack()) stack_specs.push_back(s);
  }
  // Inference of one step, unidirectional, runs its stack in float32 whatever the precision, as the
  // CPU's streaming step does (cpu/network.cpp); the output layer keeps the precision.
  StackConfig stack_cfg = cfg.stack;
  if (!training && T == 1 && cfg.stack.num_directions == 1) stack_cfg.precision = Precision::kFloat32;
  p.stack = cuda::plan_stack<S>(stack_cfg, T, N, training, std::move(stack_specs));
  p.rows = cfg.head_rows(T, N);
  p.elems = network_call_elems(cfg, p.stack.footprint.cache, p.stack.footprint.forward_scratch, p.stack.shape.TN,
                               p.rows, training);
  return p;
}

template <typename S>
void network_forward(const CudaNetworkPlan& plan, const NetworkForwardArgs<S>& args, CudaNetworkCache<S>* cache) {
  const NetworkConfig& cfg = plan.cfg;
  const NetworkWeights<S>& w = *args.weights;
  const NetworkInputs& in = args.in;
  const bool training = plan.training;
  const index_t T = plan.T, N = plan.N, TN = T * N;
  const index_t E = cfg.stack.input_size, F = cfg.feature_size(), K = cfg.output_size, R = plan.rows;
  const bool sequence = cfg.head == HeadKind::kSequence;
  const bool ce = cfg.loss == LossKind::kCrossEntropy;
  const bool with_loss = args.targets != nullptr && args.loss != nullptr;
  const Stream stream = current_stream();
  refuse_external_capture(stream, "a network call");
  assert(training == (cache != nullptr));

  // What the loss averages over, counted on the host where the ids are (as the CPU does).
  double scale = 0.0;
  if (with_loss) {
    const index_t valid = count_valid_rows(cfg, static_cast<const std::int64_t*>(args.targets), R, N, in.lengths);
    if (valid == 0) {
      throw std::invalid_argument("targets: expected at least one target that is not padding or ignore_index, got none");
    }
    scale = 1.0 / (static_cast<double>(valid) * (ce ? 1.0 : static_cast<double>(K)));
  }

  // Scratch: the embedded input, the head's features and logits, the stack output of a last head.
  const index_t emb_n = cfg.vocab_size > 0 ? TN * E : 0;
  const index_t feat_n = training ? 0 : R * F;
  const index_t out_n = (training || args.outputs != nullptr) ? 0 : R * K;
  const index_t y_n = sequence ? 0 : TN * F;
  DeviceBuffer<S> scratch(emb_n + feat_n + out_n + y_n, "network scratch");
  S* emb = scratch.data();
  S* features = emb + emb_n;
  S* logits = features + feat_n;
  S* y_last = logits + out_n;
  DeviceBuffer<index_t> tokens_local, targets_dev, lengths_dev;
  DeviceBuffer<double> row_loss(with_loss ? R : 0, "per-row losses");
  DeviceBuffer<index_t>& tokens = training ? cache->tokens : tokens_local;
  if (training) {
    cache->plan_ = plan;
    cache->block.allocate(R * F + R * K + K * F, "the network cache");
    cache->features = cache->block.data();
    cache->d_out = cache->features + R * F;
    cache->out_w = cache->d_out + R * K;
    copy_elems(stream, cache->out_w, w.out_w, K * F);
    features = cache->features;
    logits = cache->d_out;
  } else if (args.outputs != nullptr) {
    logits = args.outputs;
  }

  const S* x = static_cast<const S*>(in.x);
  if (cfg.vocab_size > 0) {
    ids_to_device(stream, tokens, in.tokens, TN, "token ids");
    RNNKIT_LAUNCH(stream, TN * E, (EmbedRows<S>{TN, E, tokens.data(), w.embedding, emb}));
    x = emb;
  }
  StackForwardArgs<S> sf;
  sf.params = &w.stack;
  sf.x = x;
  sf.state0 = args.state0;
  sf.lengths = in.lengths;
  sf.dropout_seed = args.dropout_seed;
  sf.y = sequence ? features : y_last;  // the sequence head reads the stack's output where it lands
  sf.state_n = args.state_n;
  cuda::stack_forward<S>(plan.stack, sf, training ? &cache->stack : nullptr);

  if (!sequence) {
    const index_t D = cfg.stack.num_directions, P = cfg.stack.state_size();
    RNNKIT_LAUNCH(stream, N * F,
                  (LastStates<S>{N, D, P, (cfg.stack.num_layers - 1) * D, args.state_n.h, features, false}));
  }
  RNNKIT_LAUNCH(stream, R * K, (FillRows<S>{R, K, w.out_b, logits}));
  const Bf16Scratch bf16 = head_bf16_scratch<S>(cfg, R);  // the output layer at the stack's precision
  gemm_at_precision<S>(bf16.slots, stream, Op::kN, Op::kT, R, K, F, {features, F}, {w.out_w, F}, S(1), logits, K);
  if (args.outputs != nullptr && args.outputs != logits) copy_elems(stream, args.outputs, logits, R * K);

  if (with_loss) {
    if (in.lengths != nullptr && sequence) ids_to_device(stream, lengths_dev, in.lengths, N, "sequence lengths");
    const index_t* lengths = lengths_dev.size() > 0 ? lengths_dev.data() : nullptr;
    S* grad = training ? cache->d_out : nullptr;  // over the cached logits, as on the CPU
    if (ce) {
      ids_to_device(stream, targets_dev, static_cast<const std::int64_t*>(args.targets), R, "targets");
      RNNKIT_LAUNCH_BLOCKS(stream, R < kMaxBlocks ? R : kMaxBlocks, kRowThreads, kRowThreads * sizeof(double),
                           (CrossEntropyRows<S>{R, K, N, cfg.ignore_index, sequence, logits, targets_dev.data(),
                                                lengths, grad, scale, row_loss.data()}));
    } else {
      RNNKIT_LAUNCH(stream, R,
                    (SquaredErrorRows<S>{R, K, N, sequence, logits, static_cast<const S*>(args.targets), lengths, grad,
                                         1.0 / scale, row_loss.data()}));
    }
  }
  if (args.outputs != nullptr && args.softmax_outputs) {  // after the loss, which reads the logits
    RNNKIT_LAUNCH_BLOCKS(stream, R < kMaxBlocks ? R : kMaxBlocks, kRowThreads, kRowThreads * sizeof(double),
                         (SoftmaxRows<S>{R, K, args.outputs}));
  }
  if (with_loss) {
    // Each row's loss, summed in row order on the host: the CPU's order.
    std::vector<double> host(static_cast<std::size_t>(R));
    copy_to_host(host.data(), row_loss.data(), host.size() * sizeof(double), stream);
    double total = 0.0;
    for (double v : host) total += v;
    *args.loss = total * scale;
    if (training) cache->has_loss_grad_ = true;
  }
  synchronize(stream);  // the scratch is freed on return
}

template <typename S>
void network_backward(CudaNetworkCache<S>& cache, const NetworkBackwardArgs<S>& args) {
  const CudaNetworkPlan& plan = cache.plan_;
  const NetworkConfig& cfg = plan.cfg;
  const NetworkGrads<S>& grads = *args.grads;
  const index_t T = plan.T, N = plan.N, R = plan.rows, TN = T * N;
  const index_t E = cfg.stack.input_size, F = cfg.feature_size(), K = cfg.output_size;
  const index_t groups = cfg.stack.groups(), P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  const bool sequence = cfg.head == HeadKind::kSequence;
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  const S* d_out = args.d_outputs != nullptr ? args.d_outputs : cache.d_out;
  const Stream stream = current_stream();
  refuse_external_capture(stream, "a network call");

  const index_t demb_n = cfg.vocab_size > 0 ? TN * E : 0;
  const index_t dhn_n = sequence ? 0 : groups * N * P;
  const index_t state_n = (args.d_state0.h ? 0 : groups * N * P) + ((has_c && !args.d_state0.c) ? groups * N * H : 0);
  DeviceBuffer<S> scratch(R * F + demb_n + dhn_n + state_n, "network backward scratch");
  S* d_features = scratch.data();
  S* d_emb = demb_n ? d_features + R * F : nullptr;
  S* dh_n = dhn_n ? d_features + R * F + demb_n : nullptr;
  S* spare = d_features + R * F + demb_n + dhn_n;
  S* dh0 = args.d_state0.h;
  S* dc0 = args.d_state0.c;
  if (dh0 == nullptr) {
    dh0 = spare;
    spare += groups * N * P;
  }
  if (has_c && dc0 == nullptr) dc0 = spare;

  // Output layer: dV += d_out^T features, dc += column sums in row order, d_features = d_out V.
  const Bf16Scratch bf16 = head_bf16_scratch<S>(cfg, R);
  const Operand<S> d_logits = rounded_once(bf16.slots, stream, d_out, R, K, 0);  // for both products
  gemm_at_precision<S>(bf16.slots, stream, Op::kT, Op::kN, K, F, R, d_logits, {cache.features, F}, S(1),
                       grads.out_w, F);
  RNNKIT_LAUNCH(stream, K, (AddColumnSums<S>{R, K, K, d_out, grads.out_b}));
  gemm_at_precision<S>(bf16.slots, stream, Op::kN, Op::kN, R, F, K, d_logits, {cache.out_w, F}, S(0), d_features,
                       F);
  if (!sequence) {
    // The last head's gradient enters the stack as dh_n of the last layer's groups.
    const index_t D = cfg.stack.num_directions;
    zero_on_device(dh_n, static_cast<std::size_t>(dhn_n) * sizeof(S), stream);
    RNNKIT_LAUNCH(stream, N * F, (LastStates<S>{N, D, P, (cfg.stack.num_layers - 1) * D, d_features, dh_n, true}));
  }
  StackBackwardArgs<S> sb;
  sb.grads = &grads.stack;
  sb.dy = sequence ? d_features : nullptr;
  sb.d_state_n.h = dh_n;
  sb.dx = cfg.vocab_size > 0 ? d_emb : args.dx;
  sb.d_state0 = {dh0, has_c ? dc0 : nullptr};
  cuda::stack_backward<S>(cache.stack, sb);
  if (cfg.vocab_size > 0) {
    const index_t* lengths = cache.stack.lengths.size() > 0 ? cache.stack.lengths.data() : nullptr;
    const index_t buckets = cfg.vocab_size < kEmbeddingBuckets ? cfg.vocab_size : kEmbeddingBuckets;
    RNNKIT_LAUNCH(stream, E * buckets,
                  (EmbeddingGrad<S>{TN, N, E, buckets, cache.tokens.data(), lengths, d_emb, grads.embedding}));
  }
  synchronize(stream);
}

template <typename S>
void network_generate(const NetworkConfig& cfg, const NetworkGenerateArgs<S>& args) {
  const index_t K = cfg.output_size, groups = cfg.stack.groups();
  const index_t P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  const Stream stream = current_stream();
  refuse_external_capture(stream, "a network call");
  NetworkConfig step_cfg = cfg;
  step_cfg.head = HeadKind::kSequence;
  // Two shapes of call: the prefix, then one token at a time.
  const CudaNetworkPlan prefix_plan = plan_network<S>(step_cfg, args.prefix_len, 1, false);
  const CudaNetworkPlan token_plan = plan_network<S>(step_cfg, 1, 1, false);
  DeviceBuffer<S> buf(args.prefix_len * K + groups * P + (has_c ? groups * H : 0), "generation");
  S* logits = buf.data();
  S* h_next = logits + args.prefix_len * K;
  S* c_next = has_c ? h_next + groups * P : nullptr;
  std::vector<S> last(static_cast<std::size_t>(K));

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
        copy_elems(stream, args.state.h, h_next, groups * P);
        if (has_c) copy_elems(stream, args.state.c, c_next, groups * H);
      },
      [&](index_t T) -> const S* {
        // The step's logits to the host, where the token is drawn exactly as the CPU backend draws it.
        copy_to_host(last.data(), logits + (T - 1) * K, last.size() * sizeof(S), stream);
        return last.data();
      });
  synchronize(stream);
}

#define RNNKIT_INSTANTIATE_NETWORK(S)                                                                        \
  template CudaNetworkPlan plan_network<S>(const NetworkConfig&, index_t, index_t, bool);                    \
  template void network_forward<S>(const CudaNetworkPlan&, const NetworkForwardArgs<S>&, CudaNetworkCache<S>*); \
  template void network_backward<S>(CudaNetworkCache<S>&, const NetworkBackwardArgs<S>&);                    \
  template void network_generate<S>(const NetworkConfig&, const NetworkGenerateArgs<S>&);
RNNKIT_INSTANTIATE_NETWORK(float)
RNNKIT_INSTANTIATE_NETWORK(double)
#undef RNNKIT_INSTANTIATE_NETWORK

}  // namespace cuda
}  // namespace rnnkit
