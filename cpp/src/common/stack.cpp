// The stack's configuration rules and parameter list (stack.h), shared by every backend.
#include "rnnkit/stack.h"

#include <cstdio>
#include <cstdlib>
#include <limits>

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
  const auto check_probability = [](const char* name, double p) {
    if (!(p >= 0.0 && p < 1.0)) throw_expected(name, "a probability in [0, 1)", p);
  };
  check_probability("weight_dropout", cfg.weight_dropout);
  check_probability("zoneout", cfg.zoneout);
  check_probability("zoneout_cell", cfg.zoneout_cell);
  check_probability("input_dropout", cfg.input_dropout);
  check_probability("recurrent_dropout", cfg.recurrent_dropout);
  const CellInfo info = cell_info(cfg.cell);
  if (cfg.weight_dropout > 0.0 && info.no_recurrent_weight) {
    throw_expected("weight_dropout", concat("0 for cell ", cell_name(cfg.cell), " (it has no recurrent weight)"),
                   cfg.weight_dropout);
  }
  if (cfg.zoneout_cell > 0.0 && !info.has_cell_state) {
    throw_expected("zoneout_cell", concat("0 for cell ", cell_name(cfg.cell), " (it has no cell state; zoneout= is h's)"),
                   cfg.zoneout_cell);
  }
  if (cfg.recurrent_dropout > 0.0 && !info.recurrent_gemm) {
    throw_expected("recurrent_dropout",
                   concat("0 for cell ", cell_name(cfg.cell), " (it has no recurrent weight matrix for h_{t-1} to enter)"),
                   cfg.recurrent_dropout);
  }
}

template <typename S>
void fill_dropout_mask(std::uint64_t seed, index_t stream, double p, index_t begin, index_t end, S* mask) {
  const UniformStream u(seed, stream);
  const std::uint64_t below = UniformStream::threshold(p);
  const S scale = S(1.0 / (1.0 - p));
  for (index_t i = begin; i < end; ++i) mask[i] = u.below(i, below) ? S(0) : scale;
}
template void fill_dropout_mask<float>(std::uint64_t, index_t, double, index_t, index_t, float*);
template void fill_dropout_mask<double>(std::uint64_t, index_t, double, index_t, index_t, double*);

LayerShape stack_layer_shape(const StackConfig& cfg, index_t T, index_t N, bool training) {
  LayerShape s = layer_shape(cfg.kernel_cell(), cfg.layer_dims(0, T, N), training);
  s.zoneout = cfg.zoneout;
  s.zoneout_cell = cfg.zoneout_cell;
  s.zoneout_masks = training && !cfg.zoneout_expected;
  s.recurrent_dropout = training ? cfg.recurrent_dropout : 0.0;
  return s;
}

CellKind StackConfig::kernel_cell() const {
  if (!general) return cell;
  switch (cell) {
    case CellKind::kRnnTanh:
    case CellKind::kRnnRelu: return CellKind::kRnnGeneral;
    case CellKind::kLstm: return CellKind::kLstmGeneral;
    case CellKind::kGru: return CellKind::kGruGeneral;
    case CellKind::kGruResetBefore: return CellKind::kGruResetBeforeGeneral;
    default: break;
  }
  assert(false && "set_cell_options admits no options for this cell");
  return cell;
}

int cell_activation_count(CellKind cell) {
  switch (cell) {
    case CellKind::kRnnTanh:
    case CellKind::kRnnRelu: return 1;
    case CellKind::kLstm: return 3;
    case CellKind::kGru:
    case CellKind::kGruResetBefore: return 2;
    default: return 0;
  }
}

