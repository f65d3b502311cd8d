// A stack of recurrent layers (num_layers x directions), for every backend: its configuration,
// its parameter list, dropout between layers, and the arguments of one call. PyTorch's
// torch.nn.RNN/LSTM/GRU semantics: layer l > 0 reads the concatenated outputs of layer l-1
// (forward half, then reverse half), optionally through dropout in training.
//
// Notation: L layers, D directions (1 or 2), P state width (hidden_size, or proj_size), and for
// layer l the input width C_l = (l == 0 ? input_size : D*P). Group g = l*D + d is layer l,
// direction d (d = 1 is the reverse direction); states and parameters are ordered by group,
// exactly as PyTorch orders h_n and its state_dict.
//
// The backends run the calls (backend.h); the argument structs below are their contract:
//   x        [T,N,C]       input, time-major, contiguous
//   h0, c0   [L*D,N,P], [L*D,N,H] or null for zeros (c0: cells with a cell state only)
//   lengths  [N] or null   valid steps per sequence, 0 <= lengths[n] <= T (checked by the caller;
//                          a length of 0: layer.h)
//   y        [T,N,D*P]     output of the last layer (0 at padded steps)
//   h_n, c_n [L*D,N,P], [L*D,N,H]
//   params   per group, into caller memory (stack_param_specs gives the order)
// No output may alias an input.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "rnnkit/layer.h"

namespace rnnkit {

// The precision of a stack's GEMMs. kBfloat16 rounds both operands of every GEMM to bfloat16 and
// sums in float32; parameters, gradients, states and the cell math stay float32 (float32 stacks
// only).
enum class Precision : int { kFloat32 = 0, kBfloat16 = 1 };

struct StackConfig {
  CellKind cell = CellKind::kRnnTanh;
  index_t num_layers = 1;
  index_t num_directions = 1;
  // direction="reverse": one direction that runs t = T-1 ... 0 (as a bidirectional stack's second
  // direction does; num_directions stays 1). Its parameters carry no _reverse suffix.
  bool reverse = false;
  index_t input_size = 0;
  index_t hidden_size = 0;
  index_t proj_size = 0;  // 0: no projection
  bool bias = true;
  double dropout = 0.0;  // probability of zeroing a layer output (not the last layer's), training only
  // Weight drop (DropConnect on W_hh, as AWD-LSTM): probability of zeroing each recurrent weight,
  // one mask per training forward (the kept ones scaled by 1/(1-p)); never in inference.
  double weight_dropout = 0.0;
  // Zoneout (Krueger et al. 2016): in training each unit of h (zoneout) and of an LSTM's c
  // (zoneout_cell) keeps its previous value with probability p, a fresh mask every step; in
  // inference, and in a training forward with zoneout_expected (a module in eval mode that wants
  // gradients), the expectation p * prev + (1 - p) * new. The state after the mix is the output.
  double zoneout = 0.0;
  double zoneout_cell = 0.0;
  bool zoneout_expected = false;
  // Variational dropout (Gal & Ghahramani 2016), training only: one mask per sequence, the same at
  // every step, on each layer's input (input_dropout; both directions of a layer share it) and on
  // h_{t-1} where it enters the recurrent product (recurrent_dropout; a mask per group); the kept
  // units scaled by 1/(1-p).
  double input_dropout = 0.0;
  double recurrent_dropout = 0.0;
  Precision precision = Precision::kFloat32;
  // ONNX's options beyond PyTorch's (cells.h), per direction (options[1]: a bidirectional stack's
  // second); `general` when any differs from the cell's defaults, and the stack then runs the
  // general cell of its kind (kernel_cell). Set by set_cell_options from their one string form.
  CellOptions options[2] = {};
  bool general = false;

