// The layer stack on the CUDA backend (the contract is stack.h's), the standard cuDNN-style path:
// per layer-direction the input projection for all T steps as one GEMM, per step one recurrent GEMM
// (two for the two-stage GRU, plus the projection's) and one fused pointwise kernel running the
// cell of cells.h, and after the BPTT loop the weight-gradient and dx GEMMs over all T*N rows.
//
// Every pointer is device memory, except `lengths` ([N] int64 or null), which the bindings check on
// the host: the call copies it to the device. A call allocates once (its footprint, as on the CPU)
// and carves named views; a training cache is one device block in the CPU's layout (a copy of x
// with padded steps zeroed, every layer's input, a copy of the parameters, each group's kept layer
// buffers), so the same offsets describe a reserve on either backend.
//
// The LayerNorm cells average over a whole row inside the cell: they run one block per batch row
// (row_kernels.h), for hidden sizes up to kMaxRowLanes * kMaxBlockThreads = 8192 (plan_stack
// refuses larger ones).
#pragma once

#include <memory>
#include <vector>

#include "device.h"
#include "rnnkit/backend.h"

namespace rnnkit {
namespace cuda {

struct CudaStackPlan : StackPlan {
  LayerShape shape;            // layer 0 (later layers differ in C only)
  index_t layer_kept = 0;      // elements of one group's kept layer buffers
  index_t layer_forward = 0;   // ... of the forward's layer scratch (shared by the groups)
  index_t layer_backward = 0;  // ... of the backward's
};

template <typename S>
class CudaStackCache final : public StackCache {
 public:
  Device device() const override { return Device::kCuda; }
  const StackPlan& plan() const override { return plan_; }
  std::size_t nbytes() const override { return static_cast<std::size_t>(block.size()) * sizeof(S); }
  int elem_bytes() const override { return static_cast<int>(sizeof(S)); }
  S* data() { return external != nullptr ? const_cast<S*>(external) : block.data(); }
  const S* data() const { return external != nullptr ? external : block.data(); }

  CudaStackPlan plan_;
  DeviceBuffer<index_t> lengths;        // [N] on the device; empty: every sequence has T steps
  std::uint64_t dropout_seed = 0;
  DeviceBuffer<S> block;                // what the views below point into (or into `external`)
  const S* external = nullptr;          // a caller's reserve (read only: the plan keeps the cache)
  std::vector<const S*> inputs;         // [L] the input of layer l (a copy of x for l = 0)
  std::vector<LayerWeights<S>> weights; // [L*D] copies of the parameters
  std::vector<S*> kept;                 // [L*D] where each group's kept layer buffers start
  bool consumed = false;                // backward writes over the gates: one backward per cache
};

// Throws std::invalid_argument for a shape this backend does not run.
template <typename S>
CudaStackPlan plan_stack(const StackConfig& cfg, index_t T, index_t N, bool training, std::vector<ParamSpec> specs,
                         bool keep_cache = false);
template <typename S>
void stack_forward(const CudaStackPlan& plan, const StackForwardArgs<S>& args, CudaStackCache<S>* cache);
template <typename S>
std::unique_ptr<CudaStackCache<S>> stack_cache_from_block(const CudaStackPlan& plan, const S* block,
                                                          const index_t* lengths, std::uint64_t dropout_seed);
template <typename S>
void stack_backward(CudaStackCache<S>& cache, const StackBackwardArgs<S>& args);
template <typename S>
void stack_step(const StackConfig& cfg, index_t N, const StackForwardArgs<S>& args);

}  // namespace cuda
}  // namespace rnnkit