CellOptions default_cell_options(CellKind cell) {
  CellOptions o;
  const Activation sigmoid{ActKind::kSigmoid}, tanh{ActKind::kTanh};
  switch (cell) {
    case CellKind::kRnnRelu: o.act[0] = {ActKind::kRelu}; break;
    case CellKind::kLstm: o.act[0] = sigmoid; o.act[1] = tanh; o.act[2] = tanh; break;
    case CellKind::kGru:
    case CellKind::kGruResetBefore: o.act[0] = sigmoid; o.act[1] = tanh; break;
    default: o.act[0] = tanh; break;
  }
  return o;
}

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string::size_type start = 0;
  while (true) {
    const auto end = s.find(sep, start);
    parts.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return parts;
    start = end + 1;
  }
}

double parse_number(const std::string& what, const std::string& text) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) throw_expected(what, "a number", concat("'", text, "'"));
  return v;
}

std::string activation_choices() {
  std::string names;
  for (const ActivationName& a : kActivationNames) names += (names.empty() ? "" : ", ") + std::string(a.name);
  return names;
}

const ActivationName& activation_entry(ActKind kind) {
  for (const ActivationName& a : kActivationNames) {
    if (a.kind == kind) return a;
  }
  assert(false);
  return kActivationNames[0];
}

Activation parse_activation(const std::string& text) {
  const std::vector<std::string> parts = split(text, ':');
  for (const ActivationName& a : kActivationNames) {
    if (parts[0] != a.name) continue;
    const int given = static_cast<int>(parts.size()) - 1;
    if (given > a.params) {
      throw_expected(concat("activation_alpha/activation_beta of ", a.name),
                     a.params == 0 ? std::string("none (it takes no parameters)")
                                   : concat("at most ", a.params, " (", a.params == 1 ? "alpha" : "alpha, beta", ")"),
                     given);
    }
    Activation f{a.kind, a.default_alpha, a.default_beta};
    if (given >= 1) f.alpha = parse_number(concat("activation_alpha of ", a.name), parts[1]);
    if (given >= 2) f.beta = parse_number(concat("activation_beta of ", a.name), parts[2]);
    return f;
  }
  throw_expected("activations", concat("names among ", activation_choices()), concat("'", parts[0], "'"));
}

bool same(const CellOptions& a, const CellOptions& b, int acts) {
  for (int k = 0; k < acts; ++k) {
    if (a.act[k].kind != b.act[k].kind || a.act[k].alpha != b.act[k].alpha || a.act[k].beta != b.act[k].beta) {
      return false;
    }
  }
  return a.clip == b.clip && a.peephole == b.peephole && a.coupled == b.coupled;
}

}  // namespace

