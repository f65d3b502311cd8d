// Bindings of the layer stack (stack.h): StackConfig, the training Cache, forward, backward and the
// streaming step. Each call checks its arrays at the boundary, asks the backend that owns the data
// for a plan, checks the whole call fits in memory, allocates the outputs and runs with the GIL
// released.
//
// The Python package (python/rnnkit) validates user input first and gives the friendlier messages;
// the checks here are the backstop for direct callers of _core: any array of the wrong dtype,
// layout or shape is refused with ValueError/TypeError, never read out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>

#include "bind/common.h"
#include "bind/module.h"
#include "cpu/stack.h"

namespace rnnkit {
namespace bind {
namespace {

// Refuses a state array for a cell that has none, naming the cell.
void refuse_cell_state(const std::optional<py::array>& a, const char* name, const StackConfig& cfg) {
  if (a && !cell_info(cfg.cell).has_cell_state) {
    throw_expected(name, concat("None (", mode_name(cfg.cell), " has no cell state)"), "an array");
  }
}

template <typename S>
py::tuple forward_impl(const StackConfig& cfg, const py::list& params, const py::array& x,
                       const std::optional<py::array>& h0, const std::optional<py::array>& c0,
                       const std::optional<py::array>& lengths, bool training, std::uint64_t dropout_seed,
                       bool zero_cache) {
  if (x.ndim() != 3) throw_expected("x", "a 3-D array [T, N, C]", concat(x.ndim(), "-D"));
  const index_t T = x.shape(0), N = x.shape(1);
  check_stack_dims(cfg, T, N);  // T, N >= 1 and every GEMM size in range
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  const index_t GD = cfg.groups(), H = cfg.hidden_size, P = cfg.state_size();
  const S* xp = in_ptr<S>(x, "x", {T, N, cfg.input_size});
  const S* h0p = in_ptr<S>(h0, "h0", {GD, N, P});
  refuse_cell_state(c0, "c0", cfg);
  const S* c0p = in_ptr<S>(c0, "c0", {GD, N, H});
  const index_t* lp = check_lengths(lengths, T, N, 0);

  const Backend& backend = backend_for(device_of(x));
  const BackendOps<S>& ops = backend.ops<S>();
  const std::unique_ptr<StackPlan> plan = ops.plan_stack(cfg, T, N, training);
  const std::vector<LayerWeights<S>> w = group_views<S, const S*>(cfg, plan->specs, params, "params", false);
  const index_t outputs = checked_add(checked_mul(checked_mul(T, N, "output"), cfg.num_directions * P, "output"),
                                      checked_mul(GD, checked_mul(N, P + (has_c ? H : 0), "states"), "states"),
                                      "outputs");
  const index_t total =
      checked_add(outputs, checked_add(plan->footprint.cache, plan->footprint.forward_scratch, "forward"), "forward");
  backend.check_fits(checked_mul(total, sizeof(S), "forward bytes"), "a forward call");

  StackForwardArgs<S> args;
  auto y = new_array<S>({T, N, cfg.num_directions * P});
  auto h_n = new_array<S>({GD, N, P});
  py::object c_n = new_array_if<S>(has_c, {GD, N, H}, &args.state_n.c);
  args.params = &w;
  args.x = xp;
  args.state0 = {h0p, c0p};
  args.lengths = lp;
  args.dropout_seed = dropout_seed;
  args.zero_cache = zero_cache;
  args.y = y.mutable_data();
  args.state_n.h = h_n.mutable_data();
  std::unique_ptr<StackCache> cache;
  {
    py::gil_scoped_release release;
    cache = ops.stack_forward(*plan, args);
  }
  py::object cache_obj = cache ? py::cast(Cache{std::move(cache)}) : py::object(py::none());
  return py::make_tuple(y, h_n, c_n, cache_obj);
}

template <typename S>
py::tuple backward_impl(Cache& cache_obj, const std::optional<py::array>& dy, const std::optional<py::array>& dh_n,
                        const std::optional<py::array>& dc_n, const py::list& grads, bool need_dx) {
  StackCache& cache = *cache_obj.data;
  const StackPlan& plan = cache.plan();
  const StackConfig& cfg = plan.cfg;
  const index_t T = plan.T, N = plan.N;
  const index_t GD = cfg.groups(), H = cfg.hidden_size, P = cfg.state_size();
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  const S* dyp = in_ptr<S>(dy, "dy", {T, N, cfg.num_directions * P});
  const S* dhnp = in_ptr<S>(dh_n, "dh_n", {GD, N, P});
  refuse_cell_state(dc_n, "dc_n", cfg);
  const S* dcnp = in_ptr<S>(dc_n, "dc_n", {GD, N, H});
  const std::vector<LayerGrads<S>> g = group_views<S, S*>(cfg, plan.specs, grads, "grads", true);

  const Backend& backend = backend_for(cache.device());
  const index_t outputs = checked_add(need_dx ? checked_mul(checked_mul(T, N, "dx"), cfg.input_size, "dx") : 0,
                                      checked_mul(GD, checked_mul(N, P + (has_c ? H : 0), "states"), "states"),
                                      "outputs");
  backend.check_fits(checked_mul(checked_add(outputs, plan.footprint.backward_scratch, "backward"), sizeof(S),
                                 "backward bytes"),
                     "a backward call");

  StackBackwardArgs<S> args;
  py::object dx = new_array_if<S>(need_dx, {T, N, cfg.input_size}, &args.dx);
  auto dh0 = new_array<S>({GD, N, P});
  py::object dc0 = new_array_if<S>(has_c, {GD, N, H}, &args.d_state0.c);
  args.grads = &g;
  args.dy = dyp;
  args.d_state_n = {dhnp, dcnp};
  args.d_state0.h = dh0.mutable_data();
  {
    py::gil_scoped_release release;
    backend.ops<S>().stack_backward(cache, args);
  }
  return py::make_tuple(dx, dh0, dc0);
}

// A layer's weights packed once for streaming steps at bfloat16 (cpu::StepWeights), with the
// copies of the parameters it was packed from: a snapshot, which later changes to the layer's
// own arrays do not reach.
struct StepSnapshot {
  StackConfig cfg;
  py::tuple params;                         // the copies (frozen_copies)
  std::vector<LayerWeights<float>> views;   // into them
  std::unique_ptr<cpu::StepWeights> packed;
};

StepSnapshot pack_step(const StackConfig& cfg, const py::list& params) {
  check_steppable(cfg);
  const std::vector<ParamSpec> specs = stack_param_specs(cfg);
  return make_step_snapshot<StepSnapshot>(
      cfg, specs, params,
      [&](const py::list& copies) { return group_views<float, const float*>(cfg, specs, copies, "params", false); },
      [&](const std::vector<LayerWeights<float>>& views) { return cpu::pack_step_weights(cfg, views); });
}

// One step: from the parameters (snap null), or from a snapshot (params unused).
template <typename S>
py::tuple step_impl(const StackConfig& cfg, const py::list& params, const py::array& x, const py::array& h,
                    const std::optional<py::array>& c, const StepSnapshot* snap = nullptr) {
  check_steppable(cfg);
  if (x.ndim() != 2) throw_expected("x", "a 2-D array [N, input_size]", concat(x.ndim(), "-D"));
  const index_t N = x.shape(0), L = cfg.num_layers, P = cfg.state_size(), H = cfg.hidden_size;
  if (N < 1) throw_expected("batch size N", "N >= 1", N);
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  StackForwardArgs<S> args;
  args.x = in_ptr<S>(x, "x", {N, cfg.input_size});
  args.state0.h = in_ptr<S>(h, "h", {L, N, P});
  if (has_c != c.has_value()) throw_expected("c", has_c ? "an array (LSTM cells)" : "None", c ? "an array" : "None");
  args.state0.c = in_ptr<S>(c, "c", {L, N, H});
  std::vector<LayerWeights<S>> w;
  if (snap == nullptr) w = group_views<S, const S*>(cfg, stack_param_specs(cfg), params, "params", false);
  args.params = &w;
  if constexpr (std::is_same_v<S, float>) {
    if (snap != nullptr) args.params = &snap->views;  // no per-step copy of the views
  }
  auto y = new_array<S>({N, P});
  auto h_new = new_array<S>({L, N, P});
  py::object c_new = new_array_if<S>(has_c, {L, N, H}, &args.state_n.c);
  args.y = y.mutable_data();
  args.state_n.h = h_new.mutable_data();
  if constexpr (std::is_same_v<S, float>) {
    if (snap != nullptr) {
      {
        py::gil_scoped_release release;
        cpu::stack_step_packed(*snap->packed, N, args);
      }
      return py::make_tuple(y, h_new, c_new);
    }
  }
  const BackendOps<S>& ops = backend_for(device_of(x)).ops<S>();
  {
    py::gil_scoped_release release;
    ops.stack_step(cfg, N, args);
  }
  return py::make_tuple(y, h_new, c_new);
}

StackConfig make_stack_config(const std::string& mode, index_t input_size, index_t hidden_size, index_t num_layers,
                              bool bidirectional, index_t proj_size, bool bias, double dropout,
                              const std::string& precision, bool reverse, const std::string& cell_options,
                              double weight_dropout, double zoneout, double zoneout_cell, double input_dropout,
                              double recurrent_dropout, bool zoneout_expected) {
  StackConfig c;
  c.cell = parse_mode(mode);
  c.input_size = input_size;
  c.hidden_size = hidden_size;
  c.num_layers = num_layers;
  c.num_directions = bidirectional ? 2 : 1;
  c.proj_size = proj_size;
  c.bias = bias;
  c.dropout = dropout;
  c.precision = parse_precision(precision);
  c.reverse = reverse;
  c.weight_dropout = weight_dropout;
  c.zoneout = zoneout;
  c.zoneout_cell = zoneout_cell;
  c.input_dropout = input_dropout;
  c.recurrent_dropout = recurrent_dropout;
  c.zoneout_expected = zoneout_expected;
  check_stack_config(c);
  set_cell_options(c, cell_options);
  return c;
}

// The cache's block as an array that keeps the cache alive (no copy).
template <typename S>
py::array reserve_view(const py::object& self) {
  const Cache& c = self.cast<const Cache&>();
  const S* block = backend_for(c.data->device()).ops<S>().stack_cache_block(*c.data);
  const auto& plan = c.data->plan();
  return py::array_t<S>({static_cast<py::ssize_t>(plan.footprint.cache)}, {static_cast<py::ssize_t>(sizeof(S))},
                        block, self);
}

// Backward from a reserve: a cache over the caller's block, which backward only reads (so a
// retained graph may backpropagate it again). `reserve` stays referenced by the caller for the call.
template <typename S>
py::tuple backward_reserve_impl(const StackConfig& cfg, const py::array& reserve, index_t T, index_t N,
                                const std::optional<py::array>& lengths, std::uint64_t dropout_seed,
                                const std::optional<py::array>& dy, const std::optional<py::array>& dh_n,
                                const std::optional<py::array>& dc_n, const py::list& grads, bool need_dx) {
  check_stack_dims(cfg, T, N);  // T, N >= 1 and every GEMM size in range
  const index_t* lp = check_lengths(lengths, T, N, 0);
  const Backend& backend = backend_for(device_of(reserve));
  const BackendOps<S>& ops = backend.ops<S>();
  const std::unique_ptr<StackPlan> plan = ops.plan_stack(cfg, T, N, true);
  const S* block = in_ptr<S>(reserve, "reserve", {plan->footprint.cache});
  Cache cache;
  cache.data = ops.stack_cache_from_block(*plan, block, lp, dropout_seed);
  return backward_impl<S>(cache, dy, dh_n, dc_n, grads, need_dx);
}

}  // namespace

void register_stack(py::module_& m) {
  // Module-local: two builds of rnnkit can be loaded side by side (bench/ab_core.py does).
  py::class_<StackConfig>(m, "StackConfig", py::module_local(), "Configuration of a layer stack (see stack.h).")
      .def(py::init(&make_stack_config), py::arg("mode"), py::arg("input_size"), py::arg("hidden_size"),
           py::arg("num_layers") = 1, py::arg("bidirectional") = false, py::arg("proj_size") = 0,
           py::arg("bias") = true, py::arg("dropout") = 0.0, py::arg("precision") = "float32",
           py::arg("reverse") = false, py::arg("cell_options") = "", py::arg("weight_dropout") = 0.0,
           py::arg("zoneout") = 0.0, py::arg("zoneout_cell") = 0.0, py::arg("input_dropout") = 0.0,
           py::arg("recurrent_dropout") = 0.0, py::arg("zoneout_expected") = false)
      // Pickled as its constructor's arguments, so whatever holds one (a layer, a torch module)
      // pickles and deep-copies.
      .def(py::pickle(
          [](const StackConfig& c) {
            return py::make_tuple(mode_name(c.cell), c.input_size, c.hidden_size, c.num_layers,
                                  c.num_directions == 2, c.proj_size, c.bias, c.dropout, precision_name(c.precision),
                                  c.reverse, cell_options_string(c), c.weight_dropout, c.zoneout, c.zoneout_cell,
                                  c.input_dropout, c.recurrent_dropout, c.zoneout_expected);
          },
          [](const py::tuple& t) {
            // Fewer fields: pickled before precision (float32), reverse (false), the cell
            // options (none), weight_dropout or the other regularisers (0) existed.
            const auto n = py::len(t);
            if (n < 8 || n > 17) throw_expected("StackConfig state", "a tuple of 8 to 17", n);
            const auto real = [&](std::size_t i) { return n > i ? t[i].cast<double>() : 0.0; };
            return make_stack_config(t[0].cast<std::string>(), t[1].cast<index_t>(), t[2].cast<index_t>(),
                                     t[3].cast<index_t>(), t[4].cast<bool>(), t[5].cast<index_t>(), t[6].cast<bool>(),
                                     t[7].cast<double>(), n >= 9 ? t[8].cast<std::string>() : "float32",
                                     n >= 10 && t[9].cast<bool>(), n >= 11 ? t[10].cast<std::string>() : "",
                                     real(11), real(12), real(13), real(14), real(15), n > 16 && t[16].cast<bool>());
          }))
      .def_property_readonly("mode", [](const StackConfig& c) { return mode_name(c.cell); })
      .def_readonly("input_size", &StackConfig::input_size)
      .def_readonly("hidden_size", &StackConfig::hidden_size)
      .def_readonly("num_layers", &StackConfig::num_layers)
      .def_readonly("num_directions", &StackConfig::num_directions)
      .def_readonly("proj_size", &StackConfig::proj_size)
      .def_readonly("bias", &StackConfig::bias)
      .def_readonly("dropout", &StackConfig::dropout)
      .def_property_readonly("precision", [](const StackConfig& c) { return precision_name(c.precision); })
      .def_readonly("reverse", &StackConfig::reverse)
      .def_property_readonly("cell_options", &cell_options_string,
                             "ONNX's options in their canonical string form ('' for the cell's defaults).")
      .def_readonly("general", &StackConfig::general)
      .def_readonly("weight_dropout", &StackConfig::weight_dropout)
      .def_readonly("zoneout", &StackConfig::zoneout)
      .def_readonly("zoneout_cell", &StackConfig::zoneout_cell)
      .def_readonly("input_dropout", &StackConfig::input_dropout)
      .def_readonly("recurrent_dropout", &StackConfig::recurrent_dropout)
      .def_readonly("zoneout_expected", &StackConfig::zoneout_expected)
      .def_property_readonly("has_cell_state", [](const StackConfig& c) { return cell_info(c.cell).has_cell_state; })
      .def_property_readonly("gates", [](const StackConfig& c) { return cell_info(c.cell).gates; })
      .def("param_specs", [](const StackConfig& c) { return specs_list(stack_param_specs(c)); },
           "[(name, shape)] of every parameter, in PyTorch's state_dict order.");

  py::class_<Cache>(m, "Cache", py::module_local(), "What a training forward keeps for backward (opaque).")
      .def_property_readonly("nbytes", [](const Cache& c) { return c.data->nbytes(); }, "Bytes held by this cache.")
      .def_property_readonly("dtype", [](const Cache& c) { return c.data->elem_bytes() == 4 ? "float32" : "float64"; })
      .def_property_readonly("shape", [](const Cache& c) { return py::make_tuple(c.data->plan().T, c.data->plan().N); },
                             "(T, N) of the forward that made it.")
      .def("reserve",
           [](const py::object& self) -> py::object {
#ifdef RNNKIT_WITH_CUDA
             if (self.cast<const Cache&>().data->device() != Device::kCpu) return device_reserve_view(self);
#endif
             return self.cast<const Cache&>().data->elem_bytes() == 4 ? reserve_view<float>(self)
                                                                      : reserve_view<double>(self);
           },
           "The cache as one flat array (reserve_size elements, no copy; keeps the cache alive), for "
           "backward_reserve. Zeroed padding only when the forward was asked for zero_cache.");

  m.def("activations", []() {
    py::list table;
    for (const ActivationName& a : kActivationNames) {
      table.append(py::make_tuple(a.name, a.params, a.default_alpha, a.default_beta));
    }
    return table;
  }, "ONNX's activation functions the general cells run: [(name, parameters taken (0, 1: alpha, 2: alpha and "
     "beta), default alpha, default beta)], the defaults ONNX Runtime applies.");

  m.def("reserve_size",
        [](const StackConfig& cfg, index_t T, index_t N, const py::dtype& dtype) {
          check_stack_dims(cfg, T, N);  // T, N >= 1 and every GEMM size in range
          return by_dtype(dtype, "dtype", [&](auto s) {
            return backend_for(Device::kCpu).ops<decltype(s)>().plan_stack(cfg, T, N, true)->footprint.cache;
          });
        },
        py::arg("config"), py::arg("T"), py::arg("N"), py::arg("dtype"),
        "Elements of a training forward's cache block (Cache.reserve()) for x [T,N,C] of this dtype.");

  m.def("backward_reserve",
        [](const StackConfig& cfg, const py::array& reserve, index_t T, index_t N,
           const std::optional<py::array>& lengths, std::uint64_t dropout_seed, const std::optional<py::array>& dy,
           const std::optional<py::array>& dh_n, const std::optional<py::array>& dc_n, const py::list& grads,
           bool need_dx) {
          return by_dtype(reserve.dtype(), "reserve", [&](auto s) {
            return backward_reserve_impl<decltype(s)>(cfg, reserve, T, N, lengths, dropout_seed, dy, dh_n, dc_n,
                                                      grads, need_dx);
          });
        },
        py::arg("config"), py::arg("reserve"), py::arg("T"), py::arg("N"), py::arg("lengths"),
        py::arg("dropout_seed"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("grads"),
        py::arg("need_dx"),
        R"doc(backward, from a reserve (Cache.reserve(), or a copy of it) instead of the Cache: the same call's
config, T, N, lengths and dropout_seed must be given. The reserve is read, not modified.)doc");

  m.def("forward",
        [](const StackConfig& cfg, const py::list& params, const py::array& x, const std::optional<py::array>& h0,
           const std::optional<py::array>& c0, const std::optional<py::array>& lengths, bool training,
           std::uint64_t dropout_seed, bool zero_cache) {
          return by_dtype(x.dtype(), "x", [&](auto s) {
            return forward_impl<decltype(s)>(cfg, params, x, h0, c0, lengths, training, dropout_seed, zero_cache);
          });
        },
        py::arg("config"), py::arg("params"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("lengths"),
        py::arg("training"), py::arg("dropout_seed"), py::arg("zero_cache") = false,
        R"doc(A stack of recurrent layers over a time-major sequence.

params: the arrays of config.param_specs(), in that order. x [T,N,C]; h0 [L*D,N,P] or None;
c0 [L*D,N,H] or None (LSTM cells); lengths int64 [N] or None. All C-contiguous, x's dtype
(float32 or float64). zero_cache: zero the cache first (for Cache.reserve()). Returns
(y [T,N,D*P], h_n, c_n or None, cache or None). The GIL is
released while it runs.)doc");

  m.def("step",
        [](const StackConfig& cfg, const py::list& params, const py::array& x, const py::array& h,
           const std::optional<py::array>& c) {
          return by_dtype(x.dtype(), "x", [&](auto s) { return step_impl<decltype(s)>(cfg, params, x, h, c); });
        },
        py::arg("config"), py::arg("params"), py::arg("x"), py::arg("h"), py::arg("c"),
        "One timestep of a unidirectional stack: x [N,C], h [L,N,P], c [L,N,H] or None -> (y [N,P], h, c|None).");

  py::class_<StepSnapshot>(m, "StepSnapshot", py::module_local(),
                           "A layer's weights packed once in bfloat16 for streaming steps (opaque; see pack_step).")
      .def_property_readonly("config", [](const StepSnapshot& s) { return s.cfg; })
      .def_property_readonly("params", [](const StepSnapshot& s) { return s.params; },
                             "The copies of the parameters it was packed from.")
      .def_property_readonly("nbytes", [](const StepSnapshot& s) {
        return static_cast<std::size_t>(s.packed->block.size()) * sizeof(float);
      }, "Bytes of the packed matrices (the copies not counted).");

  m.def("pack_step", &pack_step, py::arg("config"), py::arg("params"),
        R"doc(A snapshot of a unidirectional float32 layer stack at precision 'bfloat16' for step_packed:
copies of `params` (float32 arrays of config.param_specs(), copied here) and every weight matrix a
step multiplies by packed once as bfloat16 pairs. The GIL is released while it packs.)doc");
  m.def("step_packed",
        [](const StepSnapshot& snap, const py::array& x, const py::array& h, const std::optional<py::array>& c) {
          return step_impl<float>(snap.cfg, py::list(), x, h, c, &snap);
        },
        py::arg("snapshot"), py::arg("x"), py::arg("h"), py::arg("c"),
        "step() from a snapshot (pack_step): x [N,C], h [L,N,P], c [L,N,H] or None -> (y [N,P], h, c|None), "
        "computed as a forward at bfloat16 computes. The GIL is released while it runs.");

  m.def("backward",
        [](Cache& cache, const std::optional<py::array>& dy, const std::optional<py::array>& dh_n,
           const std::optional<py::array>& dc_n, const py::list& grads, bool need_dx) {
#ifdef RNNKIT_WITH_CUDA
          if (cache.data->device() != Device::kCpu) {
            auto obj = [](const std::optional<py::array>& a) { return a ? py::object(*a) : py::object(py::none()); };
            return device_backward(cache, obj(dy), obj(dh_n), obj(dc_n), grads, need_dx);
          }
#endif
          if (cache.data->elem_bytes() == 4) return backward_impl<float>(cache, dy, dh_n, dc_n, grads, need_dx);
          return backward_impl<double>(cache, dy, dh_n, dc_n, grads, need_dx);
        },
        py::arg("cache"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("grads"), py::arg("need_dx"),
        R"doc(BPTT through the forward that produced `cache`.

dy, dh_n, dc_n: gradients of the outputs or None. grads: arrays shaped like params, ACCUMULATED
into. Returns (dx or None, dh0, dc0 or None). The GIL is released while it runs.)doc");
}

}  // namespace bind
}  // namespace rnnkit
