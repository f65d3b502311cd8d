// The recurrent network on the CPU (the contract is network.h's): embedding, the CPU layer stack,
// the output layer and the fused loss, split over the thread team by rows.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/buffer.h"
#include "cpu/stack.h"
#include "rnnkit/backend.h"

namespace rnnkit {
namespace cpu {

struct CpuNetworkPlan : NetworkPlan {
  CpuStackPlan stack;
  index_t rows = 0;        // R, rows of the head
  bool streaming = false;  // inference of one step, unidirectional: the allocation-free step path
};

template <typename S>
CpuNetworkPlan plan_network(const NetworkConfig& cfg, index_t T, index_t N, bool training);

template <typename S>
class CpuNetworkCache final : public CpuCache<S, NetworkCache, CpuNetworkPlan> {
 public:
  std::size_t nbytes() const override {
    return static_cast<std::size_t>(block.size() + stack.block.size()) * sizeof(S) +
           tokens.size() * sizeof(std::int64_t);
  }
  bool has_loss_grad() const override { return has_loss_grad_; }

  CpuStackCache<S> stack;
  std::vector<std::int64_t> tokens;  // [T,N] (token input)
  Buffer<S> block;
  S* features = nullptr;  // [R,F]
  S* d_out = nullptr;     // [R,K]: dL/d(outputs) when the loss was fused, else filled by backward
  S* out_w = nullptr;     // [K,F] copy
  bool has_loss_grad_ = false;
};

// Inference (cache == null) or training forward (the cache is filled).
template <typename S>
void network_forward(const CpuNetworkPlan& plan, const NetworkForwardArgs<S>& args, CpuNetworkCache<S>* cache);

template <typename S>
void network_backward(CpuNetworkCache<S>& cache, const NetworkBackwardArgs<S>& args);

template <typename S>
void network_generate(const NetworkConfig& cfg, const NetworkGenerateArgs<S>& args);

// A network's step snapshot at precision bfloat16 (stack.h's StepWeights for its layers, and the
// output layer's V^T [F, K] packed as bf16 pairs), for network_step_packed.
struct NetworkStepWeights {
  NetworkConfig cfg;
  std::unique_ptr<StepWeights> stack;
  Buffer<float> head;  // bf16 pairs in float memory
};
// cfg: a sequence head over a unidirectional float32 stack at bfloat16 (else std::invalid_argument).
std::unique_ptr<NetworkStepWeights> pack_network_step(const NetworkConfig& cfg, const NetworkWeights<float>& w);
// One step of N streams of a sequence-head network over a unidirectional stack, on the calling
// thread: in.T == 1; state0 required (h, and c for cells with one); outputs [N, K] (softmax
// applied when `softmax`); state_n as the stack's. From the parameters w (the stack in float32
// whatever the precision, the output layer at the precision), or from a snapshot `packed` (then
// w holds the copies it was packed from; float only). Allocates nothing per call once a thread
// has stepped at this size.
template <typename S>
void network_step(const NetworkConfig& cfg, const NetworkWeights<S>& w, const NetworkInputs& in,
                  StatePair<const S*> state0, S* outputs, StatePair<S*> state_n, bool softmax,
                  const NetworkStepWeights* packed = nullptr);

}  // namespace cpu
}  // namespace rnnkit
