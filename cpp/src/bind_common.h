// Helpers shared by the pybind11 binding files: cell names, array checks at the boundary, and
// the parameter lists that arrive from Python as lists of arrays (checked against the specs).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "rnnkit/stack.h"

namespace rnnkit {
namespace bind {

namespace py = pybind11;

// ---- cell names ---------------------------------------------------------------------------
struct ModeName {
  const char* name;
  CellKind cell;
};
// PyTorch's mode strings where PyTorch has the cell; rnnkit's own names for the others.
inline constexpr ModeName kModes[] = {
    {"RNN_TANH", CellKind::kElmanTanh},       {"RNN_RELU", CellKind::kElmanRelu},
    {"LSTM", CellKind::kLSTM},                {"GRU", CellKind::kGRU},
    {"GRU_RESET_BEFORE", CellKind::kGRUResetBefore},
    {"LN_LSTM", CellKind::kLayerNormLSTM},    {"LN_GRU", CellKind::kLayerNormGRU},
};

inline CellKind parse_mode(const std::string& mode) {
  for (const ModeName& m : kModes) {
    if (mode == m.name) return m.cell;
  }
  std::string names;
  for (const ModeName& m : kModes) names += concat(names.empty() ? "" : ", ", "'", m.name, "'");
  throw_expected("mode", concat("one of ", names), concat("'", mode, "'"));
}

inline std::string mode_name(CellKind cell) {
  for (const ModeName& m : kModes) {
    if (m.cell == cell) return m.name;
  }
  return "?";
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

template <typename S>
void check_array(const py::array& a, const std::string& name, const std::vector<index_t>& shape,
                 bool writable) {
  if (!a.dtype().is(py::dtype::of<S>())) {
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
  if (!a.dtype().is(py::dtype::of<S>()) || a.ndim() != static_cast<py::ssize_t>(shape.size())) return false;
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

inline void check_list_length(const py::list& arrays, std::size_t expected, const char* what) {
  if (static_cast<std::size_t>(py::len(arrays)) != expected) {
    throw_expected(concat(what, " list length"), expected, py::len(arrays));
  }
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
// per-group views of the stack's weights (W = LayerWeights<S>) or gradients (LayerGrads<S>).
template <typename S, typename W>
std::vector<W> group_views(const StackConfig& cfg, const std::vector<ParamSpec>& specs,
                           const py::list& arrays, const char* what, bool writable) {
  check_list_length(arrays, specs.size(), what);
  std::vector<W> views(cfg.groups());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const ParamSpec& spec = specs[i];
    if (spec.group < 0) continue;  // not a stack parameter (network layers handle their own)
    S* ptr = list_item<S>(arrays, i, spec, what, writable);
    W& v = views[spec.group];
    if constexpr (std::is_same_v<W, LayerWeights<S>>) {
      switch (spec.role) {
        case kRoleWIh: v.w_ih = ptr; break;
        case kRoleWHh: v.w_hh = ptr; break;
        case kRoleBIh: v.b_ih = ptr; break;
        case kRoleBHh: v.b_hh = ptr; break;
        case kRoleWHr: v.w_hr = ptr; break;
        default: v.ln[spec.role - kRoleLn0] = ptr; break;
      }
    } else {
      switch (spec.role) {
        case kRoleWIh: v.dw_ih = ptr; break;
        case kRoleWHh: v.dw_hh = ptr; break;
        case kRoleBIh: v.db_ih = ptr; break;
        case kRoleBHh: v.db_hh = ptr; break;
        case kRoleWHr: v.dw_hr = ptr; break;
        default: v.dln[spec.role - kRoleLn0] = ptr; break;
      }
    }
  }
  return views;
}

}  // namespace bind
}  // namespace rnnkit
