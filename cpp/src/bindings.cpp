// rnnkit._core: the pybind11 module. It checks arrays at the boundary, allocates outputs and each
// call's buffers (once per call, carved into named views), releases the GIL and runs the C++ core.
//
// The Python package (python/rnnkit) validates user input first and gives the friendlier messages;
// the checks here are the backstop for direct callers of _core: any array of the wrong dtype,
// layout or shape is refused with ValueError/TypeError, never read out of bounds.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/numpy.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "rnnkit/blas.h"
#include "rnnkit/buffer.h"
#include "rnnkit/layer.h"
#include "rnnkit/packed_gemm.h"
#include "rnnkit/stack.h"
#include "rnnkit/team.h"
#include "bind_common.h"

#ifdef RNNKIT_WITH_CUDA
#include "rnnkit_cuda.h"
#endif

#ifndef RNNKIT_VERSION
#define RNNKIT_VERSION "0+unknown"
#endif
#ifndef RNNKIT_ARCH
#define RNNKIT_ARCH "none"
#endif
#ifndef RNNKIT_CPU_FEATURES
#define RNNKIT_CPU_FEATURES ""
#endif

namespace py = pybind11;

namespace rnnkit {

std::string core_simd_info();      // build_info.cpp
std::string core_eigen_version();  // build_info.cpp
void register_network(py::module_& m);  // bind_network.cpp
void register_optim(py::module_& m);    // bind_optim.cpp

namespace {

using namespace bind;

// ---- the training cache ---------------------------------------------------------------------
struct Cache {
  std::variant<StackCache<float>, StackCache<double>> data;