  // The cell the backends' loops run: the cell itself, or its general form (ONNX's options).
  CellKind kernel_cell() const;
  index_t state_size() const { return proj_size > 0 ? proj_size : hidden_size; }
  index_t layer_input_size(index_t layer) const {
    return layer == 0 ? input_size : num_directions * state_size();
  }
  index_t groups() const { return num_layers * num_directions; }
  // The widest layer input (the size of input dropout's per-layer mask rows).
  index_t widest_layer_input() const { return num_layers > 1 ? std::max(input_size, layer_input_size(1)) : input_size; }
  // Whether direction d of a layer (1: a bidirectional stack's second) runs t = T-1 ... 0.
  bool runs_reverse(index_t d) const { return d == 1 || reverse; }
  LayerDims layer_dims(index_t layer, index_t T, index_t N) const {
    return LayerDims{T, N, layer_input_size(layer), hidden_size, state_size()};
  }
};

// Rejects impossible configurations with std::invalid_argument naming the option.
void check_stack_config(const StackConfig& cfg);

// The cell's own options: its activations (LSTM Sigmoid, Tanh, Tanh; GRU Sigmoid, Tanh; RNN Tanh or
// Relu), no clip, no peepholes, uncoupled gates.
CellOptions default_cell_options(CellKind cell);
// Activations per direction (1 RNN, 2 GRU, 3 LSTM; 0 for the LayerNorm cells, which take none).
int cell_activation_count(CellKind cell);
// Parses ONNX's options from their string form, into cfg.options and cfg.general (cfg.cell,
// num_directions and proj_size set first), rejecting what the cell cannot take with
// std::invalid_argument naming the option. The form, ';'-separated keys, each at most once:
//   act=F,G,H[|F,G,H]   activations as ONNX orders them; a second group: the reverse direction's
//                       (else the first serves both); each "Name", "Name:alpha" or "Name:alpha:beta"
//                       (ONNX Runtime's values for those left out)
//   clip=C  peephole=1  coupled=1
// An empty string is the defaults. cell_options_string gives the canonical form back ("" for
// the defaults).
void set_cell_options(StackConfig& cfg, const std::string& spec);
std::string cell_options_string(const StackConfig& cfg);
// Rejects precision="bfloat16" for a stack whose arrays are not float32 (`float32`: they are).
void check_precision(const StackConfig& cfg, bool float32);
// Rejects a call's T and N (every layer's dims, check_layer_dims) likewise.
void check_stack_dims(const StackConfig& cfg, index_t T, index_t N);

// What a parameter is. Stack parameters belong to a group (layer, direction); the network adds
// its own around the stack (network.h).
enum class ParamRole : int {
  kWIh, kWHh, kBIh, kBHh, kWHr,
  kWPeephole,                            // [3,H]: ONNX's P, gates i, f, o
  kLn0,                                  // kLn0 + p: LayerNorm parameter p (LnParam)
  kEmbedding = kLn0 + kMaxLnParams,      // network: embedding.weight
  kOutWeight,                            // network: output.weight
  kOutBias,                              // network: output.bias
};

// One parameter: its name (PyTorch's state_dict key), shape, and where it goes.
struct ParamSpec {
  std::string name;
  std::vector<index_t> shape;
  ParamRole role = ParamRole::kWIh;
  index_t group = 0;  // stack parameters only

