// The stack's configuration rules and parameter list (stack.h), shared by every backend.
#include "rnnkit/stack.h"

namespace rnnkit {

void check_stack_config(const StackConfig& cfg) {
  if (cfg.num_layers < 1) throw_expected("num_layers", "an integer >= 1", cfg.num_layers);
  if (cfg.num_directions != 1 && cfg.num_directions != 2) {
    throw_expected("num_directions", "1 or 2", cfg.num_directions);
  }
  if (cfg.reverse && cfg.num_directions != 1) {
    throw_expected("direction", "'reverse' with one direction, or 'bidirectional'", "both");
  }
  if (cfg.input_size < 1) throw_expected("input_size", "an integer >= 1", cfg.input_size);
  if (cfg.hidden_size < 1) throw_expected("hidden_size", "an integer >= 1", cfg.hidden_size);
  if (cfg.proj_size < 0) throw_expected("proj_size", "an integer >= 0", cfg.proj_size);
  if (cfg.proj_size > 0 && cfg.cell != CellKind::kLstm) {
    throw_expected("proj_size", "0 (projections exist for LSTM only)", cfg.proj_size);
  }
  if (cfg.proj_size >= cfg.hidden_size && cfg.proj_size > 0) {
    throw_expected("proj_size", concat("less than hidden_size (", cfg.hidden_size, ")"), cfg.proj_size);
  }
  if (!(cfg.dropout >= 0.0 && cfg.dropout <= 1.0)) throw_expected("dropout", "a probability in [0, 1]", cfg.dropout);
}

void check_precision(const StackConfig& cfg, bool float32) {
  if (cfg.precision == Precision::kBfloat16 && !float32) {
    throw_expected("precision", "'float32' for float64 arrays (bfloat16 GEMMs read float32 parameters)",
                   "'bfloat16'");
  }
}

void check_stack_dims(const StackConfig& cfg, index_t T, index_t N) {
  const index_t gates = cell_info(cfg.cell).gates;
  for (index_t l = 0; l < cfg.num_layers; ++l) check_layer_dims(cfg.layer_dims(l, T, N), gates);
}

std::vector<ParamSpec> stack_param_specs(const StackConfig& cfg) {
  const CellInfo ci = cell_info(cfg.cell);
  const index_t H = cfg.hidden_size;
  const index_t GH = ci.gates * H;
  const index_t P = cfg.state_size();
  static const char* kLnNames[kMaxLnParams] = {"ln_ih_weight", "ln_ih_bias", "ln_hh_weight",
                                               "ln_hh_bias", "ln_c_weight", "ln_c_bias"};
  std::vector<ParamSpec> specs;
  for (index_t l = 0; l < cfg.num_layers; ++l) {
    for (index_t d = 0; d < cfg.num_directions; ++d) {
      const index_t g = l * cfg.num_directions + d;
      // Plain string operations (no stream): this runs on every call from Python.
      const std::string sfx = "_l" + std::to_string(l) + (d == 1 ? "_reverse" : "");
      specs.push_back({"weight_ih" + sfx, {GH, cfg.layer_input_size(l)}, ParamRole::kWIh, g});
      specs.push_back({"weight_hh" + sfx, {GH, P}, ParamRole::kWHh, g});
      if (cfg.bias) {
        specs.push_back({"bias_ih" + sfx, {GH}, ParamRole::kBIh, g});
        specs.push_back({"bias_hh" + sfx, {GH}, ParamRole::kBHh, g});
      }
      if (cfg.proj_size > 0) specs.push_back({"weight_hr" + sfx, {P, H}, ParamRole::kWHr, g});
      for (int p = 0; p < ci.ln_params; ++p) {
        specs.push_back({kLnNames[p] + sfx, {ln_param_width(p, GH, H)},
                         static_cast<ParamRole>(static_cast<int>(ParamRole::kLn0) + p), g});
      }
    }
  }
  return specs;
}

index_t total_numel(const std::vector<ParamSpec>& specs) {
  index_t n = 0;
  for (const ParamSpec& s : specs) n = checked_add(n, s.numel(), "parameters");
  return n;
}

}  // namespace rnnkit
