// Bindings of the recurrent network (network.h): config, forward with fused loss, backward, and
// generation, each run by the backend that owns the data (as the stack's, bind/stack.cpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <optional>

#include "bind/common.h"
#include "bind/module.h"
#include "cpu/network.h"

namespace rnnkit {
namespace bind {
namespace {

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

const char* head_name(HeadKind head) { return head == HeadKind::kSequence ? "sequence" : "last"; }

const char* loss_name(LossKind loss) {
  switch (loss) {
    case LossKind::kCrossEntropy: return "cross_entropy";
    case LossKind::kMSE: return "mse";
    case LossKind::kNone: return "none";
  }
  return "none";
}

NetworkConfig make_network_config(const StackConfig& stack, index_t vocab_size, index_t output_size,
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
}


// A network call's inputs, checked: token ids [T, N] (token networks) or features [T, N, C] of S.
template <typename S>
NetworkInputs network_inputs(const NetworkConfig& cfg, const py::array& inputs) {
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
  return in;
}

template <typename S>
py::tuple forward_impl(const NetworkConfig& cfg, const py::list& params, const py::array& inputs,
                       const std::optional<py::array>& h0, const std::optional<py::array>& c0,
                       const std::optional<py::array>& lengths, const std::optional<py::array>& targets,
                       bool training, std::uint64_t dropout_seed, bool want_outputs, bool softmax_outputs) {
  NetworkForwardArgs<S> args;
  NetworkInputs& in = args.in;
  in = network_inputs<S>(cfg, inputs);
  const index_t T = in.T, N = in.N;
  check_stack_dims(cfg.stack, T, N);  // T, N >= 1 and every GEMM size in range
  const Backend& backend = backend_for(device_of(inputs));
  const BackendOps<S>& ops = backend.ops<S>();
  const std::unique_ptr<NetworkPlan> plan = ops.plan_network(cfg, T, N, training);
  const NetworkWeights<S> w = network_views<S, const S*>(cfg, plan->specs, params, "params", false);
  in.lengths = check_lengths(lengths, T, N, 1);
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  const index_t G = cfg.stack.groups(), P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  args.state0.h = in_ptr<S>(h0, "h0", {G, N, P});
  if (c0 && !has_c) throw_expected("c0", "None (this cell has no cell state)", "an array");
  args.state0.c = in_ptr<S>(c0, "c0", {G, N, H});
  const std::vector<index_t> out_shape = network_out_shape(cfg, T, N);
  if (targets) {
    if (cfg.loss == LossKind::kNone) throw_expected("targets", "None (the network has no loss)", "an array");
    if (cfg.loss == LossKind::kCrossEntropy) {
      args.targets = check_class_targets(cfg, *targets, out_shape, T, N, in.lengths);
    } else {
      args.targets = in_ptr<S>(*targets, "targets", out_shape);
    }
  }
  const index_t outputs = network_output_elems(cfg, T, N, want_outputs);
  backend.check_fits(checked_mul(checked_add(plan->elems, outputs, "forward"), sizeof(S), "forward bytes"),
                     "a network forward call");

  py::object outputs_obj = new_array_if<S>(want_outputs, out_shape, &args.outputs);
  auto h_n = new_array<S>({G, N, P});
  py::object c_n_obj = new_array_if<S>(has_c, {G, N, H}, &args.state_n.c);
  double loss = 0.0;
  args.weights = &w;
  args.dropout_seed = dropout_seed;
  args.softmax_outputs = softmax_outputs;
  args.state_n.h = h_n.mutable_data();
  args.loss = &loss;
  std::unique_ptr<NetworkCache> cache;
  {
    py::gil_scoped_release release;
    cache = ops.network_forward(*plan, args);
  }
  py::object loss_obj = targets ? py::object(py::float_(loss)) : py::object(py::none());
  py::object cache_obj = cache ? py::cast(NetCache{std::move(cache)}) : py::object(py::none());
  return py::make_tuple(outputs_obj, h_n, c_n_obj, loss_obj, cache_obj);
}

template <typename S>
py::tuple backward_impl(NetCache& cache_obj, const py::list& grads, const std::optional<py::array>& d_outputs,
                        bool need_dx) {
  NetworkCache& cache = *cache_obj.data;
  if (cache.device() != Device::kCpu) {
    throw_expected("cache", "a cache of a forward on host arrays (this one's forward ran on CUDA arrays: pass CUDA "
                   "arrays to backward too)", "a CUDA backend's cache");
  }
  const NetworkPlan& plan = cache.plan();
  const NetworkConfig& cfg = plan.cfg;
  const NetworkGrads<S> g = network_views<S, S*>(cfg, plan.specs, grads, "grads", true);
  const index_t T = plan.T, N = plan.N;
  const std::vector<index_t> out_shape = network_out_shape(cfg, T, N);
  NetworkBackwardArgs<S> args;
  args.grads = &g;
  args.d_outputs = in_ptr<S>(d_outputs, "d_outputs", out_shape);
  check_network_backward(cfg, args.d_outputs != nullptr, cache.has_loss_grad(), need_dx);
  const index_t G = cfg.stack.groups();
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  py::object dx_obj = new_array_if<S>(need_dx, {T, N, cfg.stack.input_size}, &args.dx);
  auto dh0 = new_array<S>({G, N, cfg.stack.state_size()});
  py::object dc0_obj = new_array_if<S>(has_c, {G, N, cfg.stack.hidden_size}, &args.d_state0.c);
  args.d_state0.h = dh0.mutable_data();
  const BackendOps<S>& ops = backend_for(cache.device()).ops<S>();
  {
    py::gil_scoped_release release;
    ops.network_backward(cache, args);
  }
  return py::make_tuple(dx_obj, dh0, dc0_obj);
}

template <typename S>
py::tuple generate_impl(const NetworkConfig& cfg, const py::list& params, const py::array& prefix,
                        index_t count, double temperature, index_t top_k, std::uint64_t seed,
                        const std::optional<py::array>& h0, const std::optional<py::array>& c0) {
  const std::int64_t* pp = check_generate_args(cfg, prefix, count, temperature);
  const NetworkWeights<S> w = network_views<S, const S*>(cfg, network_param_specs(cfg), params, "params", false);
  const index_t G = cfg.stack.groups(), P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  // The state, in and out: a copy of h0/c0, or zeros.
  NetworkGenerateArgs<S> args;
  auto h = new_array<S>({G, 1, P});
  args.state.h = h.mutable_data();
  py::object c_obj = new_array_if<S>(has_c, {G, 1, H}, &args.state.c);
  auto load = [&](const std::optional<py::array>& from, const char* name, index_t width, S* to) {
    if (from) std::memcpy(to, in_ptr<S>(from, name, {G, 1, width}), sizeof(S) * G * width);
    else std::memset(to, 0, sizeof(S) * G * width);
  };
  load(h0, "h0", P, args.state.h);
  if (has_c) load(c0, "c0", H, args.state.c);
  auto tokens = new_array<std::int64_t>({count});
  args.weights = &w;
  args.prefix = pp;
  args.prefix_len = prefix.shape(0);
  args.count = count;
  args.temperature = temperature;
  args.top_k = top_k;
  args.seed = seed;
  args.out_tokens = tokens.mutable_data();
  const BackendOps<S>& ops = backend_for(device_of(prefix)).ops<S>();
  {
    py::gil_scoped_release release;
    ops.network_generate(cfg, args);
  }
  return py::make_tuple(tokens, h, c_obj);
}

// A network's weights packed once in bfloat16 for streaming steps (cpu::NetworkStepWeights), with
// the copies of the parameters it was packed from (a snapshot, as bind/stack.cpp's StepSnapshot).
struct NetworkStepSnapshot {
  NetworkConfig cfg;
  py::tuple params;  // the copies (frozen_copies)
  NetworkWeights<float> views;
  std::unique_ptr<cpu::NetworkStepWeights> packed;
};

NetworkStepSnapshot pack_network_step(const NetworkConfig& cfg, const py::list& params) {
  check_steppable(cfg.stack, "network");
  const std::vector<ParamSpec> specs = network_param_specs(cfg);
  return make_step_snapshot<NetworkStepSnapshot>(
      cfg, specs, params,
      [&](const py::list& copies) { return network_views<float, const float*>(cfg, specs, copies, "params", false); },
      [&](const NetworkWeights<float>& views) { return cpu::pack_network_step(cfg, views); });
}

// One step (cpu::network_step): inputs [1, N] token ids or [1, N, C] of S, as network_forward's
// at T = 1; from the parameters' views w, or from a snapshot `packed` (float32).
template <typename S>
py::tuple network_step_impl(const NetworkConfig& cfg, const NetworkWeights<S>& w, const py::array& inputs,
                            const std::optional<py::array>& h0, const std::optional<py::array>& c0,
                            bool softmax_outputs, const cpu::NetworkStepWeights* packed) {
  check_steppable(cfg.stack, "network");
  if (cfg.head != HeadKind::kSequence) throw_expected("network", "head='sequence' (a step's outputs)", "head='last'");
  const NetworkInputs in = network_inputs<S>(cfg, inputs);
  if (in.T != 1) throw_expected("inputs", "one step (T = 1)", concat("T = ", in.T));
  const index_t N = in.N;
  check_stack_dims(cfg.stack, 1, N);
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  const index_t G = cfg.stack.groups(), P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  StatePair<const S*> state0{in_ptr<S>(h0, "h0", {G, N, P}), nullptr};
  if (c0 && !has_c) throw_expected("c0", "None (this cell has no cell state)", "an array");
  state0.c = in_ptr<S>(c0, "c0", {G, N, H});
  // Absent states are zeros, made here (the step itself requires them).
  py::array_t<S> h_zero, c_zero;
  if (state0.h == nullptr) {
    h_zero = new_array<S>({G, N, P});
    std::memset(h_zero.mutable_data(), 0, static_cast<std::size_t>(G * N * P) * sizeof(S));
    state0.h = h_zero.data();
  }
  if (has_c && state0.c == nullptr) {
    c_zero = new_array<S>({G, N, H});
    std::memset(c_zero.mutable_data(), 0, static_cast<std::size_t>(G * N * H) * sizeof(S));
    state0.c = c_zero.data();
  }
  auto out = new_array<S>({N, cfg.output_size});
  auto h_n = new_array<S>({G, N, P});
  StatePair<S*> state_n{h_n.mutable_data(), nullptr};
  py::object c_n = new_array_if<S>(has_c, {G, N, H}, &state_n.c);
  {
    py::gil_scoped_release release;
    cpu::network_step<S>(cfg, w, in, state0, out.mutable_data(), state_n, softmax_outputs, packed);
  }
  return py::make_tuple(out, h_n, c_n);
}

py::tuple network_step_packed(const NetworkStepSnapshot& snap, const py::array& inputs,
                              const std::optional<py::array>& h0, const std::optional<py::array>& c0,
                              bool softmax_outputs) {
  return network_step_impl<float>(snap.cfg, snap.views, inputs, h0, c0, softmax_outputs, snap.packed.get());
}

}  // namespace

void register_network(py::module_& m) {
  py::class_<NetworkConfig>(m, "NetworkConfig", py::module_local(), "Configuration of a recurrent network (see network.h).")
      .def(py::init(&make_network_config),
           py::arg("stack"), py::arg("vocab_size"), py::arg("output_size"), py::arg("head") = "sequence",
           py::arg("loss") = "cross_entropy", py::arg("ignore_index") = -100)
      // Pickled as its constructor's arguments (the stack pickles itself), like StackConfig.
      .def(py::pickle(
          [](const NetworkConfig& c) {
            return py::make_tuple(c.stack, c.vocab_size, c.output_size, head_name(c.head), loss_name(c.loss),
                                  c.ignore_index);
          },
          [](const py::tuple& t) {
            if (py::len(t) != 6) throw_expected("NetworkConfig state", "a tuple of 6", py::len(t));
            return make_network_config(t[0].cast<StackConfig>(), t[1].cast<index_t>(), t[2].cast<index_t>(),
                                       t[3].cast<std::string>(), t[4].cast<std::string>(), t[5].cast<index_t>());
          }))
      .def_readonly("stack", &NetworkConfig::stack)
      .def_readonly("vocab_size", &NetworkConfig::vocab_size)
      .def_readonly("output_size", &NetworkConfig::output_size)
      .def_readonly("ignore_index", &NetworkConfig::ignore_index)
      .def_property_readonly("feature_size", &NetworkConfig::feature_size)
      .def("param_specs", [](const NetworkConfig& c) { return specs_list(network_param_specs(c)); });

  py::class_<NetCache>(m, "NetworkCache", py::module_local(), "What a training forward of a network keeps (opaque).")
      .def_property_readonly("nbytes", [](const NetCache& c) { return c.data->nbytes(); })
      .def_property_readonly("has_loss_grad", [](const NetCache& c) { return c.data->has_loss_grad(); })
      .def_property_readonly("shape", [](const NetCache& c) { return py::make_tuple(c.data->plan().T, c.data->plan().N); });

  m.def("network_forward",
        [](const NetworkConfig& cfg, const py::list& params, const py::array& inputs,
           const std::optional<py::array>& h0, const std::optional<py::array>& c0,
           const std::optional<py::array>& lengths, const std::optional<py::array>& targets,
           bool training, std::uint64_t dropout_seed, bool want_outputs, bool softmax_outputs) {
          return by_dtype(list_dtype(params, "params"), "params", [&](auto s) {
            return forward_impl<decltype(s)>(cfg, params, inputs, h0, c0, lengths, targets, training,
                                             dropout_seed, want_outputs, softmax_outputs);
          });
        },
        py::arg("config"), py::arg("params"), py::arg("inputs"), py::arg("h0"), py::arg("c0"),
        py::arg("lengths"), py::arg("targets"), py::arg("training"), py::arg("dropout_seed"),
        py::arg("want_outputs"), py::arg("softmax_outputs"),
        "Network forward (and loss with targets): (outputs|None, h_n, c_n|None, loss|None, cache|None).");

  m.def("network_backward",
        [](NetCache& cache, const py::list& grads, const std::optional<py::array>& d_outputs, bool need_dx) {
          if (cache.data->elem_bytes() == 4) return backward_impl<float>(cache, grads, d_outputs, need_dx);
          return backward_impl<double>(cache, grads, d_outputs, need_dx);
        },
        py::arg("cache"), py::arg("grads"), py::arg("d_outputs"), py::arg("need_dx") = false,
        "Network backward; gradients ACCUMULATED into grads. Returns (dx|None, dh0, dc0|None); dx (the "
        "gradient of a dense input, need_dx=True) is [T,N,C].");

  py::class_<NetworkStepSnapshot>(m, "NetworkStepSnapshot", py::module_local(),
                                  "A network's weights packed once in bfloat16 for streaming steps (opaque).")
      .def_property_readonly("config", [](const NetworkStepSnapshot& s) { return s.cfg; })
      .def_property_readonly("params", [](const NetworkStepSnapshot& s) { return s.params; },
                             "The copies of the parameters it was packed from (read-only).");
  m.def("pack_network_step", &pack_network_step, py::arg("config"), py::arg("params"),
        "A snapshot of a sequence-head network over a unidirectional float32 stack at precision 'bfloat16' "
        "for network_step_packed: copies of params and every weight matrix packed once as bfloat16 pairs.");
  m.def("network_step_packed", &network_step_packed, py::arg("snapshot"), py::arg("inputs"), py::arg("h0"),
        py::arg("c0"), py::arg("softmax_outputs"),
        "One step from a snapshot: inputs [1,N] token ids or [1,N,C] float32 -> (outputs [N,K], h_n, c_n|None), "
        "computed as a forward at bfloat16 computes. The GIL is released while it runs.");

  m.def("network_step",
        [](const NetworkConfig& cfg, const py::list& params, const py::array& inputs,
           const std::optional<py::array>& h0, const std::optional<py::array>& c0, bool softmax_outputs) {
          return by_dtype(list_dtype(params, "params"), "params", [&](auto s) {
            using S = decltype(s);
            const NetworkWeights<S> w = network_views<S, const S*>(cfg, network_param_specs(cfg), params, "params",
                                                                 false);
            return network_step_impl<S>(cfg, w, inputs, h0, c0, softmax_outputs, nullptr);
          });
        },
        py::arg("config"), py::arg("params"), py::arg("inputs"), py::arg("h0"), py::arg("c0"),
        py::arg("softmax_outputs"),
        "One step of a sequence-head network over a unidirectional stack on the CPU (the stack in float32 "
        "whatever the precision): inputs [1,N] token ids or [1,N,C] -> (outputs [N,K], h_n, c_n|None). "
        "The GIL is released while it runs.");

  m.def("network_generate",
        [](const NetworkConfig& cfg, const py::list& params, const py::array& prefix, index_t count,
           double temperature, index_t top_k, std::uint64_t seed, const std::optional<py::array>& h0,
           const std::optional<py::array>& c0) {
          return by_dtype(list_dtype(params, "params"), "params", [&](auto s) {
            return generate_impl<decltype(s)>(cfg, params, prefix, count, temperature, top_k, seed, h0, c0);
          });
        },
        py::arg("config"), py::arg("params"), py::arg("prefix"), py::arg("count"),
        py::arg("temperature"), py::arg("top_k"), py::arg("seed"), py::arg("h0"), py::arg("c0"),
        "Feeds prefix then samples count tokens: (tokens, h_n, c_n|None).");
}

}  // namespace bind
}  // namespace rnnkit
