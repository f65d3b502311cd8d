// The layer stack on the CPU (the contract is stack.h's): layers x directions around the layer
// loops, dropout between layers, and the one allocation per call everything is carved from.
//
// A call's plan (CpuStackPlan) is computed once: the layer buffers' sizes (layer 0's shape: no
// buffer depends on the input width), the packed weights', the footprint and the team size.
// Training forward keeps, in one block: a copy of x (padded steps zeroed), every layer's input,
// a copy of the parameters, and each group's kept layer buffers.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/buffer.h"
#include "cpu/layer.h"
#include "rnnkit/backend.h"

namespace rnnkit {
namespace cpu {

struct CpuStackPlan : StackPlan {
  LayerShape shape;            // layer 0 (later layers differ in C only)
  index_t layer_kept = 0;      // elements of one group's kept layer buffers
  index_t layer_forward = 0;   // ... of the forward's layer scratch (shared by the groups)
  index_t layer_backward = 0;  // ... of the backward's
  index_t packed_forward = 0;  // packed weights of one forward pass (shared by the groups)
  index_t packed_backward = 0;
  int team = 1;                // threads the call uses
};

// specs: the call's parameter list (stack_param_specs, or the network's stack part; a training
// forward copies the parameters by it).
// keep_cache: backward leaves the cache's block as it is (LayerShape::keep_cache).
template <typename S>
CpuStackPlan plan_stack(const StackConfig& cfg, index_t T, index_t N, bool training, std::vector<ParamSpec> specs,
                        bool keep_cache = false);

// What every CPU cache answers the same way: a cache of element type S behind the interface
// Base, made by a call with the CPU plan PlanT.
template <typename S, typename Base, typename PlanT>
class CpuCache : public Base {
 public:
  Device device() const override { return Device::kCpu; }
  const PlanT& plan() const override { return plan_; }
  int elem_bytes() const override { return static_cast<int>(sizeof(S)); }

  PlanT plan_;
};

template <typename S>
class CpuStackCache final : public CpuCache<S, StackCache, CpuStackPlan> {
 public:
  std::size_t nbytes() const override { return static_cast<std::size_t>(block.size()) * sizeof(S); }
  // The block's first element: the cache's own, or the caller's (stack_cache_from_block).
  S* data() { return external != nullptr ? const_cast<S*>(external) : block.data(); }
  const S* data() const { return external != nullptr ? external : block.data(); }

  std::vector<index_t> lengths;         // empty: all sequences have T steps
  std::uint64_t dropout_seed = 0;
  Buffer<S> block;                      // everything below points into it (or into `external`)
  const S* external = nullptr;          // a caller's block (only read: the plan keeps the cache)
  std::vector<const S*> inputs;         // [L]: the input of layer l (a copy of x for l = 0)
  std::vector<LayerWeights<S>> weights; // [L*D]: copies of the parameters
  std::vector<S*> kept;                 // [L*D]: where each group's kept layer buffers start
  // Backward overwrites the gate buffers with their gradients: a cache is good for one backward
  // (one over a caller's block keeps the cache: its plan says so, and it is made per backward).
  bool consumed = false;
};

// Inference (cache == null) or training forward (the cache is filled).
template <typename S>
void stack_forward(const CpuStackPlan& plan, const StackForwardArgs<S>& args, CpuStackCache<S>* cache);

// A cache over a caller's block (`block`: plan.footprint.cache elements, as cache_block views them;
// not copied, not written: its plan is `plan` keeping the cache; the block must outlive it) with
// the same call's plan, lengths ([N] or null) and dropout seed. The block's layout is a function of the plan alone, so a caller may
// keep a cache as an array of its own between forward and backward (a "reserve", as cuDNN calls it).
template <typename S>
std::unique_ptr<CpuStackCache<S>> stack_cache_from_block(const CpuStackPlan& plan, const S* block,
                                                         const index_t* lengths, std::uint64_t dropout_seed);

// Throws std::invalid_argument if the cache was already backpropagated.
template <typename S>
void stack_backward(CpuStackCache<S>& cache, const StackBackwardArgs<S>& args);

// One streaming step of N streams (StackForwardArgs says how), with nothing packed or allocated
// per call (a per-thread scratch buffer is kept and grown when needed).
template <typename S>
void stack_step(const StackConfig& cfg, index_t N, const StackForwardArgs<S>& args);

// A snapshot of a unidirectional float32 stack at precision bfloat16 for streaming steps: every
// weight matrix a step multiplies by (W_ih^T, and W_hh^T / W_hn^T / W_hr^T as the cell has them)
// converted and packed once, as bf16 pairs (bf16_gemm.h), so a step reads half the bytes of the
// float32 step and converts nothing but its own rows. A step from it computes what a forward at
// bf16 of the same stack computes (the same rounded operands, float32 sums), where stack_step
// computes in float32. It holds no pointer into the parameters it was packed from: the step's
// other parameters (biases, LayerNorm, peepholes, IndRNN's u) come from the caller, who keeps the
// copies it was packed from (the binding's StepSnapshot does).
struct StepWeights {
  StackConfig cfg;
  Buffer<float> block;                        // every packed matrix, in float memory
  std::vector<PackedWeights<float>> layers;   // [L], views into block, prepacked
};
// Packs `params` ([L] layer weights of cfg, float32) for stack_step_packed. cfg: unidirectional,
// precision bfloat16 (else std::invalid_argument).
std::unique_ptr<StepWeights> pack_step_weights(const StackConfig& cfg, const std::vector<LayerWeights<float>>& params);
// stack_step from a snapshot: args.params are the copies `w` was packed from.
void stack_step_packed(const StepWeights& w, index_t N, const StackForwardArgs<float>& args);

// How many threads of the team (rnnkit.set_num_threads) a call of this batch uses: 1 when a step's
// work is too small to split profitably.
int stack_team_size(const StackConfig& cfg, index_t N);
// The per-step work (N * G*H * P multiply-adds) from which a call uses more than one thread.
void set_min_parallel_step_work(index_t work);

}  // namespace cpu
}  // namespace rnnkit
