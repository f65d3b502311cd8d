// Bindings of the CUDA backend's arrays and stack calls (built with RNNKIT_CUDA or
// RNNKIT_CUDA_EMULATE): _core.DeviceArray (device memory with a shape and dtype), to_device /
// DeviceArray.numpy() (copies), and overloads of forward, step and backward_reserve for calls whose
// arrays are DeviceArrays. A call's arrays must all live on one device; the checks name the argument
// and the device ("x: expected a CUDA array, got a numpy array"). `lengths` stays a host array (it is
// checked there, then copied). backward and Cache.reserve() reach here through bind/stack.cpp when
// the cache is the CUDA backend's.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>

#include "bind/common.h"
#include "bind/device_array.h"
#include "bind/module.h"
#include "rnnkit_cuda.h"

namespace rnnkit {
namespace bind {
namespace {

DeviceArray new_device_array(const std::vector<index_t>& shape, Kind kind) {
  DeviceArray a;
  a.shape = shape;
  a.kind = kind;
  const std::size_t bytes = std::max<std::size_t>(a.nbytes(), 1);
  a.data = cuda::device_alloc(bytes, "a device array");
  a.memory = std::shared_ptr<void>(a.data, [](void* p) { cuda::device_free(p); });
  return a;
}

DeviceArray to_device(const py::array& host) {
  Kind kind;
  if (is_dtype<float>(host.dtype())) {
    kind = Kind::kF32;
  } else if (is_dtype<double>(host.dtype())) {
    kind = Kind::kF64;
  } else if (is_dtype<index_t>(host.dtype())) {
    kind = Kind::kI64;
  } else {
    throw py::type_error(concat("array: expected dtype float32, float64 or int64, got ", dtype_name(host.dtype())));
  }
  const py::array c = py::array::ensure(host, py::array::c_style);
  std::vector<index_t> shape(c.shape(), c.shape() + c.ndim());
  DeviceArray a = new_device_array(shape, kind);
  {
    py::gil_scoped_release release;
    cuda::copy_to_device(a.data, c.data(), a.nbytes(), cuda::current_stream());
  }
  return a;
}

template <typename S>
py::array to_host_typed(const DeviceArray& a) {
  auto out = new_array<S>(a.shape);
  {
    py::gil_scoped_release release;
    cuda::copy_to_host(out.mutable_data(), a.data, a.nbytes(), cuda::current_stream());
  }
  return std::move(out);
}

py::array to_host(const DeviceArray& a) {
  switch (a.kind) {
    case Kind::kF32: return to_host_typed<float>(a);
    case Kind::kF64: return to_host_typed<double>(a);
    case Kind::kI64: return to_host_typed<index_t>(a);
  }
  throw std::logic_error("unknown kind");
}

std::string type_name(py::handle obj) {
  if (py::isinstance<py::array>(obj)) return "a numpy array (host memory)";
  return concat("an object of type ", py::str(py::type::of(obj)).cast<std::string>());
}

// The device pointer of `obj` (None: null when `optional`), checked: a DeviceArray of dtype S and
// `shape`. Everything else is refused naming the argument and where the array lives.
template <typename S>
S* device_ptr(py::handle obj, const std::string& name, const std::vector<index_t>& shape, bool optional = true) {
  if (obj.is_none()) {
    if (optional) return nullptr;
    throw_expected(name, "a CUDA array", "None");
  }
  if (!py::isinstance<DeviceArray>(obj)) {
    throw py::type_error(concat(name, ": expected a CUDA array (rnnkit DeviceArray: the call's other arrays are on "
                                      "the CUDA device), got ", type_name(obj)));
  }
  const DeviceArray& a = obj.cast<const DeviceArray&>();
  if (a.kind != kind_of<S>()) {
    throw py::type_error(concat(name, ": expected dtype ", kind_name(kind_of<S>()), ", got ", kind_name(a.kind)));
  }
  if (a.shape != shape) throw_expected(concat(name, " shape"), shape_string(shape), shape_string(a.shape));
  return static_cast<S*>(a.data);
}

template <typename S>
py::object new_output(const std::vector<index_t>& shape, S** data) {
  DeviceArray a = new_device_array(shape, kind_of<S>());
  *data = static_cast<S*>(a.data);
  return py::cast(std::move(a));
}

template <typename S, typename Ptr>
std::vector<LayerParams<Ptr>> device_group_views(const StackConfig& cfg, const std::vector<ParamSpec>& specs,
                                                 const py::list& arrays, const char* what) {
  check_list_length(arrays, specs.size(), what);
  std::vector<LayerParams<Ptr>> views(cfg.groups());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    param_field(views[specs[i].group], specs[i].role) =
        device_ptr<S>(arrays[i], concat(what, "[", i, "] (", specs[i].name, ")"), specs[i].shape, false);
  }
  return views;
}

// lengths stays on the host: checked there (check_lengths), copied by the backend.
const index_t* host_lengths(const py::object& lengths, index_t T, index_t N, index_t min_length,
                            std::optional<py::array>* keep) {
  if (lengths.is_none()) return nullptr;
  if (py::isinstance<DeviceArray>(lengths)) {
    throw py::type_error("lengths: expected a host array (numpy int64 [N]: lengths are checked on the host), "
                         "got a CUDA array");
  }
  *keep = lengths.cast<py::array>();
  return check_lengths(*keep, T, N, min_length);
}

void refuse_cell_state(const py::object& a, const char* name, const StackConfig& cfg) {
  if (!a.is_none() && !cell_info(cfg.cell).has_cell_state) {
    throw_expected(name, concat("None (", mode_name(cfg.cell), " has no cell state)"), "an array");
  }
}

Kind kind_of_obj(py::handle obj, const char* name) {
  if (!py::isinstance<DeviceArray>(obj)) {
    throw py::type_error(concat(name, ": expected a CUDA array (rnnkit DeviceArray), got ", type_name(obj)));
  }
  const Kind k = obj.cast<const DeviceArray&>().kind;
  if (k == Kind::kI64) throw py::type_error(concat(name, ": expected dtype float32 or float64, got int64"));
  return k;
}

template <typename Fn>
decltype(auto) by_kind(Kind k, Fn&& fn) {
  if (k == Kind::kF32) return fn(float{});
  return fn(double{});
}

template <typename S>
py::tuple forward_impl(const StackConfig& cfg, const py::list& params, const DeviceArray& x, const py::object& x_obj,
                       const py::object& h0, const py::object& c0, const py::object& lengths, bool training,
                       std::uint64_t dropout_seed, bool zero_cache) {
  if (x.shape.size() != 3) throw_expected("x", "a 3-D array [T, N, C]", concat(x.shape.size(), "-D"));
  const index_t T = x.shape[0], N = x.shape[1];
  check_stack_dims(cfg, T, N);
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  const index_t GD = cfg.groups(), H = cfg.hidden_size, P = cfg.state_size();
  const S* xp = device_ptr<S>(x_obj, "x", {T, N, cfg.input_size}, false);
  const S* h0p = device_ptr<S>(h0, "h0", {GD, N, P});
  refuse_cell_state(c0, "c0", cfg);
  const S* c0p = device_ptr<S>(c0, "c0", {GD, N, H});
  std::optional<py::array> lengths_keep;
  const index_t* lp = host_lengths(lengths, T, N, 0, &lengths_keep);

  const Backend& backend = backend_for(Device::kCuda);
  const BackendOps<S>& ops = backend.ops<S>();
  const std::unique_ptr<StackPlan> plan = ops.plan_stack(cfg, T, N, training);
  const std::vector<LayerWeights<S>> w = device_group_views<S, const S*>(cfg, plan->specs, params, "params");
  const index_t outputs = checked_add(checked_mul(checked_mul(T, N, "output"), cfg.num_directions * P, "output"),
                                      checked_mul(GD, checked_mul(N, P + (has_c ? H : 0), "states"), "states"),
                                      "outputs");
  const index_t total =
      checked_add(outputs, checked_add(plan->footprint.cache, plan->footprint.forward_scratch, "forward"), "forward");
  backend.check_fits(checked_mul(total, sizeof(S), "forward bytes"), "a forward call");

  StackForwardArgs<S> args;
  py::object y = new_output<S>({T, N, cfg.num_directions * P}, &args.y);
  py::object h_n = new_output<S>({GD, N, P}, &args.state_n.h);
  py::object c_n = has_c ? new_output<S>({GD, N, H}, &args.state_n.c) : py::object(py::none());
  args.params = &w;
  args.x = xp;
  args.state0 = {h0p, c0p};
  args.lengths = lp;
  args.dropout_seed = dropout_seed;
  args.zero_cache = zero_cache;
  std::unique_ptr<StackCache> cache;
  {
    py::gil_scoped_release release;
    cache = ops.stack_forward(*plan, args);
  }
  py::object cache_obj = cache ? py::cast(Cache{std::move(cache)}) : py::object(py::none());
  return py::make_tuple(y, h_n, c_n, cache_obj);
}

template <typename S>
py::tuple backward_impl(Cache& cache_obj, const py::object& dy, const py::object& dh_n, const py::object& dc_n,
                        const py::list& grads, bool need_dx) {
  StackCache& cache = *cache_obj.data;
  const StackPlan& plan = cache.plan();
  const StackConfig& cfg = plan.cfg;
  const index_t T = plan.T, N = plan.N;
  const index_t GD = cfg.groups(), H = cfg.hidden_size, P = cfg.state_size();
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  const S* dyp = device_ptr<S>(dy, "dy", {T, N, cfg.num_directions * P});
  const S* dhnp = device_ptr<S>(dh_n, "dh_n", {GD, N, P});
  refuse_cell_state(dc_n, "dc_n", cfg);
  const S* dcnp = device_ptr<S>(dc_n, "dc_n", {GD, N, H});
  const std::vector<LayerGrads<S>> g = device_group_views<S, S*>(cfg, plan.specs, grads, "grads");

  const Backend& backend = backend_for(Device::kCuda);
  const index_t outputs = checked_add(need_dx ? checked_mul(checked_mul(T, N, "dx"), cfg.input_size, "dx") : 0,
                                      checked_mul(GD, checked_mul(N, P + (has_c ? H : 0), "states"), "states"),
                                      "outputs");
  backend.check_fits(checked_mul(checked_add(outputs, plan.footprint.backward_scratch, "backward"), sizeof(S),
                                 "backward bytes"),
                     "a backward call");
  StackBackwardArgs<S> args;
  py::object dx = need_dx ? new_output<S>({T, N, cfg.input_size}, &args.dx) : py::object(py::none());
  py::object dh0 = new_output<S>({GD, N, P}, &args.d_state0.h);
  py::object dc0 = has_c ? new_output<S>({GD, N, H}, &args.d_state0.c) : py::object(py::none());
  args.grads = &g;
  args.dy = dyp;
  args.d_state_n = {dhnp, dcnp};
  {
    py::gil_scoped_release release;
    backend.ops<S>().stack_backward(cache, args);
  }
  return py::make_tuple(dx, dh0, dc0);
}

template <typename S>
py::tuple step_impl(const StackConfig& cfg, const py::list& params, const DeviceArray& x, const py::object& x_obj,
                    const py::object& h, const py::object& c) {
  check_steppable(cfg);
  if (x.shape.size() != 2) throw_expected("x", "a 2-D array [N, input_size]", concat(x.shape.size(), "-D"));
  const index_t N = x.shape[0], L = cfg.num_layers, P = cfg.state_size(), H = cfg.hidden_size;
  check_stack_dims(cfg, 1, N);
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  StackForwardArgs<S> args;
  args.x = device_ptr<S>(x_obj, "x", {N, cfg.input_size}, false);
  args.state0.h = device_ptr<S>(h, "h", {L, N, P}, false);
  if (has_c == c.is_none()) throw_expected("c", has_c ? "an array (LSTM cells)" : "None", c.is_none() ? "None" : "an array");
  args.state0.c = device_ptr<S>(c, "c", {L, N, H});
  const std::vector<LayerWeights<S>> w = device_group_views<S, const S*>(cfg, stack_param_specs(cfg), params, "params");
  args.params = &w;
  py::object y = new_output<S>({N, P}, &args.y);
  py::object h_new = new_output<S>({L, N, P}, &args.state_n.h);
  py::object c_new = has_c ? new_output<S>({L, N, H}, &args.state_n.c) : py::object(py::none());
  const BackendOps<S>& ops = backend_for(Device::kCuda).ops<S>();
  {
    py::gil_scoped_release release;
    ops.stack_step(cfg, N, args);
  }
  return py::make_tuple(y, h_new, c_new);
}

template <typename S>
py::tuple backward_reserve_impl(const StackConfig& cfg, const py::object& reserve, index_t T, index_t N,
                                const py::object& lengths, std::uint64_t dropout_seed, const py::object& dy,
                                const py::object& dh_n, const py::object& dc_n, const py::list& grads, bool need_dx) {
  check_stack_dims(cfg, T, N);
  std::optional<py::array> lengths_keep;
  const index_t* lp = host_lengths(lengths, T, N, 0, &lengths_keep);
  const BackendOps<S>& ops = backend_for(Device::kCuda).ops<S>();
  const std::unique_ptr<StackPlan> plan = ops.plan_stack(cfg, T, N, true);
  const S* block = device_ptr<S>(reserve, "reserve", {plan->footprint.cache}, false);
  Cache cache;
  cache.data = ops.stack_cache_from_block(*plan, block, lp, dropout_seed);
  return backward_impl<S>(cache, dy, dh_n, dc_n, grads, need_dx);
}

}  // namespace

// ---- the network on CUDA arrays -----------------------------------------------------------------
// Parameters, dense inputs, states, MSE targets and d_outputs are DeviceArrays; token ids, class-id
// targets and lengths stay host arrays (checked there; the backend copies them).
template <typename S, typename Ptr>
NetworkParams<Ptr> device_network_views(const NetworkConfig& cfg, const std::vector<ParamSpec>& specs,
                                        const py::list& arrays, const char* what) {
  check_list_length(arrays, specs.size(), what);
  NetworkParams<Ptr> net;
  net.stack.resize(static_cast<std::size_t>(cfg.stack.groups()));
  for (std::size_t i = 0; i < specs.size(); ++i) {
    param_field(net, specs[i]) = device_ptr<S>(arrays[i], concat(what, "[", i, "] (", specs[i].name, ")"),
                                               specs[i].shape, false);
  }
  return net;
}

Kind kind_of_list(const py::list& arrays, const char* what) {
  if (py::len(arrays) == 0) throw_expected(what, "a non-empty list of CUDA arrays", "an empty list");
  return kind_of_obj(arrays[py::len(arrays) - 1], what);
}

py::array host_ids(const py::object& obj, const char* name, const char* shape) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(concat(name, ": expected a host int64 array ", shape, " (ids are checked on the host and "
                                "copied by the call), got ", py::isinstance<DeviceArray>(obj) ? "a CUDA array"
                                                                                              : type_name(obj)));
  }
  return obj.cast<py::array>();
}

