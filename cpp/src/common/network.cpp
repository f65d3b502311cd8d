// The network's configuration rules and parameter list (network.h), shared by every backend.
#include "rnnkit/network.h"

namespace rnnkit {

void check_network_config(const NetworkConfig& cfg) {
  check_stack_config(cfg.stack);
  if (cfg.vocab_size < 0) throw_expected("vocab_size", "an integer >= 0 (0: dense input)", cfg.vocab_size);
  if (cfg.output_size < 1) throw_expected("output_size", "an integer >= 1", cfg.output_size);
  if (cfg.loss == LossKind::kCrossEntropy && cfg.output_size < 2) {
    throw_expected("output_size", "at least 2 classes for cross-entropy", cfg.output_size);
  }
}

std::vector<ParamSpec> network_param_specs(const NetworkConfig& cfg) {
  std::vector<ParamSpec> specs;
  if (cfg.vocab_size > 0) {
    specs.push_back({"embedding.weight", {cfg.vocab_size, cfg.stack.input_size}, ParamRole::kEmbedding});
  }
  for (ParamSpec s : stack_param_specs(cfg.stack)) {
    s.name = "rnn." + s.name;
    specs.push_back(std::move(s));
  }
  specs.push_back({"output.weight", {cfg.output_size, cfg.feature_size()}, ParamRole::kOutWeight});
  specs.push_back({"output.bias", {cfg.output_size}, ParamRole::kOutBias});
  return specs;
}

}  // namespace rnnkit