  index_t numel() const {
    index_t n = 1;
    for (index_t v : shape) n = checked_mul(n, v, "parameter size");
    return n;
  }
  bool in_stack() const { return role < ParamRole::kEmbedding; }
};
std::vector<ParamSpec> stack_param_specs(const StackConfig& cfg);
index_t total_numel(const std::vector<ParamSpec>& specs);

// The field of a layer's parameters (or gradients) that a stack role names.
template <typename Ptr>
Ptr& param_field(LayerParams<Ptr>& p, ParamRole role) {
  switch (role) {
    case ParamRole::kWIh: return p.w_ih;
    case ParamRole::kWHh: return p.w_hh;
    case ParamRole::kBIh: return p.b_ih;
    case ParamRole::kBHh: return p.b_hh;
    case ParamRole::kWHr: return p.w_hr;
    case ParamRole::kWPeephole: return p.w_peephole;
    default: break;
  }
  const int ln = static_cast<int>(role) - static_cast<int>(ParamRole::kLn0);
  assert(ln >= 0 && ln < kMaxLnParams);
  return p.ln[ln];
}
template <typename Ptr>
Ptr param_field(const LayerParams<Ptr>& p, ParamRole role) {
  return param_field(const_cast<LayerParams<Ptr>&>(p), role);
}

// Dropout between layers: element i of layer l's output is kept with probability 1 - p and then
// scaled by 1/(1-p). The decision is a pure function of (seed, l, i) (a counter-based hash), so
// backward recomputes the mask instead of storing it, a seed reproduces a forward exactly, and a
// GPU thread can draw element i on its own.
// UniformStream: the same draws with the stream's own mixing done once, for loops over one stream.
struct UniformStream {
  std::uint64_t key = 0;
  RNNKIT_HOSTDEVICE UniformStream(std::uint64_t seed, index_t stream)
      : key(splitmix64(seed ^ splitmix64(static_cast<std::uint64_t>(stream) + 1))) {}
  RNNKIT_HOSTDEVICE double operator()(index_t i) const {
    return static_cast<double>(bits(i)) * 0x1.0p-53;
  }
  // The draw's 53 bits k: u(i) = k * 2^-53.
  RNNKIT_HOSTDEVICE std::uint64_t bits(index_t i) const { return splitmix64(key + static_cast<std::uint64_t>(i)) >> 11; }
  // u(i) < p exactly, in integers (loops over many draws vectorise it): k < ceil(p * 2^53).
  RNNKIT_HOSTDEVICE static std::uint64_t threshold(double p) {
    return p >= 1.0 ? (std::uint64_t(1) << 53) : static_cast<std::uint64_t>(::ceil(p * 0x1.0p53));
  }
  RNNKIT_HOSTDEVICE bool below(index_t i, std::uint64_t threshold) const { return bits(i) < threshold; }
};

RNNKIT_HOSTDEVICE double dropout_uniform(std::uint64_t seed, index_t layer, index_t i) {
  return UniformStream(seed, layer)(i);
}

// Weight drop's masks (StackConfig::weight_dropout): element i of group g's W_hh is kept when
// dropout_uniform(seed, kWeightDropStream + g, i) >= p, a stream of its own apart from the
// between-layer dropout's (layers 0 .. L-2). The training forward masks its copy of W_hh (the cache's),
// so the steps and the backward's products use the masked weights; backward masks W_hh's gradient.
constexpr index_t kWeightDropStream = index_t(1) << 40;

// The other regularisers' streams, each a "layer" of dropout_uniform's apart from the rest:
//   zoneout       group g: kZoneoutStream + g, element (t*N + n)*P + j kept from h_{t-1} when u < p
//   zoneout_cell  group g: kZoneoutCellStream + g, element (t*N + n)*H + j likewise for c
//   recurrent     group g: kRecurrentDropStream + g, element n*P + j dropped when u < p
//   input         layer l: kInputDropStream + l, element n*C_l + c dropped when u < p
constexpr index_t kZoneoutStream = index_t(2) << 40;
constexpr index_t kZoneoutCellStream = index_t(3) << 40;
constexpr index_t kRecurrentDropStream = index_t(4) << 40;
constexpr index_t kInputDropStream = index_t(5) << 40;

// Variational dropout's per-sequence masks (input and recurrent): mask[i] = 0 where element i of
// the stream is dropped (u < p), else 1/(1-p), for i in [begin, end). Host code (float, double);
// the CUDA backend's SequenceMask kernel draws the same.
template <typename S>
void fill_dropout_mask(std::uint64_t seed, index_t stream, double p, index_t begin, index_t end, S* mask);

// The LayerShape of a stack's layers for a call: layer_shape, with the regularisers the call applies.
LayerShape stack_layer_shape(const StackConfig& cfg, index_t T, index_t N, bool training);

// Element counts of one call's allocations, for the memory check before anything is allocated.
struct StackFootprint {
  index_t cache = 0;            // kept from forward to backward (training)
  index_t forward_scratch = 0;
  index_t backward_scratch = 0;
};

// ---- the arguments of one call (pointers into the backend's memory) -------------------------
// A recurrent state or its gradient: h [L*D,N,P] and, for cells with a cell state, c [L*D,N,H].
// An input state may be null (zeros); an output c is null when not wanted or there is none.
template <typename Ptr>
struct StatePair {
  Ptr h = nullptr;
  Ptr c = nullptr;
};

// A forward, or (stack_step) one timestep of a unidirectional stack for N streams in inference
// mode: x [N,C], state0 the state before the step (required), y [N,P], state_n the state after
// (must not alias state0); a step ignores lengths and dropout_seed.
template <typename S>
struct StackForwardArgs {
  const std::vector<LayerWeights<S>>* params = nullptr;  // [L*D]
  const S* x = nullptr;
  StatePair<const S*> state0;      // h0, c0
  const index_t* lengths = nullptr;
  std::uint64_t dropout_seed = 0;  // training with dropout
  // Training: zero the cache block before filling it, so that every element of it (padding
  // included) is a function of the inputs; a cache handed out as an array (a reserve) needs it.
  bool zero_cache = false;
  S* y = nullptr;
  StatePair<S*> state_n;           // h_n, c_n
};

// Backward through a training forward. dy [T,N,D*P] and d_state_n (dL/dh_n, dL/dc_n) may each
// be null (zeros). grads: per group, ACCUMULATED into. dx [T,N,C] (overwritten) may be null to
// skip it; d_state0 (dL/dh0, dL/dc0) is overwritten (its c null without a cell state).
template <typename S>
struct StackBackwardArgs {
  const std::vector<LayerGrads<S>>* grads = nullptr;  // [L*D]
  const S* dy = nullptr;
  StatePair<const S*> d_state_n;
  S* dx = nullptr;
  StatePair<S*> d_state0;
};

}  // namespace rnnkit