template <typename S>
py::tuple network_forward_impl(const NetworkConfig& cfg, const py::list& params, const py::object& inputs,
                               const py::object& h0, const py::object& c0, const py::object& lengths,
                               const py::object& targets, bool training, std::uint64_t dropout_seed,
                               bool want_outputs, bool softmax_outputs) {
  NetworkForwardArgs<S> args;
  NetworkInputs& in = args.in;
  std::optional<py::array> tokens_keep, lengths_keep, targets_keep;
  if (cfg.vocab_size > 0) {
    tokens_keep = host_ids(inputs, "inputs", "[T, N] of token ids");
    in.tokens = check_tokens(*tokens_keep, cfg.vocab_size);
    in.T = tokens_keep->shape(0);
    in.N = tokens_keep->shape(1);
  } else {
    if (!py::isinstance<DeviceArray>(inputs)) {
      throw py::type_error(concat("inputs: expected a CUDA array [T, N, C] (the parameters are on the CUDA device), "
                                  "got ", type_name(inputs)));
    }
    const DeviceArray& x = inputs.cast<const DeviceArray&>();
    if (x.shape.size() != 3) throw_expected("inputs", "a 3-D array [T, N, C]", concat(x.shape.size(), "-D"));
    in.T = x.shape[0];
    in.N = x.shape[1];
    in.x = device_ptr<S>(inputs, "inputs", {in.T, in.N, cfg.stack.input_size}, false);
  }
  const index_t T = in.T, N = in.N;
  check_stack_dims(cfg.stack, T, N);
  const Backend& backend = backend_for(Device::kCuda);
  const BackendOps<S>& ops = backend.ops<S>();
  const std::unique_ptr<NetworkPlan> plan = ops.plan_network(cfg, T, N, training);
  const NetworkWeights<S> w = device_network_views<S, const S*>(cfg, plan->specs, params, "params");
  in.lengths = host_lengths(lengths, T, N, 1, &lengths_keep);
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  const index_t G = cfg.stack.groups(), P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  args.state0.h = device_ptr<S>(h0, "h0", {G, N, P});
  refuse_cell_state(c0, "c0", cfg.stack);
  args.state0.c = device_ptr<S>(c0, "c0", {G, N, H});
  const std::vector<index_t> out_shape = network_out_shape(cfg, T, N);
  if (!targets.is_none()) {
    if (cfg.loss == LossKind::kNone) throw_expected("targets", "None (the network has no loss)", "an array");
    if (cfg.loss == LossKind::kCrossEntropy) {
      targets_keep = host_ids(targets, "targets", "of class ids");
      args.targets = check_class_targets(cfg, *targets_keep, out_shape, T, N, in.lengths);
    } else {
      args.targets = device_ptr<S>(targets, "targets", out_shape, false);
    }
  }
  const index_t outputs = network_output_elems(cfg, T, N, want_outputs);
  backend.check_fits(checked_mul(checked_add(plan->elems, outputs, "forward"), sizeof(S), "forward bytes"),
                     "a network forward call");
  py::object outputs_obj = want_outputs ? new_output<S>(out_shape, &args.outputs) : py::object(py::none());
  py::object h_n = new_output<S>({G, N, P}, &args.state_n.h);
  py::object c_n = has_c ? new_output<S>({G, N, H}, &args.state_n.c) : py::object(py::none());
  double loss = 0.0;
  args.weights = &w;
  args.dropout_seed = dropout_seed;
  args.softmax_outputs = softmax_outputs;
  args.loss = &loss;
  std::unique_ptr<NetworkCache> cache;
  {
    py::gil_scoped_release release;
    cache = ops.network_forward(*plan, args);
  }
  py::object loss_obj = targets.is_none() ? py::object(py::none()) : py::object(py::float_(loss));
  py::object cache_obj = cache ? py::cast(NetCache{std::move(cache)}) : py::object(py::none());
  return py::make_tuple(outputs_obj, h_n, c_n, loss_obj, cache_obj);
}

