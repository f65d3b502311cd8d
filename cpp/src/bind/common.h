// Helpers shared by the pybind11 binding files: cell names, array checks at the boundary, where a
// call's data lives (which backend runs it), and the parameter lists that arrive from Python as
// lists of arrays (checked against the call's parameter specs).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <memory>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "rnnkit/backend.h"
#include "rnnkit/network.h"

namespace rnnkit {
namespace bind {

namespace py = pybind11;

// What a training forward keeps for backward, as the Python object _core.Cache (either backend's).
struct Cache {
  std::unique_ptr<StackCache> data;
};

// The same for a network, as _core.NetworkCache (either backend's).
struct NetCache {
  std::unique_ptr<NetworkCache> data;
};

// ---- cell names ---------------------------------------------------------------------------
// The compiled module takes PyTorch's `mode` spelling of a cell: its name (cells.h) in upper case.
inline std::string mode_name(CellKind cell) {
  std::string mode = cell_name(cell);
  for (char& ch : mode) ch = static_cast<char>(ch >= 'a' && ch <= 'z' ? ch - 'a' + 'A' : ch);
  return mode;
}

inline CellKind parse_mode(const std::string& mode) {
  for (const CellName& c : kCellNames) {
    if (mode == mode_name(c.kind)) return c.kind;
  }
  std::string names;
  for (const CellName& c : kCellNames) names += concat(names.empty() ? "" : ", ", "'", mode_name(c.kind), "'");
  throw_expected("mode", concat("one of ", names), concat("'", mode, "'"));
}

inline const char* precision_name(Precision p) { return p == Precision::kBfloat16 ? "bfloat16" : "float32"; }

// The test hooks' C = op(A) op(B) + beta C (_gemm_bf16, _cuda_gemm_bf16): checks the three 2-d
// arrays against each other and returns {m, n, k}.
struct GemmSizes {
  index_t m, n, k;
};
inline GemmSizes check_gemm_arrays(const py::array& A, bool trans_a, const py::array& B, bool trans_b,
                                   const py::array& C) {
  if (A.ndim() != 2 || B.ndim() != 2 || C.ndim() != 2) throw_expected("A, B, C", "2-d arrays", "other ranks");
  const index_t m = trans_a ? A.shape(1) : A.shape(0), k = trans_a ? A.shape(0) : A.shape(1);
  const index_t n = trans_b ? B.shape(0) : B.shape(1), kb = trans_b ? B.shape(1) : B.shape(0);
  if (kb != k) throw_expected("B", concat(k, " rows of op(B)"), kb);
  if (C.shape(0) != m || C.shape(1) != n) {
    throw_expected("C", concat("[", m, ", ", n, "]"), concat("[", C.shape(0), ", ", C.shape(1), "]"));
  }
  return {m, n, k};
}

inline Precision parse_precision(const std::string& name) {
  if (name == "float32") return Precision::kFloat32;
  if (name == "bfloat16") return Precision::kBfloat16;
  throw_expected("precision", "'float32' or 'bfloat16'", concat("'", name, "'"));
}

// ---- array checks ---------------------------------------------------------------------------
inline std::string shape_string(const py::array& a) {
  std::vector<index_t> shape(a.shape(), a.shape() + a.ndim());
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += concat(i ? ", " : "", shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

inline std::string shape_string(const std::vector<index_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += concat(i ? ", " : "", shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

inline std::string dtype_name(const py::dtype& dt) { return py::str(dt).cast<std::string>(); }

// NumPy allows arrays at any byte offset (views of a byte buffer); the kernels load whole, aligned
// elements, so a misaligned array is refused here (the Python layer copies inputs to aligned ones).
template <typename S>
bool is_aligned(const py::array& a) {
  return reinterpret_cast<std::uintptr_t>(a.data()) % alignof(S) == 0;
}

// Whether dt is S's dtype: NumPy's equivalence, not identity (an unpickled array carries a dtype
// object of its own that is not NumPy's float32 singleton, yet is float32).
template <typename S>
bool is_dtype(const py::dtype& dt) {
  return dt.is(py::dtype::of<S>()) ||
         py::detail::npy_api::get().PyArray_EquivTypes_(dt.ptr(), py::dtype::of<S>().ptr());
}

template <typename S>
void check_array(const py::array& a, const std::string& name, const std::vector<index_t>& shape,
                 bool writable) {
  if (!is_dtype<S>(a.dtype())) {
    throw py::type_error(concat(name, ": expected dtype ", dtype_name(py::dtype::of<S>()),
                                ", got ", dtype_name(a.dtype())));
  }
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (std::size_t i = 0; same && i < shape.size(); ++i) same = a.shape(i) == shape[i];
  if (!same) throw_expected(concat(name, " shape"), shape_string(shape), shape_string(a));
  if (!(a.flags() & py::array::c_style)) {
    throw_expected(name, "a C-contiguous array", "a non-contiguous array");
  }
  if (!is_aligned<S>(a)) throw_expected(name, "an aligned array", "a view at a misaligned address");
  if (writable && !a.writeable()) throw_expected(name, "a writable array", "a read-only array");
}

// The checks of check_array without building any message (the common, valid case is hot).
template <typename S>
bool array_ok(const py::array& a, const std::vector<index_t>& shape, bool writable) {
  if (!is_dtype<S>(a.dtype()) || a.ndim() != static_cast<py::ssize_t>(shape.size())) return false;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (a.shape(i) != shape[i]) return false;
  }
  return (a.flags() & py::array::c_style) && is_aligned<S>(a) && (!writable || a.writeable());
}

template <typename S>
const S* in_ptr(const py::array& a, const std::string& name, const std::vector<index_t>& shape) {
  check_array<S>(a, name, shape, false);
  return static_cast<const S*>(a.data());
}

template <typename S>
const S* in_ptr(const std::optional<py::array>& a, const std::string& name,
                const std::vector<index_t>& shape) {
  return a ? in_ptr<S>(*a, name, shape) : nullptr;
}

template <typename S>
py::array_t<S> new_array(const std::vector<index_t>& shape) {
  // 64-byte aligned, like rnnkit's own buffers (NumPy's allocator guarantees 16): Eigen's SIMD
  // loops peel scalar iterations up to the first aligned element, and a scalar tanh or exp does
  // not round like its SIMD twin, so results written here would otherwise depend on the address
  // the allocator happened to return, and differ from run to run.
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  std::size_t count = 1;
  for (index_t d : shape) count *= static_cast<std::size_t>(d);
  const std::size_t bytes = std::max<std::size_t>(64, (count * sizeof(S) + 63) / 64 * 64);
  void* data = std::aligned_alloc(64, bytes);
  if (data == nullptr) throw std::bad_alloc();
  py::capsule owner(data, [](void* p) { std::free(p); });
  return py::array_t<S>(dims, static_cast<S*>(data), owner);
}

// A new array of `shape` when `wanted`, its data in *data; else None, and *data null.
template <typename S>
py::object new_array_if(bool wanted, const std::vector<index_t>& shape, S** data) {
  if (!wanted) {
    *data = nullptr;
    return py::none();
  }
  auto a = new_array<S>(shape);
  *data = a.mutable_data();
  return std::move(a);
}

inline void check_list_length(const py::list& arrays, std::size_t expected, const char* what) {
  if (static_cast<std::size_t>(py::len(arrays)) != expected) {
    throw_expected(concat(what, " list length"), expected, py::len(arrays));
  }
}

// A step snapshot's own copies of `arrays` (C-contiguous, read-only, in an immutable tuple): the
// snapshot keeps raw pointers into them, so neither replacing an entry (which would free one) nor
// writing into one (which the packed matrices would not see) can happen by accident.
inline py::tuple frozen_copies(const py::list& arrays) {
  const py::object np_array = py::module_::import("numpy").attr("array");
  py::tuple out(py::len(arrays));
  for (std::size_t i = 0; i < out.size(); ++i) {
    py::object a = np_array(arrays[i], py::arg("copy") = true, py::arg("order") = "C");
    a.attr("setflags")(py::arg("write") = false);
    out[i] = a;
  }
  return out;
}

// A step snapshot (bind/stack.cpp's StepSnapshot, bind/network.cpp's NetworkStepSnapshot: cfg,
// params, views, packed) of `params` listed by `specs`: frozen copies, `views(copies)` into them,
// and `pack(views)` run with the GIL released.
template <typename Snap, typename Cfg, typename ViewsFn, typename PackFn>
Snap make_step_snapshot(const Cfg& cfg, const std::vector<ParamSpec>& specs, const py::list& params, ViewsFn&& views,
                        PackFn&& pack) {
  Snap snap;
  snap.cfg = cfg;
  check_list_length(params, specs.size(), "params");
  snap.params = frozen_copies(params);
  snap.views = views(py::list(snap.params));
  {
    py::gil_scoped_release release;
    snap.packed = pack(snap.views);
  }
  return snap;
}

// arrays[i], checked against specs[i]; the message (naming the parameter) is built only on failure.
template <typename S>
S* list_item(const py::list& arrays, std::size_t i, const ParamSpec& spec, const char* what,
             bool writable) {
  py::handle item = arrays[i];
  if (py::isinstance<py::array>(item)) {
    py::array a = py::reinterpret_borrow<py::array>(item);
    if (array_ok<S>(a, spec.shape, writable)) return static_cast<S*>(const_cast<void*>(a.data()));
    check_array<S>(a, concat(what, "[", i, "] (", spec.name, ")"), spec.shape, writable);  // throws
  }
  throw py::type_error(concat(what, "[", i, "] (", spec.name, "): expected a numpy array, got ",
                              py::str(py::type::of(item)).cast<std::string>()));
}

// The arrays of `specs` in order, checked (dtype S, shape, C order, writable for gradients), as
// the stack's per-group weights (Ptr = const S*) or gradients (Ptr = S*), and for a network's list
// its own parameters too.
template <typename S, typename Ptr>
std::vector<LayerParams<Ptr>> group_views(const StackConfig& cfg, const std::vector<ParamSpec>& specs,
                                          const py::list& arrays, const char* what, bool writable) {
  check_list_length(arrays, specs.size(), what);
  std::vector<LayerParams<Ptr>> views(cfg.groups());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    if (!specs[i].in_stack()) continue;
    param_field(views[specs[i].group], specs[i].role) = list_item<S>(arrays, i, specs[i], what, writable);
  }
  return views;
}

template <typename S, typename Ptr>
NetworkParams<Ptr> network_views(const NetworkConfig& cfg, const std::vector<ParamSpec>& specs,
                                 const py::list& arrays, const char* what, bool writable) {
  NetworkParams<Ptr> net;
  net.stack = group_views<S, Ptr>(cfg.stack, specs, arrays, what, writable);
  for (std::size_t i = 0; i < specs.size(); ++i) {
    if (!specs[i].in_stack()) param_field(net, specs[i]) = list_item<S>(arrays, i, specs[i], what, writable);
  }
  return net;
}

// lengths: int64 [N], each in [min_length, T]; null when absent.
// min_length: 0 for a layer stack (a sequence of length 0 ends in zeros, layer.h), 1 for a
// network (every sequence has outputs to score).
inline const index_t* check_lengths(const std::optional<py::array>& lengths, index_t T, index_t N,
                                    index_t min_length) {
  if (!lengths) return nullptr;
  check_array<index_t>(*lengths, "lengths", {N}, false);
  const auto* lp = static_cast<const index_t*>(lengths->data());
  for (index_t n = 0; n < N; ++n) {
    if (lp[n] < min_length || lp[n] > T) {
      throw_expected(concat("lengths[", n, "]"), concat("a length in [", min_length, ", ", T, "]"), lp[n]);
    }
  }
  return lp;
}

// A network's outputs: [T, N, K] (sequence head) or [N, K] (last head).
inline std::vector<index_t> network_out_shape(const NetworkConfig& cfg, index_t T, index_t N) {
  if (cfg.head == HeadKind::kSequence) return {T, N, cfg.output_size};
  return {N, cfg.output_size};
}

// Elements a network forward returns (outputs when wanted, the final states), for check_fits.
inline index_t network_output_elems(const NetworkConfig& cfg, index_t T, index_t N, bool want_outputs) {
  const index_t G = cfg.stack.groups(), P = cfg.stack.state_size(), H = cfg.stack.hidden_size;
  const bool has_c = cell_info(cfg.stack.cell).has_cell_state;
  return checked_add(want_outputs ? checked_mul(cfg.head_rows(T, N), cfg.output_size, "outputs") : 0,
                     checked_mul(G, checked_mul(N, P + (has_c ? H : 0), "states"), "states"), "outputs");
}

// A network backward's request (either backend): d_outputs unless the forward fused the loss, and
// no dx for a token network.
inline void check_network_backward(const NetworkConfig& cfg, bool has_d_outputs, bool has_loss_grad, bool need_dx) {
  if (!has_d_outputs && !has_loss_grad) {
    throw_expected("d_outputs", "an array (the forward was given no targets, so there is no loss to differentiate)", "None");
  }
  if (need_dx && cfg.vocab_size > 0) {
    throw_expected("need_dx", "False for a token network (its input gradient goes to the embedding)", "True");
  }
}

// Checks tokens [T,N] int64 in [0, vocab) (a host array, on either backend).
inline const std::int64_t* check_tokens(const py::array& tokens, index_t vocab) {
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

// Checks a cross-entropy network's targets: int64 class ids shaped like its outputs less the last
// axis, each in [0, K) or ignore_index (padded steps are not read). A host array on either backend.
inline const std::int64_t* check_class_targets(const NetworkConfig& cfg, const py::array& targets,
                                               const std::vector<index_t>& out_shape, index_t T, index_t N,
                                               const index_t* lengths) {
  const bool sequence = cfg.head == HeadKind::kSequence;
  const index_t K = cfg.output_size;
  std::vector<index_t> shape(out_shape.begin(), out_shape.end() - 1);
  check_array<std::int64_t>(targets, "targets", shape, false);
  const auto* t = static_cast<const std::int64_t*>(targets.data());
  const index_t R = cfg.head_rows(T, N);
  for (index_t r = 0; r < R; ++r) {
    const bool padding = sequence && lengths && r / N >= lengths[r % N];
    if (!padding && t[r] != cfg.ignore_index && (t[r] < 0 || t[r] >= K)) {
      throw_expected(sequence ? concat("targets[", r / N, ", ", r % N, "]") : concat("targets[", r, "]"),
                     concat("a class id in [0, ", K, ") or ignore_index ", cfg.ignore_index), t[r]);
    }
  }
  return t;
}

// A streaming step (and generation, a chain of them) runs forward in time only.
inline void check_steppable(const StackConfig& cfg, const char* what = "layer") {
  if (cfg.num_directions != 1 || cfg.reverse) {
    throw_expected(what, concat("a forward ", what, " (a step has no future for a reverse direction)"),
                   cfg.reverse ? "a reverse one" : "a bidirectional one");
  }
}

// Checks a generation call (either backend): a forward token network with a cross-entropy output
// over its vocabulary, count >= 0, temperature >= 0, prefix a 1-D host int64 array of token ids.
// Returns the prefix's ids.
inline const std::int64_t* check_generate_args(const NetworkConfig& cfg, const py::array& prefix, index_t count,
                                               double temperature) {
  check_steppable(cfg.stack, "network");
  if (cfg.vocab_size == 0 || cfg.loss != LossKind::kCrossEntropy || cfg.output_size != cfg.vocab_size) {
    throw_expected("network", "a token network with a cross-entropy output over its vocabulary", "another kind");
  }
  if (count < 0) throw_expected("count", "an integer >= 0", count);
  if (!(temperature >= 0.0)) throw_expected("temperature", "a number >= 0", temperature);
  if (prefix.ndim() != 1 || prefix.shape(0) < 1) {
    throw_expected("prefix", "a 1-D array of at least one token id", shape_string(prefix));
  }
  check_array<std::int64_t>(prefix, "prefix", {prefix.shape(0)}, false);
  const auto* pp = static_cast<const std::int64_t*>(prefix.data());
  for (index_t i = 0; i < prefix.shape(0); ++i) {
    if (pp[i] < 0 || pp[i] >= cfg.vocab_size) {
      throw_expected(concat("prefix[", i, "]"), concat("a token id in [0, ", cfg.vocab_size, ")"), pp[i]);
    }
  }
  return pp;
}

// Where an array's data lives, which picks the backend that runs the call. NumPy arrays are host
// memory; calls on CUDA arrays (_core.DeviceArray) take bind/device.cpp's overloads instead.
inline Device device_of(const py::array&) { return Device::kCpu; }

// The dtype of a list of arrays (its last entry decides; every entry is checked later).
inline py::dtype list_dtype(const py::list& arrays, const char* what) {
  if (py::len(arrays) == 0 || !py::isinstance<py::array>(arrays[py::len(arrays) - 1])) {
    throw py::type_error(concat(what, ": expected a list of numpy arrays"));
  }
  return arrays[py::len(arrays) - 1].cast<py::array>().dtype();
}

// Calls fn(float{}) or fn(double{}) for a float32/float64 dtype; TypeError naming `what` otherwise.
template <typename Fn>
decltype(auto) by_dtype(const py::dtype& dt, const char* what, Fn&& fn) {
  if (is_dtype<float>(dt)) return fn(float{});
  if (is_dtype<double>(dt)) return fn(double{});
  throw py::type_error(concat(what, ": expected dtype float32 or float64, got ", dtype_name(dt)));
}

// The (name, shape) list Python sees from param_specs().
inline py::list specs_list(const std::vector<ParamSpec>& specs) {
  py::list out;
  for (const ParamSpec& s : specs) {
    py::tuple shape(s.shape.size());
    for (std::size_t i = 0; i < s.shape.size(); ++i) shape[i] = s.shape[i];
    out.append(py::make_tuple(s.name, shape));
  }
  return out;
}

}  // namespace bind
}  // namespace rnnkit