  template <typename Fn>
  decltype(auto) visit(Fn&& fn) const { return std::visit(std::forward<Fn>(fn), data); }
  std::size_t nbytes() const {
    return visit([](const auto& c) {
      return static_cast<std::size_t>(c.block.size()) * sizeof(*c.block.data());
    });
  }
  std::string dtype() const { return data.index() == 0 ? "float32" : "float64"; }
  const StackConfig& cfg() const { return visit([](const auto& c) -> const StackConfig& { return c.cfg; }); }
  const LayerDims& dims() const { return visit([](const auto& c) -> const LayerDims& { return c.dims0; }); }
};

// ---- forward --------------------------------------------------------------------------------
template <typename S>
py::tuple forward_impl(const StackConfig& cfg, const py::list& params, const py::array& x,
                       const std::optional<py::array>& h0, const std::optional<py::array>& c0,
                       const std::optional<py::array>& lengths, bool training,
                       std::uint64_t dropout_seed) {
  if (x.ndim() != 3) throw_expected("x", "a 3-D array [T, N, C]", concat(x.ndim(), "-D"));
  const index_t T = x.shape(0), N = x.shape(1);
  if (T < 1) throw_expected("sequence length T", "T >= 1", T);
  if (N < 1) throw_expected("batch size N", "N >= 1", N);
  const index_t G = cell_info(cfg.cell).gates;
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  const index_t GD = cfg.groups();
  const index_t H = cfg.hidden_size, P = cfg.state_size();
  for (index_t l = 0; l < cfg.num_layers; ++l) {
    check_layer_dims(LayerDims{T, N, cfg.layer_input_size(l), H, P}, G);
  }
  const S* xp = in_ptr<S>(x, "x", {T, N, cfg.input_size});
  const S* h0p = in_ptr<S>(h0, "h0", {GD, N, P});
  if (c0 && !has_c) throw_expected("c0", concat("None (", mode_name(cfg.cell), " has no cell state)"), "an array");
  const S* c0p = in_ptr<S>(c0, "c0", {GD, N, H});
  const index_t* lp = nullptr;
  if (lengths) {
    check_array<index_t>(*lengths, "lengths", {N}, false);
    lp = static_cast<const index_t*>(lengths->data());
    for (index_t n = 0; n < N; ++n) {
      if (lp[n] < 1 || lp[n] > T) {
        throw_expected(concat("lengths[", n, "]"), concat("a length in [1, ", T, "]"), lp[n]);
      }
    }
  }
  const std::vector<LayerWeights<S>> w =
      group_views<S, LayerWeights<S>>(cfg, stack_param_specs(cfg), params, "params", false);

  const StackFootprint foot = stack_footprint(cfg, T, N, training, sizeof(S));
  const index_t outputs = checked_add(checked_mul(checked_mul(T, N, "output"), cfg.num_directions * P, "output"),
                                      checked_mul(GD, checked_mul(N, P + (has_c ? H : 0), "states"), "states"),
                                      "outputs");
  const index_t total = checked_add(outputs, checked_add(foot.cache, foot.forward_scratch, "forward"), "forward");
  check_fits_in_memory(checked_mul(total, sizeof(S), "forward bytes"), "a forward call");

  auto y = new_array<S>({T, N, cfg.num_directions * P});
  auto h_n = new_array<S>({GD, N, P});
  py::object c_n_obj = py::none();
  S* c_n = nullptr;
  if (has_c) {
    auto c_n_arr = new_array<S>({GD, N, H});
    c_n = c_n_arr.mutable_data();
    c_n_obj = c_n_arr;
  }
  std::optional<Cache> cache;
  if (training) cache.emplace(Cache{StackCache<S>{}});
  StackCache<S>* cp = training ? &std::get<StackCache<S>>(cache->data) : nullptr;
  S* yp = y.mutable_data();
  S* hnp = h_n.mutable_data();
  {
    py::gil_scoped_release release;
    stack_forward<S>(cfg, T, N, w, xp, h0p, c0p, lp, training, dropout_seed, yp, hnp, c_n, cp);
  }
  py::object cache_obj = py::none();
  if (cache) cache_obj = py::cast(std::move(*cache));
  return py::make_tuple(y, h_n, c_n_obj, cache_obj);
}

py::tuple forward(const StackConfig& cfg, const py::list& params, const py::array& x,
                  const std::optional<py::array>& h0, const std::optional<py::array>& c0,
                  const std::optional<py::array>& lengths, bool training, std::uint64_t dropout_seed) {
  check_stack_config(cfg);
  if (x.dtype().is(py::dtype::of<float>())) {
    return forward_impl<float>(cfg, params, x, h0, c0, lengths, training, dropout_seed);
  }
  if (x.dtype().is(py::dtype::of<double>())) {
    return forward_impl<double>(cfg, params, x, h0, c0, lengths, training, dropout_seed);
  }
  throw py::type_error(concat("x: expected dtype float32 or float64, got ", dtype_name(x.dtype())));
}

// ---- backward -------------------------------------------------------------------------------
template <typename S>
py::tuple backward_impl(const Cache& cache_obj, const std::optional<py::array>& dy,
                        const std::optional<py::array>& dh_n, const std::optional<py::array>& dc_n,
                        const py::list& grads, bool need_dx) {
  const StackCache<S>& cache = std::get<StackCache<S>>(cache_obj.data);
  const StackConfig& cfg = cache.cfg;
  const index_t T = cache.dims0.T, N = cache.dims0.N;
  const index_t GD = cfg.groups(), H = cfg.hidden_size, P = cfg.state_size();
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  const S* dyp = in_ptr<S>(dy, "dy", {T, N, cfg.num_directions * P});
  const S* dhnp = in_ptr<S>(dh_n, "dh_n", {GD, N, P});
  if (dc_n && !has_c) throw_expected("dc_n", concat("None (", mode_name(cfg.cell), " has no cell state)"), "an array");
  const S* dcnp = in_ptr<S>(dc_n, "dc_n", {GD, N, H});
  const std::vector<LayerGrads<S>> g =
      group_views<S, LayerGrads<S>>(cfg, stack_param_specs(cfg), grads, "grads", true);

  const StackFootprint foot = stack_footprint(cfg, T, N, true, sizeof(S));
  const index_t outputs = checked_add(need_dx ? checked_mul(checked_mul(T, N, "dx"), cfg.input_size, "dx") : 0,
                                      checked_mul(GD, checked_mul(N, P + (has_c ? H : 0), "states"), "states"),
                                      "outputs");
  check_fits_in_memory(checked_mul(checked_add(outputs, foot.backward_scratch, "backward"), sizeof(S), "backward bytes"),
                       "a backward call");

  py::object dx_obj = py::none();
  S* dxp = nullptr;
  if (need_dx) {
    auto dx = new_array<S>({T, N, cfg.input_size});
    dxp = dx.mutable_data();
    dx_obj = dx;
  }
  auto dh0 = new_array<S>({GD, N, P});
  S* dh0p = dh0.mutable_data();
  py::object dc0_obj = py::none();
  S* dc0p = nullptr;
  if (has_c) {
    auto dc0 = new_array<S>({GD, N, H});
    dc0p = dc0.mutable_data();
    dc0_obj = dc0;
  }
  {
    py::gil_scoped_release release;
    stack_backward<S>(cache, dyp, dhnp, dcnp, g, dxp, dh0p, dc0p);
  }
  return py::make_tuple(dx_obj, dh0, dc0_obj);
}

py::tuple backward(const Cache& cache, const std::optional<py::array>& dy,
                   const std::optional<py::array>& dh_n, const std::optional<py::array>& dc_n,
                   const py::list& grads, bool need_dx) {
  if (cache.data.index() == 0) return backward_impl<float>(cache, dy, dh_n, dc_n, grads, need_dx);
  return backward_impl<double>(cache, dy, dh_n, dc_n, grads, need_dx);
}

// ---- streaming step -------------------------------------------------------------------------
template <typename S>
py::tuple step_impl(const StackConfig& cfg, const py::list& params, const py::array& x,
                    const py::array& h, const std::optional<py::array>& c) {
  if (cfg.num_directions != 1) {
    throw_expected("layer", "a unidirectional layer (a step has no future for the reverse direction)",
                   "a bidirectional one");
  }
  if (x.ndim() != 2) throw_expected("x", "a 2-D array [N, input_size]", concat(x.ndim(), "-D"));
  const index_t N = x.shape(0), L = cfg.num_layers, P = cfg.state_size(), H = cfg.hidden_size;
  if (N < 1) throw_expected("batch size N", "N >= 1", N);
  const bool has_c = cell_info(cfg.cell).has_cell_state;
  const S* xp = in_ptr<S>(x, "x", {N, cfg.input_size});
  const S* hp = in_ptr<S>(h, "h", {L, N, P});
  if (has_c != c.has_value()) throw_expected("c", has_c ? "an array (LSTM cells)" : "None", c ? "an array" : "None");
  const S* cp = in_ptr<S>(c, "c", {L, N, H});
  const std::vector<LayerWeights<S>> w =
      group_views<S, LayerWeights<S>>(cfg, stack_param_specs(cfg), params, "params", false);
  auto y = new_array<S>({N, P});
  auto h_new = new_array<S>({L, N, P});
  py::object c_obj = py::none();
  S* c_new = nullptr;
  if (has_c) {
    auto arr = new_array<S>({L, N, H});
    c_new = arr.mutable_data();
    c_obj = arr;
  }
  S* yp = y.mutable_data();
  S* hnp = h_new.mutable_data();
  {
    py::gil_scoped_release release;
    stack_step<S>(cfg, N, w, xp, hp, cp, yp, hnp, c_new);
  }
  return py::make_tuple(y, h_new, c_obj);
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
  info["eigen"] = core_eigen_version();
  info["simd"] = core_simd_info();
  info["arch"] = RNNKIT_ARCH;
  info["cpu_features"] = RNNKIT_CPU_FEATURES;
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

namespace {

// The instruction-set extensions the core was compiled for (RNNKIT_CPU_FEATURES) that this CPU
// lacks, space-separated; empty when it has them all. This file is compiled for baseline x86-64,
// so the check itself runs anywhere.
std::string missing_cpu_features() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  struct Feature {
    const char* name;
    bool present;
  };
  const Feature table[] = {
      {"ssse3", !!__builtin_cpu_supports("ssse3")},         {"sse4.1", !!__builtin_cpu_supports("sse4.1")},
      {"sse4.2", !!__builtin_cpu_supports("sse4.2")},       {"popcnt", !!__builtin_cpu_supports("popcnt")},
      {"avx", !!__builtin_cpu_supports("avx")},             {"avx2", !!__builtin_cpu_supports("avx2")},
      {"fma", !!__builtin_cpu_supports("fma")},             {"bmi", !!__builtin_cpu_supports("bmi")},
      {"bmi2", !!__builtin_cpu_supports("bmi2")},           {"avx512f", !!__builtin_cpu_supports("avx512f")},
      {"avx512cd", !!__builtin_cpu_supports("avx512cd")},   {"avx512bw", !!__builtin_cpu_supports("avx512bw")},
      {"avx512dq", !!__builtin_cpu_supports("avx512dq")},   {"avx512vl", !!__builtin_cpu_supports("avx512vl")},
      {"avx512ifma", !!__builtin_cpu_supports("avx512ifma")}, {"avx512vbmi", !!__builtin_cpu_supports("avx512vbmi")},
      {"avx512vbmi2", !!__builtin_cpu_supports("avx512vbmi2")}, {"avx512vnni", !!__builtin_cpu_supports("avx512vnni")},
      {"avx512bitalg", !!__builtin_cpu_supports("avx512bitalg")},
      {"avx512vpopcntdq", !!__builtin_cpu_supports("avx512vpopcntdq")},
      {"avx512bf16", !!__builtin_cpu_supports("avx512bf16")}, {"gfni", !!__builtin_cpu_supports("gfni")},
      {"vpclmulqdq", !!__builtin_cpu_supports("vpclmulqdq")}, {"aes", !!__builtin_cpu_supports("aes")},
      {"pclmul", !!__builtin_cpu_supports("pclmul")},
  };
  std::string missing;
  std::string wanted = RNNKIT_CPU_FEATURES;
  std::size_t pos = 0;
  while (pos < wanted.size()) {
    const std::size_t end = std::min(wanted.find(' ', pos), wanted.size());
    const std::string name = wanted.substr(pos, end - pos);
    for (const Feature& f : table) {
      if (name == f.name && !f.present) missing += (missing.empty() ? "" : " ") + name;
    }
    pos = end + 1;
  }
  return missing;
#else
  return "";
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  using namespace rnnkit;
  if (const std::string missing = missing_cpu_features(); !missing.empty()) {
    // Plain std::string here: helpers shared with the core might be its -march copies.
    throw py::import_error(
        std::string("rnnkit was compiled for -march=") + RNNKIT_ARCH + " but this CPU lacks: " + missing +
        ". Reinstall it for this machine (pip install --force-reinstall --no-cache-dir rnnkit builds "
        "for the machine you run it on), or for any AVX2 machine with RNNKIT_ARCH=x86-64-v3, or for "
        "any x86-64 with RNNKIT_ARCH=x86-64.");
  }
  m.doc() = "rnnkit's compiled core: recurrent layer forward and BPTT on the CPU (and CUDA when built).";
  m.attr("__version__") = RNNKIT_VERSION;

  py::register_exception<OutOfMemory>(m, "OutOfMemoryError", PyExc_MemoryError);

  py::class_<StackConfig>(m, "StackConfig", "Configuration of a layer stack (see stack.h).")
      .def(py::init([](const std::string& mode, index_t input_size, index_t hidden_size,
                       index_t num_layers, bool bidirectional, index_t proj_size, bool bias,
                       double dropout) {
             StackConfig c;
             c.cell = parse_mode(mode);
             c.input_size = input_size;
             c.hidden_size = hidden_size;
             c.num_layers = num_layers;
             c.num_directions = bidirectional ? 2 : 1;
             c.proj_size = proj_size;
             c.bias = bias;
             c.dropout = dropout;
             check_stack_config(c);
             return c;
           }),
           py::arg("mode"), py::arg("input_size"), py::arg("hidden_size"), py::arg("num_layers") = 1,
           py::arg("bidirectional") = false, py::arg("proj_size") = 0, py::arg("bias") = true,
           py::arg("dropout") = 0.0)
      .def_property_readonly("mode", [](const StackConfig& c) { return mode_name(c.cell); })
      .def_readonly("input_size", &StackConfig::input_size)
      .def_readonly("hidden_size", &StackConfig::hidden_size)
      .def_readonly("num_layers", &StackConfig::num_layers)
      .def_readonly("num_directions", &StackConfig::num_directions)
      .def_readonly("proj_size", &StackConfig::proj_size)
      .def_readonly("bias", &StackConfig::bias)
      .def_readonly("dropout", &StackConfig::dropout)
      .def_property_readonly("has_cell_state", [](const StackConfig& c) { return cell_info(c.cell).has_cell_state; })
      .def_property_readonly("gates", [](const StackConfig& c) { return cell_info(c.cell).gates; })
      .def("param_specs", [](const StackConfig& c) {
             py::list out;
             for (const ParamSpec& s : stack_param_specs(c)) {
               py::tuple shape(s.shape.size());
               for (std::size_t i = 0; i < s.shape.size(); ++i) shape[i] = s.shape[i];
               out.append(py::make_tuple(s.name, shape));
             }
             return out;
           },
           "[(name, shape)] of every parameter, in PyTorch's state_dict order.");

  py::class_<Cache>(m, "Cache", "What a training forward keeps for backward (opaque).")
      .def_property_readonly("nbytes", &Cache::nbytes, "Bytes held by this cache.")
      .def_property_readonly("dtype", &Cache::dtype)
      .def_property_readonly("shape", [](const Cache& c) { return py::make_tuple(c.dims().T, c.dims().N); },
                             "(T, N) of the forward that made it.");

  m.def("forward", &forward, py::arg("config"), py::arg("params"), py::arg("x"), py::arg("h0"),
        py::arg("c0"), py::arg("lengths"), py::arg("training"), py::arg("dropout_seed"),
        R"doc(A stack of recurrent layers over a time-major sequence.

params: the arrays of config.param_specs(), in that order. x [T,N,C]; h0 [L*D,N,P] or None;
c0 [L*D,N,H] or None (LSTM cells); lengths int64 [N] or None. All C-contiguous, x's dtype
(float32 or float64). Returns (y [T,N,D*P], h_n, c_n or None, cache or None). The GIL is
released while it runs.)doc");

  m.def("step",
        [](const StackConfig& cfg, const py::list& params, const py::array& x, const py::array& h,
           const std::optional<py::array>& c) {
          if (x.dtype().is(py::dtype::of<float>())) return step_impl<float>(cfg, params, x, h, c);
          if (x.dtype().is(py::dtype::of<double>())) return step_impl<double>(cfg, params, x, h, c);
          throw py::type_error(concat("x: expected dtype float32 or float64, got ", dtype_name(x.dtype())));
        },
        py::arg("config"), py::arg("params"), py::arg("x"), py::arg("h"), py::arg("c"),
        "One timestep of a unidirectional stack: x [N,C], h [L,N,P], c [L,N,H] or None -> (y [N,P], h, c|None).");

  m.def("backward", &backward, py::arg("cache"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
        py::arg("grads"), py::arg("need_dx"),
        R"doc(BPTT through the forward that produced `cache`.

dy, dh_n, dc_n: gradients of the outputs or None. grads: arrays shaped like params, ACCUMULATED
into. Returns (dx or None, dh0, dc0 or None). The GIL is released while it runs.)doc");

  register_network(m);
  register_optim(m);

  m.def("_dropout_mask", [](std::uint64_t seed, index_t layer, index_t count, double p) {
        if (count < 0) throw_expected("count", ">= 0", count);
        auto out = new_array<double>({count});
        double* o = out.mutable_data();
        for (index_t i = 0; i < count; ++i) {
          o[i] = (p >= 1.0 || dropout_uniform(seed, layer, i) < p) ? 0.0 : 1.0 / (1.0 - p);
        }
        return out;
      }, py::arg("seed"), py::arg("layer"), py::arg("count"), py::arg("p"),
      "The dropout multipliers forward applies to layer `layer`'s flattened output (for tests).");

  // BLAS itself always runs single-threaded: rnnkit's own thread team splits the work
  // (team.h), which scales on the small per-step matrices where BLAS threads do not.
  set_blas_threads(1);
  m.def("set_num_threads", [](int n) { ThreadTeam::instance().set_default_size(n); }, py::arg("n"),
        "Threads rnnkit's loops may use (process-wide; default 1).");
  m.def("get_num_threads", [] { return ThreadTeam::instance().default_size(); });
  m.def("set_deterministic", [](bool on) { ThreadTeam::instance().set_deterministic(on); }, py::arg("on"),
        "Results identical for every thread count (process-wide; default off).");
  m.def("get_deterministic", [] { return ThreadTeam::instance().deterministic(); });
  m.def("_packed_gemm", [](py::array A, py::array B, bool transposed, double beta, py::array C, index_t cb, index_t ce) {
        // Test hook: C[:, cb:ce] = beta C + A B through the packed kernels (B given as B, or as B^T).
        if (!A.dtype().is(C.dtype()) || !B.dtype().is(C.dtype())) throw py::type_error("A, B, C: expected one dtype");
        auto run = [&](auto s) {
          using S = decltype(s);
          if (!packed_gemm_available<S>()) throw std::runtime_error("no packed kernel on this CPU");
          const index_t M = A.shape(0), K = A.shape(1), cols = transposed ? B.shape(0) : B.shape(1);
          check_array<S>(A, "A", {M, K}, false);
          check_array<S>(B, "B", transposed ? std::vector<index_t>{cols, K} : std::vector<index_t>{K, cols}, false);
          check_array<S>(C, "C", {M, cols}, true);
          if (cb < 0 || ce > cols || cb > ce || cb % packed_panel_width<S>() != 0) throw_expected("cb, ce", "a panel-aligned range", cb);
          Buffer<S> packed(packed_size<S>(K, cols), "packed B");
          pack_b<S>(static_cast<const S*>(B.data()), transposed ? K : cols, transposed, K, cols, 0, cols, packed.data());
          packed_gemm<S>(M, K, cols, cb, ce, static_cast<const S*>(A.data()), K, packed.data(), S(beta),
                         static_cast<S*>(C.mutable_data()), cols);
        };
        if (C.dtype().is(py::dtype::of<float>())) run(float{}); else run(double{});
      }, py::arg("A"), py::arg("B"), py::arg("transposed"), py::arg("beta"), py::arg("C"), py::arg("cb"), py::arg("ce"));
  m.def("_packed_vs_blas", [](index_t M, index_t K, index_t cols, int reps) {
        // Microbenchmark hook: seconds per call of the packed kernel (packed once) and of BLAS.
        Buffer<float> A(M * K, "A"), W(cols * K, "W"), C(M * cols, "C"), P(packed_size<float>(K, cols), "P");
        for (index_t i = 0; i < M * K; ++i) A.data()[i] = float((i * 7) % 13) * 0.01f;
        for (index_t i = 0; i < cols * K; ++i) W.data()[i] = float((i * 5) % 11) * 0.01f;
        C.zero();
        double packed_s = 0, blas_s = 0;
        {
          py::gil_scoped_release release;
          pack_b<float>(W.data(), K, true, K, cols, 0, cols, P.data());
          auto t0 = std::chrono::steady_clock::now();
          for (int r = 0; r < reps; ++r) packed_gemm<float>(M, K, cols, 0, cols, A.data(), K, P.data(), 1.0f, C.data(), cols);
          auto t1 = std::chrono::steady_clock::now();
          for (int r = 0; r < reps; ++r) gemm(Trans::kNo, Trans::kYes, M, cols, K, 1.0f, A.data(), K, W.data(), K, 1.0f, C.data(), cols);
          auto t2 = std::chrono::steady_clock::now();
          packed_s = std::chrono::duration<double>(t1 - t0).count() / reps;
          blas_s = std::chrono::duration<double>(t2 - t1).count() / reps;
        }
        return py::make_tuple(packed_s, blas_s);
      });
  m.def("_sgemm_gflops", [](index_t n, int reps) {
        // The BLAS ceiling rnnkit's GEMMs work against: GFLOP/s of an n^3 sgemm on this thread.
        Buffer<float> A(n * n, "A"), B(n * n, "B"), C(n * n, "C");
        for (index_t i = 0; i < n * n; ++i) {
          A.data()[i] = float(i % 7) * 0.1f;
          B.data()[i] = float(i % 5) * 0.1f;
        }
        double best = 1e30;
        {
          py::gil_scoped_release release;
          for (int r = 0; r < reps + 1; ++r) {
            auto t0 = std::chrono::steady_clock::now();
            gemm(Trans::kNo, Trans::kNo, n, n, n, 1.0f, A.data(), n, B.data(), n, 0.0f, C.data(), n);
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            if (r > 0) best = std::min(best, s);
          }
        }
        return 2.0 * double(n) * double(n) * double(n) / best / 1e9;
      }, py::arg("n"), py::arg("reps"));
  m.def("_packed_panel_width", [](const std::string& dtype) -> index_t {
        return dtype == "float64" ? packed_panel_width<double>() : packed_panel_width<float>();
      });
  m.def("_set_min_parallel_step_work", &set_min_parallel_step_work, py::arg("work"),
        "From how much per-step work (multiply-adds) a call uses the thread team (tests lower it).");
  m.def("blas_num_threads", &get_blas_threads, "Threads of rnnkit's OpenBLAS (always 1).");
  m.def("empty_cache", &pool_empty, "Returns the large buffers rnnkit keeps for reuse to the system.");
  m.def("cached_bytes", &pool_cached_bytes, "Bytes of large buffers kept for reuse.");
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