template <typename S>
py::tuple network_backward_impl(NetCache& cache_obj, const py::list& grads, const py::object& d_outputs,
                                bool need_dx) {
  NetworkCache& cache = *cache_obj.data;
  const NetworkPlan& plan = cache.plan();
  const NetworkConfig& cfg = plan.cfg;
  const NetworkGrads<S> g = device_network_views<S, S*>(cfg, plan.specs, grads, "grads");
  const index_t T = plan.T, N = plan.N;
  const std::vector<index_t> out_shape = network_out_shape(cfg, T, N);
  NetworkBackwardArgs<S> args;
  args.grads = &g;
  args.d_outputs = device_ptr<S>(d_outputs, "d_outputs", out_shape);
  check_network_backward(cfg, args.d_outputs != nullptr, cache.has_loss_grad(), need_dx);
  const index_t G = cfg.stack.groups();
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  py::object dx = need_dx ? new_output<S>({T, N, cfg.stack.input_size}, &args.dx) : py::object(py::none());
  py::object dh0 = new_output<S>({G, N, cfg.stack.state_size()}, &args.d_state0.h);
  py::object dc0 = has_c ? new_output<S>({G, N, cfg.stack.hidden_size}, &args.d_state0.c) : py::object(py::none());
  const BackendOps<S>& ops = backend_for(Device::kCuda).ops<S>();
  {
    py::gil_scoped_release release;
    ops.network_backward(cache, args);
  }
  return py::make_tuple(dx, dh0, dc0);
}

