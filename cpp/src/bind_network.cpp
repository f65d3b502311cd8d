// pybind11 bindings of the recurrent network (network.h): config, forward with fused loss,
// backward, and generation. Registered into rnnkit._core by bindings.cpp.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>
#include <variant>

#include "bind_common.h"
#include "rnnkit/network.h"

namespace rnnkit {
namespace {

using namespace bind;

HeadKind parse_head(const std::string& head) {
  if (head == "sequence") return HeadKind::kSequence;
  if (head == "last") return HeadKind::kLast;
  throw_expected("head", "'sequence' or 'last'", concat("'", head, "'"));
}

LossKind parse_loss(const std::string& loss) {
  if (loss == "cross_entropy") return LossKind::kCrossEntropy;
  if (loss == "mse") return LossKind::kMSE;
  if (loss == "none") return LossKind::kNone;
  throw_expected("loss", "'cross_entropy', 'mse' or 'none'", concat("'", loss, "'"));
}

struct NetCache {
  std::variant<NetworkCache<float>, NetworkCache<double>> data;
  std::size_t nbytes() const {
    return std::visit([](const auto& c) {
      using S = std::remove_pointer_t<decltype(c.features)>;
      return static_cast<std::size_t>(c.block.size() + c.stack.block.size()) * sizeof(S) +
             c.tokens.size() * sizeof(std::int64_t);
    }, data);
  }
};

// The list of parameter (or gradient) arrays, checked, as NetworkWeights / NetworkGrads.
template <typename S, typename Net, typename Layer>
Net network_views(const NetworkConfig& cfg, const py::list& arrays, const char* what, bool writable) {
  const std::vector<ParamSpec> specs = network_param_specs(cfg);
  check_list_length(arrays, specs.size(), what);
  Net net;
  net.stack = group_views<S, Layer>(cfg.stack, specs, arrays, what, writable);
  std::size_t i = 0;
  if (cfg.vocab_size > 0) net.embedding = list_item<S>(arrays, i++, specs[0], what, writable);
  const std::size_t out = specs.size() - 2;
  net.out_w = list_item<S>(arrays, out, specs[out], what, writable);
  net.out_b = list_item<S>(arrays, out + 1, specs[out + 1], what, writable);
  return net;
}

py::dtype params_dtype(const py::list& params) {
  if (py::len(params) == 0 || !py::isinstance<py::array>(params[py::len(params) - 1])) {
    throw py::type_error("params: expected a list of numpy arrays");
  }
  return params[py::len(params) - 1].cast<py::array>().dtype();
}

// Checks tokens [T,N] int64 in [0, vocab).
const std::int64_t* check_tokens(const py::array& tokens, index_t vocab) {
  if (tokens.ndim() != 2) throw_expected("tokens", "a 2-D array [T, N]", concat(tokens.ndim(), "-D"));
  check_array<std::int64_t>(tokens, "tokens", {tokens.shape(0), tokens.shape(1)}, false);
  const auto* t = static_cast<const std::int64_t*>(tokens.data());
  for (index_t i = 0; i < tokens.shape(0) * tokens.shape(1); ++i) {
    if (t[i] < 0 || t[i] >= vocab) {
      throw_expected(concat("tokens[", i / tokens.shape(1), ", ", i % tokens.shape(1), "]"),
                     concat("a token id in [0, ", vocab, ")"), t[i]);
    }
  }
  return t;
}

const index_t* check_lengths(const std::optional<py::array>& lengths, index_t T, index_t N) {
  if (!lengths) return nullptr;
  check_array<index_t>(*lengths, "lengths", {N}, false);
  const auto* lp = static_cast<const index_t*>(lengths->data());
  for (index_t n = 0; n < N; ++n) {
    if (lp[n] < 1 || lp[n] > T) throw_expected(concat("lengths[", n, "]"), concat("a length in [1, ", T, "]"), lp[n]);
  }
  return lp;
}

template <typename S>
py::tuple forward_impl(const NetworkConfig& cfg, const py::list& params, const py::array& inputs,
                       const std::optional<py::array>& h0, const std::optional<py::array>& c0,
                       const std::optional<py::array>& lengths, const std::optional<py::array>& targets,
                       bool training, std::uint64_t dropout_seed, bool want_outputs, bool softmax_outputs) {
  const NetworkWeights<S> w = network_views<S, NetworkWeights<S>, LayerWeights<S>>(cfg, params, "params", false);
  NetworkInputs in;
  if (cfg.vocab_size > 0) {
    in.tokens = check_tokens(inputs, cfg.vocab_size);
  } else {
    if (inputs.ndim() != 3) throw_expected("inputs", "a 3-D array [T, N, C]", concat(inputs.ndim(), "-D"));
    check_array<S>(inputs, "inputs", {inputs.shape(0), inputs.shape(1), cfg.stack.input_size}, false);
    in.x = inputs.data();
  }
  in.T = inputs.shape(0);
  in.N = inputs.shape(1);
  const index_t T = in.T, N = in.N, K = cfg.output_size;
  if (T < 1) throw_expected("sequence length T", "T >= 1", T);
  if (N < 1) throw_expected("batch size N", "N >= 1", N);
  const CellInfo ci = cell_info(cfg.stack.cell);
  for (index_t l = 0; l < cfg.stack.num_layers; ++l) {
    check_layer_dims(LayerDims{T, N, cfg.stack.layer_input_size(l), cfg.stack.hidden_size, cfg.stack.state_size()}, ci.gates);
  }
  in.lengths = check_lengths(lengths, T, N);
  const index_t G = cfg.stack.groups(), P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  const S* h0p = in_ptr<S>(h0, "h0", {G, N, P});
  if (c0 && !ci.has_cell_state) throw_expected("c0", "None (this cell has no cell state)", "an array");
  const S* c0p = in_ptr<S>(c0, "c0", {G, N, H});
  const bool sequence = cfg.head == HeadKind::kSequence;
  const std::vector<index_t> out_shape = sequence ? std::vector<index_t>{T, N, K} : std::vector<index_t>{N, K};
  const void* tp = nullptr;
  if (targets) {
    if (cfg.loss == LossKind::kNone) throw_expected("targets", "None (the network has no loss)", "an array");
    if (cfg.loss == LossKind::kCrossEntropy) {
      std::vector<index_t> shape(out_shape.begin(), out_shape.end() - 1);
      check_array<std::int64_t>(*targets, "targets", shape, false);
      const auto* t = static_cast<const std::int64_t*>(targets->data());
      const index_t R = sequence ? T * N : N;
      for (index_t r = 0; r < R; ++r) {
        const bool padding = sequence && in.lengths && r / N >= in.lengths[r % N];
        if (!padding && t[r] != cfg.ignore_index && (t[r] < 0 || t[r] >= K)) {
          throw_expected(sequence ? concat("targets[", r / N, ", ", r % N, "]") : concat("targets[", r, "]"),
                         concat("a class id in [0, ", K, ") or ignore_index ", cfg.ignore_index), t[r]);
        }
      }
      tp = t;
    } else {
      tp = in_ptr<S>(*targets, "targets", out_shape);
    }
  }
  const StackFootprint foot = stack_footprint(cfg.stack, T, N, training, sizeof(S));
  const index_t rows = sequence ? T * N : N;
  index_t total = checked_add(foot.cache, foot.forward_scratch, "forward");
  total = checked_add(total, checked_mul(checked_mul(T, N, "T*N"), cfg.stack.input_size + cfg.feature_size(), "activations"), "forward");
  total = checked_add(total, checked_mul(rows, 2 * K + cfg.feature_size(), "outputs"), "forward");
  check_fits_in_memory(checked_mul(total, sizeof(S), "forward bytes"), "a network forward call");

  py::object outputs_obj = py::none();
  S* outputs = nullptr;
  if (want_outputs) {
    auto arr = new_array<S>(out_shape);
    outputs = arr.mutable_data();
    outputs_obj = arr;
  }
  auto h_n = new_array<S>({G, N, P});
  py::object c_n_obj = py::none();
  S* c_n = nullptr;
  if (ci.has_cell_state) {
    auto arr = new_array<S>({G, N, H});
    c_n = arr.mutable_data();
    c_n_obj = arr;
  }
  std::optional<NetCache> cache;
  if (training) cache.emplace(NetCache{NetworkCache<S>{}});
  NetworkCache<S>* cp = training ? &std::get<NetworkCache<S>>(cache->data) : nullptr;
  double loss = 0.0;
  S* hnp = h_n.mutable_data();
  {
    py::gil_scoped_release release;
    network_forward<S>(cfg, w, in, h0p, c0p, tp, training, dropout_seed, softmax_outputs, outputs,
                       hnp, c_n, &loss, cp);
  }
  py::object loss_obj = targets ? py::object(py::float_(loss)) : py::object(py::none());
  py::object cache_obj = cache ? py::cast(std::move(*cache)) : py::object(py::none());
  return py::make_tuple(outputs_obj, h_n, c_n_obj, loss_obj, cache_obj);
}

template <typename S>
py::tuple backward_impl(const NetCache& cache_obj, const py::list& grads,
                        const std::optional<py::array>& d_outputs) {
  const NetworkCache<S>& cache = std::get<NetworkCache<S>>(cache_obj.data);
  const NetworkConfig& cfg = cache.cfg;
  const NetworkGrads<S> g = network_views<S, NetworkGrads<S>, LayerGrads<S>>(cfg, grads, "grads", true);
  const bool sequence = cfg.head == HeadKind::kSequence;
  const std::vector<index_t> out_shape = sequence ? std::vector<index_t>{cache.T, cache.N, cfg.output_size}
                                                  : std::vector<index_t>{cache.N, cfg.output_size};
  const S* dop = in_ptr<S>(d_outputs, "d_outputs", out_shape);
  if (dop == nullptr && !cache.has_loss_grad) {
    throw_expected("d_outputs", "an array (the forward was given no targets, so there is no loss to differentiate)", "None");
  }
  const index_t G = cfg.stack.groups(), N = cache.N;
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  auto dh0 = new_array<S>({G, N, cfg.stack.state_size()});
  py::object dc0_obj = py::none();
  S* dc0 = nullptr;
  if (has_c) {
    auto arr = new_array<S>({G, N, cfg.stack.hidden_size});
    dc0 = arr.mutable_data();
    dc0_obj = arr;
  }
  S* dh0p = dh0.mutable_data();
  {
    py::gil_scoped_release release;
    network_backward<S>(cache, dop, g, dh0p, dc0);
  }
  return py::make_tuple(dh0, dc0_obj);
}

template <typename S>
py::tuple generate_impl(const NetworkConfig& cfg, const py::list& params, const py::array& prefix,
                        index_t count, double temperature, index_t top_k, std::uint64_t seed,
                        const std::optional<py::array>& h0, const std::optional<py::array>& c0) {
  if (cfg.vocab_size == 0 || cfg.loss != LossKind::kCrossEntropy || cfg.output_size != cfg.vocab_size) {
    throw_expected("network", "a token network with a cross-entropy output over its vocabulary", "another kind");
  }
  if (count < 0) throw_expected("count", "an integer >= 0", count);
  if (!(temperature >= 0.0)) throw_expected("temperature", "a number >= 0", temperature);
  if (prefix.ndim() != 1 || prefix.shape(0) < 1) {
    throw_expected("prefix", "a 1-D array of at least one token id", shape_string(prefix));
  }
  const NetworkWeights<S> w = network_views<S, NetworkWeights<S>, LayerWeights<S>>(cfg, params, "params", false);
  check_array<std::int64_t>(prefix, "prefix", {prefix.shape(0)}, false);
  const auto* pp = static_cast<const std::int64_t*>(prefix.data());
  for (index_t i = 0; i < prefix.shape(0); ++i) {
    if (pp[i] < 0 || pp[i] >= cfg.vocab_size) {
      throw_expected(concat("prefix[", i, "]"), concat("a token id in [0, ", cfg.vocab_size, ")"), pp[i]);
    }
  }
  const index_t G = cfg.stack.groups(), P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  auto h = new_array<S>({G, 1, P});
  S* hp = h.mutable_data();
  if (h0) std::memcpy(hp, in_ptr<S>(h0, "h0", {G, 1, P}), sizeof(S) * G * P); else std::memset(hp, 0, sizeof(S) * G * P);
  py::object c_obj = py::none();
  S* cp = nullptr;
  if (has_c) {
    auto arr = new_array<S>({G, 1, H});
    cp = arr.mutable_data();
    if (c0) std::memcpy(cp, in_ptr<S>(c0, "c0", {G, 1, H}), sizeof(S) * G * H); else std::memset(cp, 0, sizeof(S) * G * H);
    c_obj = arr;
  }
  auto tokens = new_array<std::int64_t>({count});
  std::int64_t* tp = tokens.mutable_data();
  {
    py::gil_scoped_release release;
    network_generate<S>(cfg, w, pp, prefix.shape(0), count, temperature, top_k, seed, hp, cp, tp);
  }
  return py::make_tuple(tokens, h, c_obj);
}

template <typename Fn>
decltype(auto) by_dtype(const py::dtype& dt, Fn&& fn) {
  if (dt.is(py::dtype::of<float>())) return fn(float{});
  if (dt.is(py::dtype::of<double>())) return fn(double{});
  throw py::type_error(concat("params: expected float32 or float64 arrays, got dtype ", dtype_name(dt)));
}

}  // namespace

void register_network(py::module_& m) {
  py::class_<NetworkConfig>(m, "NetworkConfig", "Configuration of a recurrent network (see network.h).")
      .def(py::init([](const StackConfig& stack, index_t vocab_size, index_t output_size,
                       const std::string& head, const std::string& loss, index_t ignore_index) {
             NetworkConfig c;
             c.stack = stack;
             c.vocab_size = vocab_size;
             c.output_size = output_size;
             c.head = parse_head(head);
             c.loss = parse_loss(loss);
             c.ignore_index = ignore_index;
             check_network_config(c);
             return c;
           }),
           py::arg("stack"), py::arg("vocab_size"), py::arg("output_size"), py::arg("head") = "sequence",
           py::arg("loss") = "cross_entropy", py::arg("ignore_index") = -100)
      .def_readonly("stack", &NetworkConfig::stack)
      .def_readonly("vocab_size", &NetworkConfig::vocab_size)
      .def_readonly("output_size", &NetworkConfig::output_size)
      .def_readonly("ignore_index", &NetworkConfig::ignore_index)
      .def_property_readonly("feature_size", &NetworkConfig::feature_size)
      .def("param_specs", [](const NetworkConfig& c) {
        py::list out;
        for (const ParamSpec& s : network_param_specs(c)) {
          py::tuple shape(s.shape.size());
          for (std::size_t i = 0; i < s.shape.size(); ++i) shape[i] = s.shape[i];
          out.append(py::make_tuple(s.name, shape));
        }
        return out;
      });

  py::class_<NetCache>(m, "NetworkCache", "What a training forward of a network keeps (opaque).")
      .def_property_readonly("nbytes", &NetCache::nbytes)
      .def_property_readonly("has_loss_grad", [](const NetCache& c) {
        return std::visit([](const auto& d) { return d.has_loss_grad; }, c.data);
      })
      .def_property_readonly("shape", [](const NetCache& c) {
        return std::visit([](const auto& d) { return py::make_tuple(d.T, d.N); }, c.data);
      });

  m.def("network_forward",
        [](const NetworkConfig& cfg, const py::list& params, const py::array& inputs,
           const std::optional<py::array>& h0, const std::optional<py::array>& c0,
           const std::optional<py::array>& lengths, const std::optional<py::array>& targets,
           bool training, std::uint64_t dropout_seed, bool want_outputs, bool softmax_outputs) {
          return by_dtype(params_dtype(params), [&](auto s) {
            return forward_impl<decltype(s)>(cfg, params, inputs, h0, c0, lengths, targets, training,
                                             dropout_seed, want_outputs, softmax_outputs);
          });
        },
        py::arg("config"), py::arg("params"), py::arg("inputs"), py::arg("h0"), py::arg("c0"),
        py::arg("lengths"), py::arg("targets"), py::arg("training"), py::arg("dropout_seed"),
        py::arg("want_outputs"), py::arg("softmax_outputs"),
        "Network forward (and loss with targets): (outputs|None, h_n, c_n|None, loss|None, cache|None).");

  m.def("network_backward",
        [](const NetCache& cache, const py::list& grads, const std::optional<py::array>& d_outputs) {
          if (cache.data.index() == 0) return backward_impl<float>(cache, grads, d_outputs);
          return backward_impl<double>(cache, grads, d_outputs);
        },
        py::arg("cache"), py::arg("grads"), py::arg("d_outputs"),
        "Network backward; gradients ACCUMULATED into grads. Returns (dh0, dc0|None).");

  m.def("network_generate",
        [](const NetworkConfig& cfg, const py::list& params, const py::array& prefix, index_t count,
           double temperature, index_t top_k, std::uint64_t seed, const std::optional<py::array>& h0,
           const std::optional<py::array>& c0) {
          return by_dtype(params_dtype(params), [&](auto s) {
            return generate_impl<decltype(s)>(cfg, params, prefix, count, temperature, top_k, seed, h0, c0);
          });
        },
        py::arg("config"), py::arg("params"), py::arg("prefix"), py::arg("count"),
        py::arg("temperature"), py::arg("top_k"), py::arg("seed"), py::arg("h0"), py::arg("c0"),
        "Feeds prefix then samples count tokens: (tokens, h_n, c_n|None).");
}

}  // namespace rnnkit
