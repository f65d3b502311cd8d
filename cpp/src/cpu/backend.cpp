// The CPU backend (cpu/backend.h): backend.h's operations mapped onto the CPU stack, network and
// optimizer code. Plans and caches are the CPU's own types behind the interface's bases.
#include "cpu/backend.h"

#include <memory>

#include "cpu/buffer.h"
#include "cpu/network.h"
#include "cpu/optim.h"
#include "cpu/stack.h"

namespace rnnkit {
namespace cpu {
namespace {

// A cache or plan handed back to this backend must be one it made, for this element type.
template <typename Derived, typename Base>
Derived& own(Base& object, const char* what) {
  auto* mine = dynamic_cast<Derived*>(&object);
  if (mine == nullptr) {
    throw std::invalid_argument(concat(what, ": expected one made by the CPU backend for this dtype, got another"));
  }
  return *mine;
}

// A forward: inference runs with no cache; training fills a new one and hands it back.
template <typename Cache, typename Plan, typename Args>
std::unique_ptr<Cache> run_forward(const Plan& plan, const Args& args, void (*forward)(const Plan&, const Args&, Cache*)) {
  if (!plan.training) {
    forward(plan, args, nullptr);
    return nullptr;
  }
  auto cache = std::make_unique<Cache>();
  forward(plan, args, cache.get());
  return cache;
}

template <typename S>
class CpuOps final : public BackendOps<S> {
 public:
  std::unique_ptr<StackPlan> plan_stack(const StackConfig& cfg, index_t T, index_t N, bool training) const override {
    return std::make_unique<CpuStackPlan>(cpu::plan_stack<S>(cfg, T, N, training, stack_param_specs(cfg)));
  }
  std::unique_ptr<StackCache> stack_forward(const StackPlan& plan, const StackForwardArgs<S>& args) const override {
    return run_forward<CpuStackCache<S>>(own<const CpuStackPlan>(plan, "plan"), args, &cpu::stack_forward<S>);
  }
  void stack_backward(StackCache& cache, const StackBackwardArgs<S>& args) const override {
    cpu::stack_backward<S>(own<CpuStackCache<S>>(cache, "cache"), args);
  }
  void stack_step(const StackConfig& cfg, index_t N, const StackForwardArgs<S>& args) const override {
    cpu::stack_step<S>(cfg, N, args);
  }
  const S* stack_cache_block(const StackCache& cache) const override {
    return own<const CpuStackCache<S>>(cache, "cache").data();
  }
  std::unique_ptr<StackCache> stack_cache_from_block(const StackPlan& plan, const S* block, const index_t* lengths,
                                                     std::uint64_t dropout_seed) const override {
    return cpu::stack_cache_from_block<S>(own<const CpuStackPlan>(plan, "plan"), block, lengths, dropout_seed);
  }

  std::unique_ptr<NetworkPlan> plan_network(const NetworkConfig& cfg, index_t T, index_t N,
                                            bool training) const override {
    return std::make_unique<CpuNetworkPlan>(cpu::plan_network<S>(cfg, T, N, training));
  }
  std::unique_ptr<NetworkCache> network_forward(const NetworkPlan& plan, const NetworkForwardArgs<S>& args) const override {
    return run_forward<CpuNetworkCache<S>>(own<const CpuNetworkPlan>(plan, "plan"), args, &cpu::network_forward<S>);
  }
  void network_backward(NetworkCache& cache, const NetworkBackwardArgs<S>& args) const override {
    cpu::network_backward<S>(own<CpuNetworkCache<S>>(cache, "cache"), args);
  }
  void network_generate(const NetworkConfig& cfg, const NetworkGenerateArgs<S>& args) const override {
    cpu::network_generate<S>(cfg, args);
  }

  void sgd_update(S* param, const S* grad, S* momentum_buf, index_t n, const SgdHyper& h,
                  bool first_step) const override {
    cpu::sgd_update<S>(param, grad, momentum_buf, n, h, first_step);
  }
  void adam_update(S* param, const S* grad, S* exp_avg, S* exp_avg_sq, index_t n, const AdamHyper& h,
                   index_t step) const override {
    cpu::adam_update<S>(param, grad, exp_avg, exp_avg_sq, n, h, step);
  }
  void rmsprop_update(S* param, const S* grad, S* square_avg, S* momentum_buf, S* grad_avg, index_t n,
                      const RmspropHyper& h) const override {
    cpu::rmsprop_update<S>(param, grad, square_avg, momentum_buf, grad_avg, n, h);
  }
  double sum_of_squares(const S* g, index_t n) const override { return cpu::sum_of_squares<S>(g, n); }
  void scale(S* g, index_t n, S factor) const override { cpu::scale_in_place<S>(g, n, factor); }
  void clamp(S* g, index_t n, S limit) const override { cpu::clamp_in_place<S>(g, n, limit); }
};

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::kCpu; }
  void check_fits(index_t bytes, const char* what_for) const override { check_fits_in_memory(bytes, what_for); }
  const BackendOps<float>& f32() const override { return f32_; }
  const BackendOps<double>& f64() const override { return f64_; }

 private:
  CpuOps<float> f32_;
  CpuOps<double> f64_;
};

}  // namespace

const Backend& cpu_backend() {
  static const CpuBackend backend;
  return backend;
}

}  // namespace cpu
}  // namespace rnnkit