template <typename S>
py::tuple network_generate_impl(const NetworkConfig& cfg, const py::list& params, const py::object& prefix_obj,
                                index_t count, double temperature, index_t top_k, std::uint64_t seed,
                                const py::object& h0, const py::object& c0) {
  const py::array prefix = host_ids(prefix_obj, "prefix", "[n] of token ids");
  const std::int64_t* pp = check_generate_args(cfg, prefix, count, temperature);
  const NetworkWeights<S> w = device_network_views<S, const S*>(cfg, network_param_specs(cfg), params, "params");
  const index_t G = cfg.stack.groups(), P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  NetworkGenerateArgs<S> args;
  py::object h = new_output<S>({G, 1, P}, &args.state.h);
  py::object c = has_c ? new_output<S>({G, 1, H}, &args.state.c) : py::object(py::none());
  const S* h0p = device_ptr<S>(h0, "h0", {G, 1, P});
  refuse_cell_state(c0, "c0", cfg.stack);
  const S* c0p = device_ptr<S>(c0, "c0", {G, 1, H});
  auto tokens = new_array<std::int64_t>({count});
  args.weights = &w;
  args.prefix = pp;
  args.prefix_len = prefix.shape(0);
  args.count = count;
  args.temperature = temperature;
  args.top_k = top_k;
  args.seed = seed;
  args.out_tokens = tokens.mutable_data();
  const BackendOps<S>& ops = backend_for(Device::kCuda).ops<S>();
  {
    py::gil_scoped_release release;
    // The state, in and out: a copy of h0/c0, or zeros.
    void* const stream = cuda::current_stream();
    const auto load = [&](const S* from, S* to, index_t width) {
      const std::size_t bytes = static_cast<std::size_t>(G * width) * sizeof(S);
      if (from != nullptr) {
        cuda::copy_on_device(to, from, bytes, stream);
      } else {
        cuda::zero_device_bytes(to, bytes);
      }
    };
    load(h0p, args.state.h, P);
    if (has_c) load(c0p, args.state.c, H);
    ops.network_generate(cfg, args);
  }
  return py::make_tuple(tokens, h, c);
}

py::tuple device_backward(Cache& cache, const py::object& dy, const py::object& dh_n, const py::object& dc_n,
                          const py::list& grads, bool need_dx) {
  if (cache.data->elem_bytes() == 4) return backward_impl<float>(cache, dy, dh_n, dc_n, grads, need_dx);
  return backward_impl<double>(cache, dy, dh_n, dc_n, grads, need_dx);
}

py::object device_reserve_view(const py::object& self) {
  const Cache& c = self.cast<const Cache&>();
  DeviceArray a;
  a.shape = {c.data->plan().footprint.cache};
  if (c.data->elem_bytes() == 4) {
    a.kind = Kind::kF32;
    a.data = const_cast<float*>(backend_for(Device::kCuda).ops<float>().stack_cache_block(*c.data));
  } else {
    a.kind = Kind::kF64;
    a.data = const_cast<double*>(backend_for(Device::kCuda).ops<double>().stack_cache_block(*c.data));
  }
  a.base = self;
  return py::cast(std::move(a));
}

