// The recurrent network on the CUDA backend (the contract is network.h's): embedding, the CUDA layer
// stack (stack.h), the output layer and the fused loss, with the CPU backend's order of operations
// and its reductions' orders where it fixes one (the loss is summed per row, then over rows in row
// order, on the host; bias and embedding gradients add rows in row order).
//
// Memory: parameters, gradients, dense inputs x, states, outputs, MSE targets and d_outputs are
// device memory. Token ids, class-id targets and lengths are host arrays (the bindings validate
// them there): the call copies them to the device. Generation runs each step's forward on the
// device and draws the token on the host from the step's logits (common/network_rows.h, as the
// CPU backend does), so both backends draw the same tokens from the same logits.
#pragma once

#include <cstdint>
#include <memory>

#include "device.h"
#include "rnnkit/backend.h"
#include "stack.h"

namespace rnnkit {
namespace cuda {

struct CudaNetworkPlan : NetworkPlan {
  CudaStackPlan stack;
  index_t rows = 0;  // R, rows of the head
};

template <typename S>
CudaNetworkPlan plan_network(const NetworkConfig& cfg, index_t T, index_t N, bool training);

template <typename S>
class CudaNetworkCache final : public NetworkCache {
 public:
  Device device() const override { return Device::kCuda; }
  const NetworkPlan& plan() const override { return plan_; }
  std::size_t nbytes() const override {
    return static_cast<std::size_t>(block.size() + stack.block.size()) * sizeof(S) +
           static_cast<std::size_t>(tokens.size()) * sizeof(std::int64_t);
  }
  int elem_bytes() const override { return static_cast<int>(sizeof(S)); }
  bool has_loss_grad() const override { return has_loss_grad_; }

  CudaNetworkPlan plan_;
  CudaStackCache<S> stack;
  DeviceBuffer<index_t> tokens;  // [T,N] on the device (token input)
  DeviceBuffer<S> block;
  S* features = nullptr;  // [R,F]
  S* d_out = nullptr;     // [R,K]: dL/d(outputs) when the loss was fused
  S* out_w = nullptr;     // [K,F] copy
  bool has_loss_grad_ = false;
};

// Inference (cache == null) or training forward (the cache is filled).
template <typename S>
void network_forward(const CudaNetworkPlan& plan, const NetworkForwardArgs<S>& args, CudaNetworkCache<S>* cache);

template <typename S>
void network_backward(CudaNetworkCache<S>& cache, const NetworkBackwardArgs<S>& args);

// args.state (in and out) and the weights are device memory; prefix and out_tokens host memory.
template <typename S>
void network_generate(const NetworkConfig& cfg, const NetworkGenerateArgs<S>& args);

}  // namespace cuda
}  // namespace rnnkit
