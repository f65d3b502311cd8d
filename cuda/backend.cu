// The CUDA backend (backend.h's interface) over the stack of stack.cu, the network of network.cu and
// the updates of optim.cu.
#include "cuda_backend.h"

#include <memory>

#include "cuda_optim.h"
#include "network.h"
#include "stack.h"

namespace rnnkit {
namespace cuda {
namespace {

template <typename Derived, typename Base>
Derived& own(Base& object, const char* what) {
  auto* mine = dynamic_cast<Derived*>(&object);
  if (mine == nullptr) {
    throw std::invalid_argument(concat(what, ": expected one made by the CUDA backend for this dtype, got another"));
  }
  return *mine;
}

template <typename S>
class CudaOps final : public BackendOps<S> {
 public:
  std::unique_ptr<StackPlan> plan_stack(const StackConfig& cfg, index_t T, index_t N, bool training) const override {
    return std::make_unique<CudaStackPlan>(cuda::plan_stack<S>(cfg, T, N, training, stack_param_specs(cfg)));
  }
  std::unique_ptr<StackCache> stack_forward(const StackPlan& plan, const StackForwardArgs<S>& args) const override {
    const auto& p = own<const CudaStackPlan>(plan, "plan");
    if (!p.training) {
      cuda::stack_forward<S>(p, args, nullptr);
      return nullptr;
    }
    auto cache = std::make_unique<CudaStackCache<S>>();
    cuda::stack_forward<S>(p, args, cache.get());
    return cache;
  }
  void stack_backward(StackCache& cache, const StackBackwardArgs<S>& args) const override {
    cuda::stack_backward<S>(own<CudaStackCache<S>>(cache, "cache"), args);
  }
  void stack_step(const StackConfig& cfg, index_t N, const StackForwardArgs<S>& args) const override {
    cuda::stack_step<S>(cfg, N, args);
  }
  const S* stack_cache_block(const StackCache& cache) const override {
    return own<const CudaStackCache<S>>(cache, "cache").data();
  }
  std::unique_ptr<StackCache> stack_cache_from_block(const StackPlan& plan, const S* block, const index_t* lengths,
                                                     std::uint64_t dropout_seed) const override {
    return cuda::stack_cache_from_block<S>(own<const CudaStackPlan>(plan, "plan"), block, lengths, dropout_seed);
  }

  std::unique_ptr<NetworkPlan> plan_network(const NetworkConfig& cfg, index_t T, index_t N,
                                            bool training) const override {
    return std::make_unique<CudaNetworkPlan>(cuda::plan_network<S>(cfg, T, N, training));
  }
  std::unique_ptr<NetworkCache> network_forward(const NetworkPlan& plan, const NetworkForwardArgs<S>& args) const override {
    const auto& p = own<const CudaNetworkPlan>(plan, "plan");
    if (!p.training) {
      cuda::network_forward<S>(p, args, nullptr);
      return nullptr;
    }
    auto cache = std::make_unique<CudaNetworkCache<S>>();
    cuda::network_forward<S>(p, args, cache.get());
    return cache;
  }
  void network_backward(NetworkCache& cache, const NetworkBackwardArgs<S>& args) const override {
    cuda::network_backward<S>(own<CudaNetworkCache<S>>(cache, "cache"), args);
  }
  void network_generate(const NetworkConfig& cfg, const NetworkGenerateArgs<S>& args) const override {
    cuda::network_generate<S>(cfg, args);
  }
  void sgd_update(S* param, const S* grad, S* momentum_buf, index_t n, const SgdHyper& h,
                  bool first_step) const override {
    cuda::sgd_update<S>(param, grad, momentum_buf, n, h, first_step);
  }
  void adam_update(S* param, const S* grad, S* exp_avg, S* exp_avg_sq, index_t n, const AdamHyper& h,
                   index_t step) const override {
    cuda::adam_update<S>(param, grad, exp_avg, exp_avg_sq, n, h, step);
  }
  void rmsprop_update(S* param, const S* grad, S* square_avg, S* momentum_buf, S* grad_avg, index_t n,
                      const RmspropHyper& h) const override {
    cuda::rmsprop_update<S>(param, grad, square_avg, momentum_buf, grad_avg, n, h);
  }
  double sum_of_squares(const S* g, index_t n) const override { return cuda::sum_of_squares<S>(g, n); }
  void scale(S* g, index_t n, S factor) const override { cuda::scale_in_place<S>(g, n, factor); }
  void clamp(S* g, index_t n, S limit) const override { cuda::clamp_in_place<S>(g, n, limit); }
};

class CudaBackend final : public Backend {
 public:
  Device device() const override { return Device::kCuda; }
  void check_fits(index_t bytes, const char* what_for) const override {
    std::size_t free_bytes = 0, total_bytes = 0;
    memory_info(&free_bytes, &total_bytes);
    if (total_bytes != 0 && static_cast<std::size_t>(bytes) > total_bytes) {
      throw OutOfMemory(static_cast<std::size_t>(bytes),
                        concat(what_for, " (more than the device's ", total_bytes, " bytes of memory)"));
    }
  }
  const BackendOps<float>& f32() const override { return f32_; }
  const BackendOps<double>& f64() const override { return f64_; }

 private:
  CudaOps<float> f32_;
  CudaOps<double> f64_;
};

}  // namespace

const Backend& cuda_backend() {
  static const CudaBackend backend;
  return backend;
}

}  // namespace cuda
}  // namespace rnnkit