// ---- interop: __cuda_array_interface__ (v3) and DLPack ---------------------------------------
// DLPack's C ABI (dlpack.h, the unversioned DLManagedTensor every consumer accepts), declared here
// rather than vendored: these few structs are the whole of what rnnkit uses.
struct DLDevice {
  std::int32_t device_type;
  std::int32_t device_id;
};
struct DLDataType {
  std::uint8_t code;
  std::uint8_t bits;
  std::uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  std::int32_t ndim;
  DLDataType dtype;
  std::int64_t* shape;
  std::int64_t* strides;
  std::uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
constexpr std::int32_t kDLCPU = 1, kDLCUDA = 2;
constexpr std::uint8_t kDLInt = 0, kDLFloat = 2;

// Where rnnkit's device memory is, in DLPack's words: the GPU, or the host in the emulation (whose
// "device" memory is host memory, so that NumPy can take it without a copy there).
std::int32_t dl_device_type() { return cuda::emulated() ? kDLCPU : kDLCUDA; }

const char* typestr_of(Kind k) {
  switch (k) {
    case Kind::kF32: return "<f4";
    case Kind::kF64: return "<f8";
    case Kind::kI64: return "<i8";
  }
  return "?";
}

py::dict cuda_array_interface(const DeviceArray& a) {
  py::dict d;
  py::tuple shape(a.shape.size());
  for (std::size_t i = 0; i < a.shape.size(); ++i) shape[i] = a.shape[i];
  d["shape"] = shape;
  d["typestr"] = typestr_of(a.kind);
  d["data"] = py::make_tuple(reinterpret_cast<std::uintptr_t>(a.data), false);
  d["strides"] = py::none();
  d["version"] = 3;
  // rnnkit's calls have finished their work when they return: there is nothing to wait for.
  d["stream"] = py::none();
  return d;
}

struct DLPackContext {
  DeviceArray array;  // keeps the memory (and a view's owner) alive
  std::vector<std::int64_t> shape;
};

void dlpack_deleter(DLManagedTensor* t) {
  auto* ctx = static_cast<DLPackContext*>(t->manager_ctx);
  if (ctx->array.base) {
    py::gil_scoped_acquire gil;  // a consumer may free it from any thread
    delete ctx;
  } else {
    delete ctx;
  }
  delete t;
}

py::capsule to_dlpack(const DeviceArray& a, const py::object& stream) {
  (void)stream;  // rnnkit's work on the array is complete before any call of rnnkit returns
  auto* ctx = new DLPackContext{a, std::vector<std::int64_t>(a.shape.begin(), a.shape.end())};
  auto* t = new DLManagedTensor{};
  t->dl_tensor.data = a.data;
  t->dl_tensor.device = {dl_device_type(), 0};
  t->dl_tensor.ndim = static_cast<std::int32_t>(a.shape.size());
  t->dl_tensor.dtype = {a.kind == Kind::kI64 ? kDLInt : kDLFloat, static_cast<std::uint8_t>(kind_bytes(a.kind) * 8), 1};
  t->dl_tensor.shape = ctx->shape.data();
  t->dl_tensor.strides = nullptr;  // C-contiguous
  t->dl_tensor.byte_offset = 0;
  t->manager_ctx = ctx;
  t->deleter = dlpack_deleter;
  // An unconsumed capsule (still named "dltensor") frees the tensor itself.
  return py::capsule(t, "dltensor", [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      if (m && m->deleter) m->deleter(m);
    }
  });
}

Kind kind_from(std::uint8_t code, std::uint8_t bits, const char* what) {
  if (code == kDLFloat && bits == 32) return Kind::kF32;
  if (code == kDLFloat && bits == 64) return Kind::kF64;
  if (code == kDLInt && bits == 64) return Kind::kI64;
  throw py::type_error(concat(what, ": expected dtype float32, float64 or int64, got DLPack type code ",
                              static_cast<int>(code), " with ", static_cast<int>(bits), " bits"));
}

// Strides in elements (null: C-contiguous) must be C-contiguous; dimensions of size 1 may have any.
void check_c_contiguous(const std::vector<index_t>& shape, const std::vector<index_t>* strides, const char* what) {
  if (strides == nullptr) return;
  index_t expected = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && (*strides)[i] != expected) {
      throw py::value_error(concat(what, ": expected a C-contiguous array, got strides ", shape_string(*strides),
                                   " (in elements) for shape ", shape_string(shape), " (copy it to a contiguous "
                                   "array first)"));
    }
    expected *= shape[i];
  }
}

// A DeviceArray over another library's device memory, without a copy (`owner` keeps it alive).
DeviceArray from_cuda_array_interface(const py::object& obj) {
  const py::dict d = obj.attr("__cuda_array_interface__");
  const char* what = "__cuda_array_interface__";
  const std::string typestr = d["typestr"].cast<std::string>();
  DeviceArray a;
  if (typestr == "<f4") {
    a.kind = Kind::kF32;
  } else if (typestr == "<f8") {
    a.kind = Kind::kF64;
  } else if (typestr == "<i8") {
    a.kind = Kind::kI64;
  } else {
    throw py::type_error(concat(what, ": expected typestr '<f4', '<f8' or '<i8' (float32, float64, int64), got '",
                                typestr, "'"));
  }
  for (py::handle n : d["shape"].cast<py::tuple>()) a.shape.push_back(n.cast<index_t>());
  if (d.contains("strides") && !d["strides"].is_none()) {
    std::vector<index_t> strides;
    for (py::handle s : d["strides"].cast<py::tuple>()) {
      const index_t bytes = s.cast<index_t>();
      if (bytes % static_cast<index_t>(kind_bytes(a.kind)) != 0) {
        throw py::value_error(concat(what, ": expected strides in whole elements, got ", bytes, " bytes"));
      }
      strides.push_back(bytes / static_cast<index_t>(kind_bytes(a.kind)));
    }
    check_c_contiguous(a.shape, &strides, what);
  }
  const py::tuple data = d["data"].cast<py::tuple>();
  a.data = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
  if (a.data == nullptr && a.numel() > 0) throw py::value_error(concat(what, ": expected a data pointer, got 0"));
  if (d.contains("stream") && !d["stream"].is_none()) {
    const std::uintptr_t stream = d["stream"].cast<std::uintptr_t>();
    py::gil_scoped_release release;
    cuda::synchronize_stream(stream);  // the producer's work on it is done before rnnkit reads it
  }
  a.base = obj;
  return a;
}