void set_cell_options(StackConfig& cfg, const std::string& spec) {
  const CellOptions defaults = default_cell_options(cfg.cell);
  cfg.options[0] = cfg.options[1] = defaults;
  cfg.general = false;
  if (spec.empty()) return;
  const int acts = cell_activation_count(cfg.cell);
  const bool lstm = cfg.cell == CellKind::kLstm;
  if (acts == 0) {
    throw_expected("options", concat("none of ONNX's (activations, clip, peephole, coupled_gates) for cell ",
                                     cell_name(cfg.cell)), concat("'", spec, "'"));
  }
  std::vector<std::string> seen;
  for (const std::string& item : split(spec, ';')) {
    const auto eq = item.find('=');
    const std::string key = item.substr(0, eq), value = eq == std::string::npos ? "" : item.substr(eq + 1);
    for (const std::string& k : seen) {
      if (k == key) throw_expected("cell options", concat("'", key, "' at most once"), concat("'", spec, "'"));
    }
    seen.push_back(key);
    if (key == "act") {
      const std::vector<std::string> groups = split(value, '|');
      if (static_cast<index_t>(groups.size()) > cfg.num_directions) {
        throw_expected("activations", concat("one set, or one per direction (", cfg.num_directions, ")"),
                       groups.size());
      }
      for (index_t d = 0; d < static_cast<index_t>(groups.size()); ++d) {
        const std::vector<std::string> names = split(groups[d], ',');
        if (static_cast<int>(names.size()) != acts) {
          throw_expected("activations", concat(acts, " per direction for cell ", cell_name(cfg.cell),
                                               acts == 3 ? " (f, g, h)" : acts == 2 ? " (f, g)" : " (f)"),
                         names.size());
        }
        for (int k = 0; k < acts; ++k) cfg.options[d].act[k] = parse_activation(names[k]);
      }
      if (groups.size() == 1) {
        for (int k = 0; k < acts; ++k) cfg.options[1].act[k] = cfg.options[0].act[k];
      }
    } else if (key == "clip") {
      const double c = parse_number("clip", value);
      if (!(c > 0) || c == std::numeric_limits<double>::infinity()) throw_expected("clip", "a finite number > 0", c);
      cfg.options[0].clip = cfg.options[1].clip = c;
    } else if (key == "peephole" || key == "coupled") {
      const char* name = key == "peephole" ? "peephole" : "coupled_gates";
      if (value != "1") throw_expected(name, "1", concat("'", value, "'"));
      if (!lstm) throw_expected(name, concat("False for cell ", cell_name(cfg.cell), " (LSTM only)"), "True");
      if (key == "coupled" && cfg.proj_size > 0) {
        throw_expected("coupled_gates", "False with a projection (proj_size > 0)", "True");
      }
      for (CellOptions& o : cfg.options) (key == "peephole" ? o.peephole : o.coupled) = 1;
    } else {
      throw_expected("cell options", "keys among act, clip, peephole, coupled", concat("'", key, "'"));
    }
  }
  cfg.general = !same(cfg.options[0], defaults, acts) || !same(cfg.options[1], defaults, acts);
}

std::string cell_options_string(const StackConfig& cfg) {
  if (!cfg.general) return "";
  const int acts = cell_activation_count(cfg.cell);
  auto number = [](double v) {
    // The shortest form that reads back as the same double.
    char buf[32];
    for (int digits = 15; digits <= 17; ++digits) {
      std::snprintf(buf, sizeof buf, "%.*g", digits, v);
      if (std::strtod(buf, nullptr) == v) break;
    }
    return std::string(buf);
  };
  auto group = [&](const CellOptions& o) {
    std::string g;
    for (int k = 0; k < acts; ++k) {
      const ActivationName& a = activation_entry(o.act[k].kind);
      g += (k ? "," : "") + std::string(a.name);
      if (a.params >= 1) g += ":" + number(o.act[k].alpha);
      if (a.params >= 2) g += ":" + number(o.act[k].beta);
    }
    return g;
  };
  std::string s = "act=" + group(cfg.options[0]);
  if (cfg.num_directions == 2 && group(cfg.options[1]) != group(cfg.options[0])) s += "|" + group(cfg.options[1]);
  if (cfg.options[0].clip > 0) s += ";clip=" + number(cfg.options[0].clip);
  if (cfg.options[0].peephole) s += ";peephole=1";
  if (cfg.options[0].coupled) s += ";coupled=1";
  return s;
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
      if (ci.diagonal_recurrent) {
        specs.push_back({"weight_hh" + sfx, {H}, ParamRole::kWHh, g});  // IndRNN's u
      } else if (!ci.no_recurrent_weight) {
        specs.push_back({"weight_hh" + sfx, {GH, P}, ParamRole::kWHh, g});
      }
      if (cfg.bias) {
        specs.push_back({"bias_ih" + sfx, {GH}, ParamRole::kBIh, g});
        // minGRU/minLSTM: one bias (their gates are one linear map of x_t)
        if (!ci.no_recurrent_weight) specs.push_back({"bias_hh" + sfx, {GH}, ParamRole::kBHh, g});
      }
      if (cfg.proj_size > 0) specs.push_back({"weight_hr" + sfx, {P, H}, ParamRole::kWHr, g});
      if (cfg.general && cfg.options[d].peephole) {
        specs.push_back({"weight_peephole" + sfx, {3, H}, ParamRole::kWPeephole, g});
      }
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
