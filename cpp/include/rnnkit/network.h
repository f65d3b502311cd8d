// The recurrent neural network, for every backend: input (embedding or dense features) -> layer
// stack -> output layer y = V h + c -> softmax cross-entropy or mean squared error. A backend runs
// forward and backward in one call each (backend.h), so a training step makes no per-timestep
// (or per-layer) call from Python.
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
  index_t head_rows(index_t T, index_t N) const { return head == HeadKind::kSequence ? T * N : N; }
};

void check_network_config(const NetworkConfig& cfg);

// Every parameter in order (the stack's with role kWIh..kLn0+p, the network's own with kEmbedding,
// kOutWeight, kOutBias).
std::vector<ParamSpec> network_param_specs(const NetworkConfig& cfg);

template <typename Ptr>
struct NetworkParams {
  Ptr embedding = nullptr;                 // [vocab, E] or null
  std::vector<LayerParams<Ptr>> stack;     // per group
  Ptr out_w = nullptr;                     // [K, F]
  Ptr out_b = nullptr;                     // [K]
};
template <typename S>
using NetworkWeights = NetworkParams<const S*>;
template <typename S>
using NetworkGrads = NetworkParams<S*>;

// The field of a network's parameters (or gradients) that a role names (stack roles: the group's).
template <typename Ptr>
Ptr& param_field(NetworkParams<Ptr>& p, const ParamSpec& spec) {
  switch (spec.role) {
    case ParamRole::kEmbedding: return p.embedding;
    case ParamRole::kOutWeight: return p.out_w;
    case ParamRole::kOutBias: return p.out_b;
    default: return param_field(p.stack[spec.group], spec.role);
  }
}

struct NetworkInputs {
  const std::int64_t* tokens = nullptr;  // [T,N]
  const void* x = nullptr;               // [T,N,C] of S
  index_t T = 0, N = 0;
  const index_t* lengths = nullptr;      // [N] or null
};

// Forward. outputs [R,K] may be null (not wanted); softmax_outputs turns logits into
// probabilities (cross-entropy networks). targets (int64 for cross-entropy, S for MSE) may be null;
// with targets the loss is returned through *loss and, in training, its gradient kept for
// backward. state0 and state_n as in the stack.
template <typename S>
struct NetworkForwardArgs {
  const NetworkWeights<S>* weights = nullptr;
  NetworkInputs in;
  StatePair<const S*> state0;
  const void* targets = nullptr;
  std::uint64_t dropout_seed = 0;
  bool softmax_outputs = false;
  S* outputs = nullptr;
  StatePair<S*> state_n;
  double* loss = nullptr;
};

// Backward through a training forward: d_outputs [R,K] (null: the fused loss's gradient, which
// requires targets in forward). Gradients are ACCUMULATED into grads. dx [T,N,C] (dense input
// only) is overwritten, or null to skip it; d_state0 may be null.
template <typename S>
struct NetworkBackwardArgs {
  const NetworkGrads<S>* grads = nullptr;
  const S* d_outputs = nullptr;
  S* dx = nullptr;
  StatePair<S*> d_state0;
};

// Samples `count` tokens after feeding `prefix` (a token network with a cross-entropy head):
// each step feeds the previous token, draws from softmax(logits / temperature) restricted to the
// top_k most likely tokens (top_k <= 0: all), with a counter-based generator seeded by `seed`.
// temperature == 0 takes the most likely token. state: in and out ([L*D,1,..]).
template <typename S>
struct NetworkGenerateArgs {
  const NetworkWeights<S>* weights = nullptr;
  const std::int64_t* prefix = nullptr;
  index_t prefix_len = 0;
  index_t count = 0;
  double temperature = 1.0;
  index_t top_k = 0;
  std::uint64_t seed = 0;
  StatePair<S*> state;
  std::int64_t* out_tokens = nullptr;
};

}  // namespace rnnkit