DeviceArray from_dlpack(const py::object& obj) {
  const char* what = "__dlpack__";
  const py::tuple where = obj.attr("__dlpack_device__")();
  const int device_type = where[0].cast<int>();
  if (device_type != dl_device_type()) {
    throw py::type_error(concat("array: expected a CUDA array (DLPack device type ", dl_device_type(),
                                "), got DLPack device type ", device_type,
                                device_type == kDLCPU ? " (host memory: copy it with rnnkit.to_device)" : ""));
  }
  // The stream rnnkit's next work goes on (DLPack spells the legacy default stream 1): the producer
  // orders its pending work before it (a CPU producer takes no stream).
  const auto current = reinterpret_cast<std::uintptr_t>(cuda::current_stream());
  py::object capsule = device_type == kDLCUDA
                           ? obj.attr("__dlpack__")(py::arg("stream") = py::int_(current == 0 ? 1 : current))
                           : obj.attr("__dlpack__")();
  PyObject* cap = capsule.ptr();
  if (!PyCapsule_IsValid(cap, "dltensor")) {
    throw py::type_error(concat(what, ": expected an unconsumed 'dltensor' capsule"));
  }
  auto* t = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
  std::shared_ptr<DLManagedTensor> owner(t, [](DLManagedTensor* m) {
    py::gil_scoped_acquire gil;  // the producer's deleter may touch Python objects
    if (m->deleter) m->deleter(m);
  });
  PyCapsule_SetName(cap, "used_dltensor");  // ownership is rnnkit's now (DLPack's protocol)
  const DLTensor& dl = t->dl_tensor;
  if (dl.dtype.lanes != 1) throw py::type_error(concat(what, ": expected one lane per element, got ", dl.dtype.lanes));
  DeviceArray a;
  a.kind = kind_from(dl.dtype.code, dl.dtype.bits, what);
  a.shape.assign(dl.shape, dl.shape + dl.ndim);
  if (dl.strides != nullptr) {
    const std::vector<index_t> strides(dl.strides, dl.strides + dl.ndim);
    check_c_contiguous(a.shape, &strides, what);
  }
  a.data = static_cast<char*>(dl.data) + dl.byte_offset;
  a.memory = std::shared_ptr<void>(owner, a.data);
  return a;
}

