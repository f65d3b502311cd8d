// The backend interface: everything the compiled module asks of a device, declared once. The CPU
// backend (cpu/backend.cpp) implements it; the CUDA backend implements the same interface (its
// issue), and the bindings pick one per call by where the call's data lives (backend_for).
//
// A call runs in three steps, like cuDNN's descriptor / workspace-size / execute:
//   1. plan:  the backend computes the call's shapes and every allocation it will make, once;
//   2. check: the caller adds its own outputs and asks the backend whether it all fits the
//             device's memory (nothing is allocated before that: an impossible size is a
//             MemoryError, not a killed process);
//   3. run:   the backend runs the call with the plan; a training forward returns the cache its
//             backward consumes (a cache is good for one backward).
// Arguments are pointers into the backend's own memory (stack.h, network.h, optim.h say what each
// one is); the interface throws std::invalid_argument for bad user input it is the first to see and
// OutOfMemory when an allocation fails.
#pragma once

#include <cstddef>
#include <memory>
#include <type_traits>
#include <vector>

#include "rnnkit/network.h"
#include "rnnkit/optim.h"
#include "rnnkit/stack.h"

namespace rnnkit {

enum class Device : int { kCpu = 0, kCuda = 1 };
const char* device_name(Device device);

// ---- plans and caches (each backend derives its own) ------------------------------------------
// The shape of one call (Config: StackConfig or NetworkConfig) and its parameter list, in order
// (the bindings check the caller's arrays against it).
template <typename Config>
struct CallPlan {
  Config cfg;
  index_t T = 0, N = 0;
  bool training = false;
  std::vector<ParamSpec> specs;

  CallPlan() = default;
  // Declared because the destructor is: without them a plan would be copied, strings and all,
  // wherever it is moved (a streaming step makes one per call).
  CallPlan(const CallPlan&) = default;
  CallPlan(CallPlan&&) noexcept = default;
  CallPlan& operator=(const CallPlan&) = default;
  CallPlan& operator=(CallPlan&&) noexcept = default;
  virtual ~CallPlan() = default;
};

struct StackPlan : CallPlan<StackConfig> {
  StackFootprint footprint;  // element counts of what the call allocates
};

struct NetworkPlan : CallPlan<NetworkConfig> {
  index_t elems = 0;  // everything the call allocates: stack footprint, embedding, head, cache
};

// What a training forward keeps for its backward, owned by the backend that made it.
template <typename Plan>
class CallCache {
 public:
  virtual ~CallCache() = default;
  virtual Device device() const = 0;
  virtual const Plan& plan() const = 0;  // of the forward that made it
  virtual std::size_t nbytes() const = 0;
  virtual int elem_bytes() const = 0;    // 4 (float) or 8 (double)
};

using StackCache = CallCache<StackPlan>;

class NetworkCache : public CallCache<NetworkPlan> {
 public:
  virtual bool has_loss_grad() const = 0;  // the forward was given targets: backward needs no d_outputs
};

// ---- the operations, per element type -------------------------------------------------------
template <typename S>
class BackendOps {
 public:
  virtual ~BackendOps() = default;

  // Stack: forward (the cache in training, null in inference), BPTT, one streaming step.
  virtual std::unique_ptr<StackPlan> plan_stack(const StackConfig& cfg, index_t T, index_t N,
                                                bool training) const = 0;
  virtual std::unique_ptr<StackCache> stack_forward(const StackPlan& plan, const StackForwardArgs<S>& args) const = 0;
  virtual void stack_backward(StackCache& cache, const StackBackwardArgs<S>& args) const = 0;
  virtual void stack_step(const StackConfig& cfg, index_t N, const StackForwardArgs<S>& args) const = 0;
  // A training cache as one flat block of plan.footprint.cache elements, and back: a caller may keep
  // the block as an array of its own between forward and backward (a "reserve", as cuDNN calls it;
  // the PyTorch operators do). `stack_cache_block` views a cache's block; `stack_cache_from_block`
  // makes a cache over one (read, not copied, never written: backward keeps such a cache; the block
  // must outlive it) and the same call's plan, lengths ([N] or null) and seed.
  virtual const S* stack_cache_block(const StackCache& cache) const = 0;
  virtual std::unique_ptr<StackCache> stack_cache_from_block(const StackPlan& plan, const S* block,
                                                             const index_t* lengths,
                                                             std::uint64_t dropout_seed) const = 0;

  // Network: forward with the fused loss, backward, sampling.
  virtual std::unique_ptr<NetworkPlan> plan_network(const NetworkConfig& cfg, index_t T, index_t N,
                                                    bool training) const = 0;
  virtual std::unique_ptr<NetworkCache> network_forward(const NetworkPlan& plan,
                                                        const NetworkForwardArgs<S>& args) const = 0;
  virtual void network_backward(NetworkCache& cache, const NetworkBackwardArgs<S>& args) const = 0;
  virtual void network_generate(const NetworkConfig& cfg, const NetworkGenerateArgs<S>& args) const = 0;

  // Optimizers and clipping, elementwise over one parameter array of n elements (optim.h).
  virtual void sgd_update(S* param, const S* grad, S* momentum_buf, index_t n, const SgdHyper& h,
                          bool first_step) const = 0;
  virtual void adam_update(S* param, const S* grad, S* exp_avg, S* exp_avg_sq, index_t n, const AdamHyper& h,
                           index_t step) const = 0;
  virtual void rmsprop_update(S* param, const S* grad, S* square_avg, S* momentum_buf, S* grad_avg, index_t n,
                              const RmspropHyper& h) const = 0;
  virtual double sum_of_squares(const S* g, index_t n) const = 0;
  virtual void scale(S* g, index_t n, S factor) const = 0;
  virtual void clamp(S* g, index_t n, S limit) const = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  // Throws OutOfMemory when `bytes` cannot fit in the device's memory (before anything is allocated).
  virtual void check_fits(index_t bytes, const char* what_for) const = 0;
  virtual const BackendOps<float>& f32() const = 0;
  virtual const BackendOps<double>& f64() const = 0;

  template <typename S>
  const BackendOps<S>& ops() const {
    static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "float or double");
    if constexpr (std::is_same_v<S, float>) {
      return f32();
    } else {
      return f64();
    }
  }
};

// The backend for data on `device`. Throws std::invalid_argument naming the device when this build
// or machine cannot compute there (a CPU-only build asked for CUDA, say).
const Backend& backend_for(Device device);

}  // namespace rnnkit
