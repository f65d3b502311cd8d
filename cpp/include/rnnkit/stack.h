// A stack of recurrent layers (num_layers x directions) on the CPU, PyTorch's torch.nn.RNN/LSTM/GRU
// semantics: layer l > 0 reads the concatenated outputs of layer l-1 (forward half, then reverse
// half), optionally through dropout in training.
//
// Notation: L layers, D directions (1 or 2), P state width (hidden_size, or proj_size), and for
// layer l the input width C_l = (l == 0 ? input_size : D*P). Group g = l*D + d is layer l,
// direction d (d = 1 is the reverse direction); states and parameters are ordered by group,
// exactly as PyTorch orders h_n and its state_dict.
//
// Shapes of stack_forward's arguments:
//   x        [T,N,C]       input, time-major, contiguous
//   h0, c0   [L*D,N,P], [L*D,N,H] or null for zeros (c0: LSTM cells only)
//   lengths  [N] or null   valid steps per sequence, 1 <= lengths[n] <= T (checked by the caller)
//   y        [T,N,D*P]     output of the last layer (0 at padded steps)
//   h_n, c_n [L*D,N,P], [L*D,N,H]
//   params   per group, LayerWeights into caller memory (see stack_param_specs for the order)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rnnkit/buffer.h"
#include "rnnkit/layer.h"

namespace rnnkit {

struct StackConfig {
  CellKind cell = CellKind::kElmanTanh;
  index_t num_layers = 1;
  index_t num_directions = 1;
  index_t input_size = 0;
  index_t hidden_size = 0;
  index_t proj_size = 0;  // 0: no projection
  bool bias = true;
  double dropout = 0.0;  // probability of zeroing a layer output (not the last layer's), training only

  index_t state_size() const { return proj_size > 0 ? proj_size : hidden_size; }
  index_t layer_input_size(index_t layer) const {
    return layer == 0 ? input_size : num_directions * state_size();
  }
  index_t groups() const { return num_layers * num_directions; }
};

// Rejects impossible configurations with std::invalid_argument naming the option.
void check_stack_config(const StackConfig& cfg);

// The parameters of every group in order: name (PyTorch's state_dict key) and shape.
struct ParamSpec {
  std::string name;
  std::vector<index_t> shape;
  index_t group = 0;
  int role = 0;  // see ParamRole
};
enum ParamRole : int { kRoleWIh, kRoleWHh, kRoleBIh, kRoleBHh, kRoleWHr, kRoleLn0 };
std::vector<ParamSpec> stack_param_specs(const StackConfig& cfg);

// Dropout between layers: element i of layer l's output is kept with probability 1 - p and then
// scaled by 1/(1-p). The decision is a pure function of (seed, l, i) (a counter-based hash), so
// backward recomputes the mask instead of storing it, and a seed reproduces a forward exactly.
double dropout_uniform(std::uint64_t seed, index_t layer, index_t i);

// What a training forward keeps for backward.
template <typename S>
struct StackCache {
  StackConfig cfg;
  LayerDims dims0;                 // T, N, C, H, P of layer 0 (later layers differ in C only)
  std::vector<index_t> lengths;    // empty: all sequences have T steps
  std::uint64_t dropout_seed = 0;
  Buffer<S> block;                 // everything below points into it
  std::vector<const S*> inputs;    // [L]: the input of layer l (a copy of x for l = 0)
  std::vector<LayerWeights<S>> weights;  // [L*D]: copies of the parameters
  std::vector<LayerState<S>> states;     // [L*D]
  index_t param_elems = 0;
  // Backward overwrites the gate buffers with their gradients: a cache is good for one backward.
  mutable bool consumed = false;
};

template <typename S>
void stack_forward(const StackConfig& cfg, index_t T, index_t N,
                   const std::vector<LayerWeights<S>>& params, const S* x, const S* h0,
                   const S* c0, const index_t* lengths, bool training, std::uint64_t dropout_seed,
                   S* y, S* h_n, S* c_n, StackCache<S>* cache);

// Backward through a training forward. dy [T,N,D*P], dh_n [L*D,N,P], dc_n [L*D,N,H]: each may
// be null (zeros). grads: per group, ACCUMULATED into. dx [T,N,C] (overwritten) may be null to
// skip it; dh0 [L*D,N,P], dc0 [L*D,N,H] are overwritten (dc0 null without a cell state).
template <typename S>
void stack_backward(const StackCache<S>& cache, const S* dy, const S* dh_n, const S* dc_n,
                    const std::vector<LayerGrads<S>>& grads, S* dx, S* dh0, S* dc0);

// One timestep of a unidirectional stack for N streams, in inference mode, with nothing packed or
// allocated per call (a per-thread scratch buffer is kept): x [N,C]; h, c [L,N,P], [L,N,H] the
// state before the step (c null without a cell state); y [N,P] the top layer's output; h_new,
// c_new the state after (must not alias h, c).
template <typename S>
void stack_step(const StackConfig& cfg, index_t N, const std::vector<LayerWeights<S>>& params, const S* x,
                const S* h, const S* c, S* y, S* h_new, S* c_new);

// Element counts of one call's allocations, for the memory check before anything is allocated.
struct StackFootprint {
  index_t cache = 0;            // kept from forward to backward (training)
  index_t forward_scratch = 0;
  index_t backward_scratch = 0;
};
// `elem_bytes`: sizeof the scalar. (Sizes do not depend on the thread count.)
StackFootprint stack_footprint(const StackConfig& cfg, index_t T, index_t N, bool training, int elem_bytes = 4);

// How many threads of the team (rnnkit.set_num_threads) a forward/backward of this shape uses:
// 1 when a step's work is too small to split profitably.
int stack_team_size(const StackConfig& cfg, index_t T, index_t N);
// The per-step work (N * G*H * P multiply-adds) from which a call uses more than one thread.
void set_min_parallel_step_work(index_t work);

}  // namespace rnnkit