void register_device(py::module_& m) {
  py::class_<DeviceArray>(m, "DeviceArray", py::module_local(),
                          "An array in CUDA device memory (host memory in the emulation build): shape, dtype, "
                          "numpy() copies it to the host.")
      .def_property_readonly("shape", [](const DeviceArray& a) {
        py::tuple t(a.shape.size());
        for (std::size_t i = 0; i < a.shape.size(); ++i) t[i] = a.shape[i];
        return t;
      })
      .def_property_readonly("dtype", [](const DeviceArray& a) { return py::dtype(kind_name(a.kind)); })
      .def_property_readonly("ndim", [](const DeviceArray& a) { return a.shape.size(); })
      .def_property_readonly("size", &DeviceArray::numel)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("device", [](const DeviceArray&) { return "cuda"; })
      .def("numpy", &to_host, "A host copy (numpy.ndarray).")
      .def_property_readonly("__cuda_array_interface__", &cuda_array_interface,
                             "The CUDA array interface (v3): CuPy, Numba and PyTorch read the array without a copy.")
      .def("__dlpack__",
           [](const DeviceArray& a, const py::object& stream, const py::object&, const py::object&,
              const py::object&) { return to_dlpack(a, stream); },
           py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
           py::arg("dl_device") = py::none(), py::arg("copy") = py::none(),
           "A DLPack capsule over this array's memory (no copy); the array stays alive while the consumer holds it.")
      .def("__dlpack_device__", [](const DeviceArray&) { return py::make_tuple(dl_device_type(), 0); },
           "(device type, id) in DLPack's terms: (2, 0), CUDA device 0 (the emulation: (1, 0), the host).")
      .def("copy", [](const DeviceArray& a) {
        DeviceArray out = new_device_array(a.shape, a.kind);
        py::gil_scoped_release release;
        cuda::copy_on_device(out.data, a.data, a.nbytes(), cuda::current_stream());
        cuda::synchronize_stream(reinterpret_cast<std::uintptr_t>(cuda::current_stream()));
        return out;
      }, "A device copy.")
      .def("copy_from_host", [](DeviceArray& a, const py::array& host) {
        const DeviceArray src_shape_only = [&] {
          DeviceArray t;
          t.shape.assign(host.shape(), host.shape() + host.ndim());
          return t;
        }();
        if (src_shape_only.shape != a.shape) throw_expected("array shape", shape_string(a.shape), shape_string(host));
        const bool same = (a.kind == Kind::kF32 && is_dtype<float>(host.dtype())) ||
                          (a.kind == Kind::kF64 && is_dtype<double>(host.dtype())) ||
                          (a.kind == Kind::kI64 && is_dtype<index_t>(host.dtype()));
        if (!same) throw py::type_error(concat("array: expected dtype ", kind_name(a.kind), ", got ", dtype_name(host.dtype())));
        const py::array c = py::array::ensure(host, py::array::c_style);
        py::gil_scoped_release release;
        cuda::copy_to_device(a.data, c.data(), a.nbytes(), cuda::current_stream());
      }, py::arg("array"), "Copies a host array of the same shape and dtype into this one, in place.")
      .def("zero_", [](DeviceArray& a) {
        py::gil_scoped_release release;
        cuda::zero_device_bytes(a.data, a.nbytes());
      }, "Sets every element to zero, in place.")
      .def("reshape", [](const py::object& self, const std::vector<index_t>& shape) {
        const DeviceArray& a = self.cast<const DeviceArray&>();
        DeviceArray view = a;
        view.shape = shape;
        if (view.numel() != a.numel()) {
          throw_expected("reshape", concat(a.numel(), " elements"), concat(shape_string(shape), " (", view.numel(), " elements)"));
        }
        view.base = a.base ? a.base : self;
        return view;
      }, py::arg("shape"), "A view of the same memory with another shape (same number of elements).")
      .def("swapaxes01", [](const DeviceArray& a) {
        if (a.shape.size() < 2) throw_expected("swapaxes01", "an array of 2 or more dimensions", concat(a.shape.size(), "-D"));
        std::vector<index_t> shape = a.shape;
        std::swap(shape[0], shape[1]);
        index_t inner = 1;
        for (std::size_t i = 2; i < a.shape.size(); ++i) inner *= a.shape[i];
        DeviceArray out = new_device_array(shape, a.kind);
        py::gil_scoped_release release;
        cuda::swap_leading_axes(a.data, out.data, a.shape[0], a.shape[1], inner, static_cast<int>(kind_bytes(a.kind)));
        return out;
      }, "A new array with the two leading axes swapped ([A, B, ...] -> [B, A, ...]).")
      .def("__repr__", [](const DeviceArray& a) {
        return concat("DeviceArray(shape=", shape_string(a.shape), ", dtype=", kind_name(a.kind), ", device='cuda')");
      });
  m.def("to_device", &to_device, py::arg("array"),
        "A copy of a numpy array (float32, float64 or int64) in CUDA device memory.");
  m.def("from_cuda_array_interface", &from_cuda_array_interface, py::arg("obj"),
        "A DeviceArray over obj's device memory (its __cuda_array_interface__), no copy; keeps obj alive.");
  m.def("from_dlpack", &from_dlpack, py::arg("obj"),
        "A DeviceArray over obj's device memory (its __dlpack__), no copy; keeps the memory alive.");
  m.def("cuda_set_persistent", &cuda::set_persistent_mode, py::arg("mode"),
        "The persistent small-batch forward: 0 auto, 1 always (wherever it can run), 2 never.");
  m.def("cuda_get_persistent", &cuda::get_persistent_mode, "The persistent forward's mode (0 auto, 1 always, 2 never).");
  m.def("_cuda_gemm_bf16", [](py::array_t<float, py::array::c_style | py::array::forcecast> A, bool trans_a,
                              py::array_t<float, py::array::c_style | py::array::forcecast> B, bool trans_b,
                              double beta, py::array_t<float, py::array::c_style | py::array::forcecast> C) {
        const auto [m, n, k] = check_gemm_arrays(A, trans_a, B, trans_b, C);
        std::vector<float> out;
        {
          py::gil_scoped_release release;
          out = cuda::gemm_bf16_check(trans_a, trans_b, m, n, k, std::vector<float>(A.data(), A.data() + A.size()),
                                      std::vector<float>(B.data(), B.data() + B.size()), static_cast<float>(beta),
                                      std::vector<float>(C.data(), C.data() + C.size()));
        }
        py::array_t<float> result({m, n});
        std::copy(out.begin(), out.end(), result.mutable_data());
        return result;
      }, py::arg("A"), py::arg("trans_a"), py::arg("B"), py::arg("trans_b"), py::arg("beta"), py::arg("C"),
      "Tests only: op(A) op(B) + beta C through the CUDA backend's bfloat16 GEMM (rounded on the device).");
  m.def("_cuda_set_row_thread_cap", &cuda::set_row_thread_cap, py::arg("threads"),
        "Tests only: caps the threads of a LayerNorm row kernel's block (a power of two, 32 ... 1024).");
  m.def("cuda_memory_stats", [] {
    const cuda::PoolStats st = cuda::pool_stats();
    py::dict d;
    d["cached_bytes"] = st.cached_bytes;
    d["in_use_bytes"] = st.in_use_bytes;
    d["device_allocations"] = st.device_allocations;
    d["reuses"] = st.reuses;
    return d;
  }, "The CUDA backend's caching allocator: cached_bytes, in_use_bytes, device_allocations, reuses.");
  m.def("cuda_empty_cache", [] {
    py::gil_scoped_release release;
    cuda::empty_cache();
  }, "Returns the CUDA backend's cached device memory to the device.");
  m.def("cuda_network_forward",
        [](const NetworkConfig& cfg, const py::list& params, const py::object& inputs, const py::object& h0,
           const py::object& c0, const py::object& lengths, const py::object& targets, bool training,
           std::uint64_t dropout_seed, bool want_outputs, bool softmax_outputs) {
          return by_kind(kind_of_list(params, "params"), [&](auto s) {
            return network_forward_impl<decltype(s)>(cfg, params, inputs, h0, c0, lengths, targets, training,
                                                     dropout_seed, want_outputs, softmax_outputs);
          });
        },
        py::arg("config"), py::arg("params"), py::arg("inputs"), py::arg("h0"), py::arg("c0"), py::arg("lengths"),
        py::arg("targets"), py::arg("training"), py::arg("dropout_seed"), py::arg("want_outputs"),
        py::arg("softmax_outputs"),
        "network_forward on the CUDA backend: parameters, dense inputs, states and MSE targets are CUDA arrays; "
        "token ids, class-id targets and lengths host arrays. (outputs|None, h_n, c_n|None, loss|None, cache|None).");
  m.def("cuda_network_backward",
        [](NetCache& cache, const py::list& grads, const py::object& d_outputs, bool need_dx) {
          if (cache.data->device() != Device::kCuda) {
            throw_expected("cache", "a cache of a forward on CUDA arrays (cuda_network_forward)",
                           "the CPU backend's (network_backward takes it)");
          }
          if (cache.data->elem_bytes() == 4) return network_backward_impl<float>(cache, grads, d_outputs, need_dx);
          return network_backward_impl<double>(cache, grads, d_outputs, need_dx);
        },
        py::arg("cache"), py::arg("grads"), py::arg("d_outputs"), py::arg("need_dx") = false,
        "network_backward on the CUDA backend; gradients (CUDA arrays) ACCUMULATED. (dx|None, dh0, dc0|None).");
  m.def("cuda_network_generate",
        [](const NetworkConfig& cfg, const py::list& params, const py::object& prefix, index_t count,
           double temperature, index_t top_k, std::uint64_t seed, const py::object& h0, const py::object& c0) {
          return by_kind(kind_of_list(params, "params"), [&](auto s) {
            return network_generate_impl<decltype(s)>(cfg, params, prefix, count, temperature, top_k, seed, h0, c0);
          });
        },
        py::arg("config"), py::arg("params"), py::arg("prefix"), py::arg("count"), py::arg("temperature"),
        py::arg("top_k"), py::arg("seed"), py::arg("h0"), py::arg("c0"),
        "network_generate on the CUDA backend (parameters and states CUDA arrays; prefix and the tokens host "
        "arrays): (tokens, h, c|None).");
  m.def("cuda_set_stream", [](std::uintptr_t stream) { cuda::set_current_stream(reinterpret_cast<void*>(stream)); },
        py::arg("stream"), "The cudaStream_t this thread's CUDA backend calls run on (0: the legacy default stream).");
  m.def("cuda_current_stream", [] { return reinterpret_cast<std::uintptr_t>(cuda::current_stream()); },
        "The cudaStream_t this thread's CUDA backend calls run on.");
  m.def("cuda_set_graphs", &cuda::set_graphs_enabled, py::arg("enabled"),
        "CUDA graphs for the standard path's per-step launches, process-wide.");
  m.def("cuda_get_graphs", &cuda::graphs_enabled, "Whether CUDA graphs are on.");
  m.def("cuda_graph_stats", [] {
    const cuda::GraphStats st = cuda::graph_stats();
    py::dict d;
    d["launches"] = st.launches;
    d["captures"] = st.captures;
    d["updates"] = st.updates;
    d["instantiations"] = st.instantiations;
    d["cached"] = st.cached;
    d["per_topology"] = st.per_topology;
    return d;
  }, "CUDA graph counters: launches, captures, updates, instantiations (process-wide); cached (this thread's); "
     "per_topology (graphs of one shape kept before updates replace them).");
  m.def("cuda_clear_graph_cache", [] {
    py::gil_scoped_release release;
    cuda::clear_graph_cache();
  }, "Drops this thread's cached CUDA graphs.");
  m.def("cuda_persistent_launches", &cuda::persistent_launches,
        "How many layer-direction forwards took the persistent kernel so far in this process.");

  m.def("forward",
        [](const StackConfig& cfg, const py::list& params, const DeviceArray& x, const py::object& h0,
           const py::object& c0, const py::object& lengths, bool training, std::uint64_t dropout_seed,
           bool zero_cache) {
          const py::object x_obj = py::cast(x, py::return_value_policy::reference);
          return by_kind(kind_of_obj(x_obj, "x"), [&](auto s) {
            return forward_impl<decltype(s)>(cfg, params, x, x_obj, h0, c0, lengths, training, dropout_seed, zero_cache);
          });
        },
        py::arg("config"), py::arg("params"), py::arg("x"), py::arg("h0"), py::arg("c0"), py::arg("lengths"),
        py::arg("training"), py::arg("dropout_seed"), py::arg("zero_cache") = false,
        "forward on the CUDA backend: the arrays are DeviceArrays (lengths a host int64 array or None).");
  m.def("step",
        [](const StackConfig& cfg, const py::list& params, const DeviceArray& x, const py::object& h,
           const py::object& c) {
          const py::object x_obj = py::cast(x, py::return_value_policy::reference);
          return by_kind(kind_of_obj(x_obj, "x"),
                         [&](auto s) { return step_impl<decltype(s)>(cfg, params, x, x_obj, h, c); });
        },
        py::arg("config"), py::arg("params"), py::arg("x"), py::arg("h"), py::arg("c"),
        "step on the CUDA backend (DeviceArrays).");
  m.def("backward",
        [](Cache& cache, const py::object& dy, const py::object& dh_n, const py::object& dc_n, const py::list& grads,
           bool need_dx) {
          if (cache.data->device() != Device::kCuda) {
            throw std::invalid_argument("dy: expected numpy arrays (the cache is the CPU backend's), got CUDA arrays");
          }
          return device_backward(cache, dy, dh_n, dc_n, grads, need_dx);
        },
        py::arg("cache"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("grads"), py::arg("need_dx"),
        "backward on the CUDA backend (DeviceArrays).");
  m.def("backward_reserve",
        [](const StackConfig& cfg, const DeviceArray& reserve, index_t T, index_t N, const py::object& lengths,
           std::uint64_t dropout_seed, const py::object& dy, const py::object& dh_n, const py::object& dc_n,
           const py::list& grads, bool need_dx) {
          const py::object r = py::cast(reserve, py::return_value_policy::reference);
          return by_kind(kind_of_obj(r, "reserve"), [&](auto s) {
            return backward_reserve_impl<decltype(s)>(cfg, r, T, N, lengths, dropout_seed, dy, dh_n, dc_n, grads,
                                                      need_dx);
          });
        },
        py::arg("config"), py::arg("reserve"), py::arg("T"), py::arg("N"), py::arg("lengths"),
        py::arg("dropout_seed"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("grads"),
        py::arg("need_dx"), "backward_reserve on the CUDA backend (a DeviceArray reserve).");
}

}  // namespace bind
}  // namespace rnnkit
