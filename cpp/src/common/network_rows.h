// What every backend's network shares on the host: which head rows count in the loss, and drawing a
// generated token from a row of logits. Both backends call these same functions, so they agree on
// the valid rows (and so on the loss's mean) and, given logits, on every sampled token.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "rnnkit/network.h"

namespace rnnkit {

// Row r of the head is valid (counts in the loss) unless it is a padded step. lengths: [N] or null.
inline bool row_is_padding(const NetworkConfig& cfg, const index_t* lengths, index_t N, index_t r) {
  if (cfg.head != HeadKind::kSequence || lengths == nullptr) return false;
  return r / N >= lengths[r % N];
}

// Valid rows of the head: not padding and (cross-entropy) not ignore_index. targets: class ids [R]
// (cross-entropy; ignored otherwise), on the host.
inline index_t count_valid_rows(const NetworkConfig& cfg, const std::int64_t* targets, index_t R, index_t N,
                                const index_t* lengths) {
  index_t count = 0;
  for (index_t r = 0; r < R; ++r) {
    if (row_is_padding(cfg, lengths, N, r)) continue;
    if (cfg.loss == LossKind::kCrossEntropy && targets[r] == cfg.ignore_index) continue;
    ++count;
  }
  return count;
}

// Elements a network call allocates (for the backend's check_fits), either backend: the stack's
// cache and forward scratch, the embedded input, the head's features and logits, the training
// copy of the output weight, and a last head's stack output. TN = T*N, R = the head's rows.
inline index_t network_call_elems(const NetworkConfig& cfg, index_t stack_cache, index_t stack_scratch, index_t TN,
                                  index_t R, bool training) {
  const index_t F = cfg.feature_size(), K = cfg.output_size;
  index_t elems = checked_add(stack_cache, stack_scratch, "network");
  if (cfg.vocab_size > 0) elems = checked_add(elems, checked_mul(TN, cfg.stack.input_size, "embedded input"), "network");
  elems = checked_add(elems, checked_mul(R, checked_add(F, K, "head"), "head"), "network");  // features, logits
  if (training) elems = checked_add(elems, checked_mul(K, F, "output weight"), "network");
  if (cfg.head != HeadKind::kSequence) elems = checked_add(elems, checked_mul(TN, F, "stack output"), "network");
  return elems;
}

// Generation's i-th uniform draw in [0, 1) from `seed` (counter-based: no state to carry).
inline double generation_uniform(std::uint64_t seed, index_t i) {
  return static_cast<double>(splitmix64(seed + static_cast<std::uint64_t>(i)) >> 11) * 0x1.0p-53;
}

// Draws a token from a row of logits [K] (host memory) with the uniform `u`: softmax(logits /
// temperature) over the top_k most likely (top_k <= 0: all); temperature 0 takes the most likely.
// order, probs: scratch kept by the caller across draws.
template <typename S>
std::int64_t sample_token(const S* logits, index_t K, double temperature, index_t top_k, double u,
                          std::vector<index_t>& order, std::vector<double>& probs) {
  order.resize(K);
  std::iota(order.begin(), order.end(), index_t(0));
  if (temperature <= 0.0) {
    return *std::max_element(order.begin(), order.end(),
                             [&](index_t a, index_t b) { return logits[a] < logits[b]; });
  }
  index_t keep = (top_k > 0 && top_k < K) ? top_k : K;
  if (keep < K) {
    std::nth_element(order.begin(), order.begin() + (keep - 1), order.end(),
                     [&](index_t a, index_t b) { return logits[a] > logits[b]; });
  }
  double mx = -std::numeric_limits<double>::infinity();
  for (index_t i = 0; i < keep; ++i) mx = std::max(mx, static_cast<double>(logits[order[i]]));
  probs.resize(keep);
  double sum = 0.0;
  for (index_t i = 0; i < keep; ++i) {
    probs[i] = std::exp((static_cast<double>(logits[order[i]]) - mx) / temperature);
    sum += probs[i];
  }
  double acc = 0.0;
  const double target = u * sum;
  for (index_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (target < acc) return order[i];
  }
  return order[keep - 1];
}

// network_generate's loop, for either backend: `step(tokens, T, first)` runs the network over T
// tokens (host ids) from args.state, leaving the new state there (the prefix's plan when first,
// then the one-token plan); `last_logits(T)` returns the last step's logits as a host row [K].
// Each token is drawn with sample_token from the seed's i-th uniform.
template <typename S, typename Step, typename LastLogits>
void run_generation(const NetworkGenerateArgs<S>& args, index_t K, Step&& step, LastLogits&& last_logits) {
  std::vector<index_t> order;
  std::vector<double> probs;
  const std::int64_t* tokens = args.prefix;
  index_t T = args.prefix_len;
  for (index_t i = 0;; ++i) {
    step(tokens, T, i == 0);
    if (i == args.count) return;
    args.out_tokens[i] = sample_token(last_logits(T), K, args.temperature, args.top_k,
                                      generation_uniform(args.seed, i), order, probs);
    tokens = &args.out_tokens[i];
    T = 1;
  }
}

}  // namespace rnnkit
