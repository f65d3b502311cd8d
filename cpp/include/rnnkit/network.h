// The recurrent neural network on the CPU: input (embedding or dense features) -> layer stack ->
// output layer y = V h + c -> softmax cross-entropy or mean squared error, forward and backward in
// one call each, so a training step makes no per-timestep (or per-layer) call from Python.
//
// Shapes (F = D*P, the stack's output width; K = output_size; R = rows of the head):
//   tokens   [T,N] int64 in [0, vocab)        (vocab_size > 0: through embedding [vocab, E])
//   x        [T,N,C]                          (vocab_size == 0: dense features)
//   head "sequence": features = the last layer's outputs [T,N,F], R = T*N rows
//   head "last":     features = the last layer's final states, both directions concatenated
//                    [N,F] (each sequence's own last valid step with lengths), R = N rows
//   outputs  [T,N,K] or [N,K]: logits (cross-entropy) or predictions (MSE)
//   targets  cross-entropy: int64 class ids [T,N] or [N] (ignore_index = skip the row);
//            MSE: floats shaped like outputs
// Losses are means over valid rows: padded steps (lengths) and ignore_index targets do not count;
// MSE averages over valid rows times K.
//
// Parameters, in order (names as a PyTorch module with submodules embedding, rnn and output would
// have them): embedding.weight [vocab, E] (token input only), the stack's parameters as
// rnn.<name>, output.weight [K, F], output.bias [K].
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rnnkit/stack.h"

namespace rnnkit {

enum class HeadKind : int { kSequence = 0, kLast = 1 };
enum class LossKind : int { kNone = 0, kCrossEntropy = 1, kMSE = 2 };

struct NetworkConfig {
  StackConfig stack;          // stack.input_size is E (tokens) or C (dense)
  index_t vocab_size = 0;     // 0: dense input
  index_t output_size = 0;    // K
  HeadKind head = HeadKind::kSequence;
  LossKind loss = LossKind::kCrossEntropy;
  index_t ignore_index = -100;

  index_t feature_size() const { return stack.num_directions * stack.state_size(); }
};

void check_network_config(const NetworkConfig& cfg);

// (name, shape) of every parameter in order.
std::vector<ParamSpec> network_param_specs(const NetworkConfig& cfg);

template <typename S>
struct NetworkWeights {
  const S* embedding = nullptr;          // [vocab, E] or null
  std::vector<LayerWeights<S>> stack;    // per group
  const S* out_w = nullptr;              // [K, F]
  const S* out_b = nullptr;              // [K]
};

template <typename S>
struct NetworkGrads {
  S* embedding = nullptr;
  std::vector<LayerGrads<S>> stack;
  S* out_w = nullptr;
  S* out_b = nullptr;
};

// What a training forward keeps for backward.
template <typename S>
struct NetworkCache {
  NetworkConfig cfg;
  index_t T = 0, N = 0;
  StackCache<S> stack;
  std::vector<std::int64_t> tokens;   // [T,N] (token input)
  Buffer<S> block;
  S* features = nullptr;   // [R,F]
  S* d_out = nullptr;      // [R,K]: dL/d(outputs) when the loss was fused, else filled by backward
  S* out_w = nullptr;      // [K,F] copy
  index_t rows = 0;        // R
  bool has_loss_grad = false;
};

struct NetworkInputs {
  const std::int64_t* tokens = nullptr;  // [T,N]
  const void* x = nullptr;               // [T,N,C] of S
  index_t T = 0, N = 0;
  const index_t* lengths = nullptr;      // [N] or null
};

// Forward. outputs [R,K] may be null (not wanted); softmax_outputs turns logits into
// probabilities (cross-entropy networks). targets (int64 for cross-entropy, S for MSE) may be null;
// with targets the loss is returned through *loss and, in training, its gradient kept for
// backward. h0/c0/h_n/c_n as in stack_forward.
template <typename S>
void network_forward(const NetworkConfig& cfg, const NetworkWeights<S>& w, const NetworkInputs& in,
                     const S* h0, const S* c0, const void* targets, bool training,
                     std::uint64_t dropout_seed, bool softmax_outputs, S* outputs, S* h_n, S* c_n,
                     double* loss, NetworkCache<S>* cache);

// Backward through a training forward: d_outputs [R,K] (null: use the fused loss's gradient,
// which requires targets in forward). Gradients are ACCUMULATED into grads. dh0/dc0
// ([L*D,N,P]/[L*D,N,H]) may be null.
template <typename S>
void network_backward(const NetworkCache<S>& cache, const S* d_outputs, const NetworkGrads<S>& grads,
                      S* dh0, S* dc0);

// Samples `count` tokens after feeding `prefix` (a token network with a cross-entropy head):
// each step feeds the previous token, draws from softmax(logits / temperature) restricted to the
// top_k most likely tokens (top_k <= 0: all), with a counter-based generator seeded by `seed`.
// temperature == 0 takes the most likely token. State in/out as stack_forward ([L*D,N=1,..]).
template <typename S>
void network_generate(const NetworkConfig& cfg, const NetworkWeights<S>& w,
                      const std::int64_t* prefix, index_t prefix_len, index_t count,
                      double temperature, index_t top_k, std::uint64_t seed, S* h, S* c,
                      std::int64_t* out_tokens);

}  // namespace rnnkit
