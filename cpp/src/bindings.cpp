// rnnkit._core: the pybind11 module. It checks arrays at the boundary, allocates outputs and each
// call's buffers (once per call, carved into named views), releases the GIL and runs the C++ core.
//
// The Python package (python/rnnkit) validates user input first and gives the friendlier messages;
// the checks here are the backstop for direct callers of _core: any array of the wrong dtype,
// layout or shape is refused with ValueError/TypeError, never read out of bounds.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/numpy.h>

#include <Eigen/Core>

#include <array>
#include <cstring>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "rnnkit/blas.h"
#include "rnnkit/buffer.h"
#include "rnnkit/layer.h"

#ifdef RNNKIT_WITH_CUDA
#include "rnnkit_cuda.h"
#endif

#ifndef RNNKIT_VERSION
#define RNNKIT_VERSION "0+unknown"
#endif

namespace py = pybind11;

namespace rnnkit {
namespace {

// ---- cell names ---------------------------------------------------------------------------
// PyTorch's mode strings, so the Python layer can pass its `mode` through unchanged.
CellKind parse_mode(const std::string& mode) {
  if (mode == "RNN_TANH") return CellKind::kElmanTanh;
  if (mode == "RNN_RELU") return CellKind::kElmanRelu;
  throw_expected("mode", "one of 'RNN_TANH', 'RNN_RELU'", concat("'", mode, "'"));
}

// ---- array checks ---------------------------------------------------------------------------
std::string shape_string(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

std::string shape_string(const std::vector<index_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

template <typename S>
void check_array(const py::array& a, const char* name, const std::vector<index_t>& shape,
                 bool writable) {
  if (!a.dtype().is(py::dtype::of<S>())) {
    throw py::type_error(concat(name, ": expected dtype ", py::str(py::dtype::of<S>()).cast<std::string>(),
                                ", got ", py::str(a.dtype()).cast<std::string>()));
  }
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (std::size_t i = 0; same && i < shape.size(); ++i) same = a.shape(i) == shape[i];
  if (!same) throw_expected(concat(name, " shape"), shape_string(shape), shape_string(a));
  if (!(a.flags() & py::array::c_style)) {
    throw_expected(name, "a C-contiguous array", "a non-contiguous array");
  }
  if (writable && !a.writeable()) throw_expected(name, "a writable array", "a read-only array");
}

template <typename S>
const S* in_ptr(const py::array& a, const char* name, const std::vector<index_t>& shape) {
  check_array<S>(a, name, shape, false);
  return static_cast<const S*>(a.data());
}

template <typename S>
const S* in_ptr(const std::optional<py::array>& a, const char* name,
                const std::vector<index_t>& shape) {
  return a ? in_ptr<S>(*a, name, shape) : nullptr;
}

template <typename S>
S* inout_ptr(py::array& a, const char* name, const std::vector<index_t>& shape) {
  check_array<S>(a, name, shape, true);
  return static_cast<S*>(a.mutable_data());
}

template <typename S>
S* inout_ptr(std::optional<py::array>& a, const char* name, const std::vector<index_t>& shape) {
  return a ? inout_ptr<S>(*a, name, shape) : nullptr;
}

template <typename S>
py::array_t<S> new_array(const std::vector<index_t>& shape) {
  std::vector<py::ssize_t> dims(shape.begin(), shape.end());
  return py::array_t<S>(dims);
}

// ---- the training cache ---------------------------------------------------------------------
// What a training forward keeps for backward, in one allocation: copies of the input and of the
// weights (so later in-place changes by the caller cannot silently corrupt the gradients), every
// state h_0..h_T, and the gate buffer for cells that need it.
template <typename S>
struct CacheData {
  Buffer<S> block;
  S* x = nullptr;      // [T,N,C]
  S* w_ih = nullptr;   // [GH,C]
  S* w_hh = nullptr;   // [GH,H]
  S* h_seq = nullptr;  // [T+1,N,H]
  S* gates = nullptr;  // [T,N,GH] or null
};

struct Cache {
  CellKind cell = CellKind::kElmanTanh;
  LayerDims dims;
  bool has_bias = false;
  std::variant<CacheData<float>, CacheData<double>> data;

  std::size_t nbytes() const {
    return std::visit(
        [](const auto& d) {
          using S = std::remove_pointer_t<decltype(d.x)>;
          return static_cast<std::size_t>(d.block.size()) * sizeof(S);
        },
        data);
  }
  std::string dtype() const { return data.index() == 0 ? "float32" : "float64"; }
};

// Elements of one call's allocations, from LayerSizes: the training cache (kept until backward)
// and the forward scratch (freed when the call returns).
struct ForwardPlan {
  bool keep_gates = false;
  index_t cache = 0;
  index_t scratch = 0;
};

ForwardPlan plan_forward(CellKind cell, const LayerSizes& sz, bool training) {
  ForwardPlan plan;
  plan.keep_gates = training && cell_caches_gates(cell);
  if (training) {
    for (index_t n : {sz.x, sz.w_ih, sz.w_hh, sz.h_seq, plan.keep_gates ? sz.gates : index_t(0)}) {
      plan.cache = checked_add(plan.cache, n, "training cache");
    }
  }
  // bias, plus the gate buffer unless the cache keeps it, plus the states in inference.
  plan.scratch = sz.gate_width;
  if (!plan.keep_gates) plan.scratch = checked_add(plan.scratch, sz.gates, "gate buffer");
  if (!training) plan.scratch = checked_add(plan.scratch, sz.h_seq, "state buffer");
  return plan;
}

template <typename S>
CacheData<S> make_cache_data(const LayerSizes& sz, const ForwardPlan& plan) {
  CacheData<S> c;
  c.block.allocate(plan.cache, "the training cache");
  S* p = c.block.data();
  c.x = p;        p += sz.x;
  c.w_ih = p;     p += sz.w_ih;
  c.w_hh = p;     p += sz.w_hh;
  c.h_seq = p;    p += sz.h_seq;
  c.gates = plan.keep_gates ? p : nullptr;
  return c;
}

template <typename S>
void copy_into(S* dst, const S* src, index_t n) {
  std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(S));
}

// ---- forward --------------------------------------------------------------------------------
template <typename S>
py::tuple forward_impl(CellKind cell, const py::array& x, const std::optional<py::array>& h0,
                       const py::array& w_ih, const py::array& w_hh,
                       const std::optional<py::array>& b_ih, const std::optional<py::array>& b_hh,
                       bool training) {
  if (x.ndim() != 3) throw_expected("x", "a 3-D array [T, N, C]", concat(x.ndim(), "-D"));
  if (w_hh.ndim() != 2) throw_expected("w_hh", "a 2-D array [G*H, H]", concat(w_hh.ndim(), "-D"));
  if (b_ih.has_value() != b_hh.has_value()) {
    throw_expected("b_ih, b_hh", "both arrays or both None", "only one of them");
  }
  LayerDims d{x.shape(0), x.shape(1), x.shape(2), w_hh.shape(1)};
  const index_t G = cell_gates(cell);
  check_layer_dims(d, G);
  const LayerSizes sz = layer_sizes(cell, d, training);
  const index_t GH = sz.gate_width;

  LayerWeights<S> w;
  const S* xp = in_ptr<S>(x, "x", {d.T, d.N, d.C});
  w.w_ih = in_ptr<S>(w_ih, "w_ih", {GH, d.C});
  w.w_hh = in_ptr<S>(w_hh, "w_hh", {GH, d.H});
  w.b_ih = in_ptr<S>(b_ih, "b_ih", {GH});
  w.b_hh = in_ptr<S>(b_hh, "b_hh", {GH});
  const S* h0p = in_ptr<S>(h0, "h0", {d.N, d.H});

  const ForwardPlan plan = plan_forward(cell, sz, training);
  index_t total = checked_add(checked_add(sz.y, sz.state, "outputs"),
                              checked_add(plan.cache, plan.scratch, "buffers"), "forward");
  check_fits_in_memory(checked_mul(total, sizeof(S), "forward bytes"), "a forward call");

  auto y = new_array<S>({d.T, d.N, d.H});
  auto h_n = new_array<S>({d.N, d.H});
  S* yp = y.mutable_data();
  S* hnp = h_n.mutable_data();

  std::optional<Cache> cache;
  ForwardBuffers<S> buf;
  if (training) {
    cache.emplace(Cache{cell, d, w.b_ih != nullptr, make_cache_data<S>(sz, plan)});
    auto& cd = std::get<CacheData<S>>(cache->data);
    buf.h_seq = cd.h_seq;
    buf.gates = cd.gates;
  }
  Buffer<S> scratch(plan.scratch, "forward scratch");
  {
    S* p = scratch.data();
    buf.bias = p;
    p += sz.gate_width;
    if (buf.gates == nullptr) { buf.gates = p; p += sz.gates; }
    if (buf.h_seq == nullptr) { buf.h_seq = p; p += sz.h_seq; }
    assert(p == scratch.data() + plan.scratch);
  }

  {
    py::gil_scoped_release release;
    if (cache) {
      auto& cd = std::get<CacheData<S>>(cache->data);
      copy_into(cd.x, xp, sz.x);
      copy_into(cd.w_ih, w.w_ih, sz.w_ih);
      copy_into(cd.w_hh, w.w_hh, sz.w_hh);
      // Run on the copies: they are what backward will differentiate.
      xp = cd.x;
      w.w_ih = cd.w_ih;
      w.w_hh = cd.w_hh;
    }
    layer_forward<S>(cell, d, w, xp, h0p, yp, hnp, training, buf);
  }
  py::object cache_obj = py::none();
  if (cache) cache_obj = py::cast(std::move(*cache));
  return py::make_tuple(y, h_n, cache_obj);
}

py::tuple forward(const std::string& mode, const py::array& x, const std::optional<py::array>& h0,
                  const py::array& w_ih, const py::array& w_hh,
                  const std::optional<py::array>& b_ih, const std::optional<py::array>& b_hh,
                  bool training) {
  const CellKind cell = parse_mode(mode);
  if (x.dtype().is(py::dtype::of<float>())) {
    return forward_impl<float>(cell, x, h0, w_ih, w_hh, b_ih, b_hh, training);
  }
  if (x.dtype().is(py::dtype::of<double>())) {
    return forward_impl<double>(cell, x, h0, w_ih, w_hh, b_ih, b_hh, training);
  }
  throw py::type_error(concat("x: expected dtype float32 or float64, got ",
                              py::str(x.dtype()).cast<std::string>()));
}

// ---- backward -------------------------------------------------------------------------------
template <typename S>
py::tuple backward_impl(const Cache& cache, const std::optional<py::array>& dy,
                        const std::optional<py::array>& dh_n, py::array& dw_ih, py::array& dw_hh,
                        std::optional<py::array>& db_ih, std::optional<py::array>& db_hh,
                        bool need_dx) {
  const LayerDims& d = cache.dims;
  const auto& cd = std::get<CacheData<S>>(cache.data);
  const LayerSizes sz = layer_sizes(cache.cell, d, true);
  const index_t GH = sz.gate_width;
  if (db_ih.has_value() != cache.has_bias || db_hh.has_value() != cache.has_bias) {
    throw_expected("db_ih, db_hh", cache.has_bias ? "arrays (the forward had biases)"
                                                  : "None (the forward had no biases)",
                   "otherwise");
  }

  const S* dyp = in_ptr<S>(dy, "dy", {d.T, d.N, d.H});
  const S* dhnp = in_ptr<S>(dh_n, "dh_n", {d.N, d.H});
  LayerGrads<S> g;
  g.dw_ih = inout_ptr<S>(dw_ih, "dw_ih", {GH, d.C});
  g.dw_hh = inout_ptr<S>(dw_hh, "dw_hh", {GH, d.H});
  g.db_ih = inout_ptr<S>(db_ih, "db_ih", {GH});
  g.db_hh = inout_ptr<S>(db_hh, "db_hh", {GH});

  const index_t scratch_elems =
      checked_add(sz.dgates, checked_mul(2, sz.state, "state grads"), "backward scratch");
  const index_t total = checked_add(checked_add(need_dx ? sz.x : 0, sz.state, "outputs"),
                                    scratch_elems, "backward");
  check_fits_in_memory(checked_mul(total, sizeof(S), "backward bytes"), "a backward call");

  py::object dx_obj = py::none();
  S* dxp = nullptr;
  if (need_dx) {
    auto dx = new_array<S>({d.T, d.N, d.C});
    dxp = dx.mutable_data();
    dx_obj = dx;
  }
  auto dh0 = new_array<S>({d.N, d.H});
  S* dh0p = dh0.mutable_data();

  Buffer<S> scratch(scratch_elems, "backward scratch");
  BackwardBuffers<S> buf;
  {
    S* p = scratch.data();
    buf.dgates = p;  p += sz.dgates;
    buf.dh_a = p;    p += sz.state;
    buf.dh_b = p;
  }
  LayerWeights<S> w;
  w.w_ih = cd.w_ih;
  w.w_hh = cd.w_hh;
  {
    py::gil_scoped_release release;
    layer_backward<S>(cache.cell, d, w, cd.x, cd.h_seq, cd.gates, dyp, dhnp, g, dxp, dh0p, buf);
  }
  return py::make_tuple(dx_obj, dh0);
}

py::tuple backward(const Cache& cache, const std::optional<py::array>& dy,
                   const std::optional<py::array>& dh_n, py::array dw_ih, py::array dw_hh,
                   std::optional<py::array> db_ih, std::optional<py::array> db_hh, bool need_dx) {
  if (cache.data.index() == 0) {
    return backward_impl<float>(cache, dy, dh_n, dw_ih, dw_hh, db_ih, db_hh, need_dx);
  }
  return backward_impl<double>(cache, dy, dh_n, dw_ih, dw_hh, db_ih, db_hh, need_dx);
}

// ---- build information ----------------------------------------------------------------------
py::tuple cuda_status() {
#ifdef RNNKIT_WITH_CUDA
  const cuda::Status s = cuda::status();
  return py::make_tuple(s.available, s.reason);
#else
  return py::make_tuple(false, std::string("rnnkit was built without CUDA "
                                           "(reinstall with RNNKIT_CUDA=1 to build the GPU backend)"));
#endif
}

py::dict build_info() {
  py::dict info;
  info["version"] = RNNKIT_VERSION;
#if defined(__clang__)
  info["compiler"] = concat("clang ", __clang_major__, ".", __clang_minor__, ".", __clang_patchlevel__);
#elif defined(__GNUC__)
  info["compiler"] = concat("gcc ", __GNUC__, ".", __GNUC_MINOR__, ".", __GNUC_PATCHLEVEL__);
#else
  info["compiler"] = "unknown";
#endif
#ifdef NDEBUG
  info["assertions"] = false;
#else
  info["assertions"] = true;
#endif
  info["eigen"] = concat(EIGEN_WORLD_VERSION, ".", EIGEN_MAJOR_VERSION, ".", EIGEN_MINOR_VERSION);
  info["simd"] = std::string(Eigen::SimdInstructionSetsInUse());
  info["blas"] = blas_info();
#ifdef RNNKIT_WITH_CUDA
  info["cuda_built"] = true;
#else
  info["cuda_built"] = false;
#endif
  return info;
}

}  // namespace
}  // namespace rnnkit

PYBIND11_MODULE(_core, m) {
  using namespace rnnkit;
  m.doc() = "rnnkit's compiled core: recurrent layer forward and BPTT on the CPU (and CUDA when built).";
  m.attr("__version__") = RNNKIT_VERSION;

  py::register_exception<OutOfMemory>(m, "OutOfMemoryError", PyExc_MemoryError);

  py::class_<Cache>(m, "Cache", "What a training forward keeps for backward (opaque).")
      .def_property_readonly("nbytes", &Cache::nbytes, "Bytes held by this cache.")
      .def_property_readonly("dtype", &Cache::dtype)
      .def_property_readonly("shape", [](const Cache& c) {
        return py::make_tuple(c.dims.T, c.dims.N, c.dims.C, c.dims.H);
      }, "(T, N, C, H) of the forward that made it.");

  m.def("forward", &forward, py::arg("mode"), py::arg("x"), py::arg("h0"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("training"),
        R"doc(One recurrent layer, one direction, time-major.

x [T,N,C], h0 [N,H] or None, w_ih [G*H,C], w_hh [G*H,H], b_ih/b_hh [G*H] or both None; all
C-contiguous with x's dtype (float32 or float64). Returns (y [T,N,H], h_n [N,H], cache), where
cache is None unless training. The GIL is released while it runs.)doc");

  m.def("backward", &backward, py::arg("cache"), py::arg("dy"), py::arg("dh_n"), py::arg("dw_ih"),
        py::arg("dw_hh"), py::arg("db_ih"), py::arg("db_hh"), py::arg("need_dx"),
        R"doc(BPTT through the forward that produced `cache`.

dy [T,N,H] or None, dh_n [N,H] or None. The weight and bias gradients are ACCUMULATED into dw_ih,
dw_hh, db_ih, db_hh (C-contiguous, writable, the cache's dtype). Returns (dx [T,N,C] or None when
need_dx is False, dh0 [N,H]). The GIL is released while it runs.)doc");

  m.def("set_num_threads", &set_blas_threads, py::arg("n"),
        "Threads for rnnkit's BLAS (process-wide; default 1).");
  m.def("get_num_threads", &get_blas_threads);
  m.def("build_info", &build_info, "Compiler, Eigen, SIMD, BLAS and CUDA build details.");
  m.def("cuda_status", &cuda_status,
        "(available, reason): whether the CUDA backend can run here, and why not.");
#ifdef RNNKIT_WITH_CUDA
  m.def("cuda_selftest_axpy", [](float a, const std::vector<float>& x, const std::vector<float>& y) {
        py::gil_scoped_release release;
        return cuda::selftest_axpy(a, x, y);
      }, py::arg("a"), py::arg("x"), py::arg("y"),
      "a*x + y computed by a CUDA kernel (a self-test of the CUDA build).");
#endif
}
