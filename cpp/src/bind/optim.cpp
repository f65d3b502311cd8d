// Bindings of the optimizer updates and gradient clipping (optim.h): one call updates every
// parameter of a model, with the GIL released, on the backend that owns the arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "bind/common.h"
#include "bind/module.h"
#ifdef RNNKIT_WITH_CUDA
#include "bind/device_array.h"
#endif

namespace rnnkit {
namespace bind {
namespace {

#ifdef RNNKIT_WITH_CUDA
inline bool is_device_array(py::handle h) { return py::isinstance<DeviceArray>(h); }
#else
inline bool is_device_array(py::handle) { return false; }
#endif

// Where a list's arrays live: its first entry's device (every entry is checked against it).
Device list_device(const py::list& arrays) {
  return py::len(arrays) > 0 && is_device_array(arrays[0]) ? Device::kCuda : Device::kCpu;
}

std::string where(Device d) { return d == Device::kCpu ? "a numpy array (host memory)" : "a CUDA array"; }

// The arrays of a list, checked: dtype S, the shapes, on `device` (NumPy arrays: C order, writable
// if asked; CUDA arrays: rnnkit DeviceArrays).
template <typename S>
std::vector<S*> array_list(const py::list& arrays, const char* what, const std::vector<std::vector<index_t>>& shapes,
                           bool writable, Device device) {
  check_list_length(arrays, shapes.size(), what);
  std::vector<S*> out(shapes.size());
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    py::object item = arrays[i];
    const std::string name = concat(what, "[", i, "]");
    const Device d = is_device_array(item) ? Device::kCuda : Device::kCpu;
    if (d != device) throw py::type_error(concat(name, ": expected ", where(device), " like the others, got ", where(d)));
#ifdef RNNKIT_WITH_CUDA
    if (d == Device::kCuda) {
      const DeviceArray& a = item.cast<const DeviceArray&>();
      if (a.kind != kind_of<S>()) {
        throw py::type_error(concat(name, ": expected dtype ", kind_name(kind_of<S>()), ", got ", kind_name(a.kind)));
      }
      if (a.shape != shapes[i]) throw_expected(concat(name, " shape"), shape_string(shapes[i]), shape_string(a.shape));
      out[i] = static_cast<S*>(a.data);
      continue;
    }
#endif
    if (!py::isinstance<py::array>(item)) {
      throw py::type_error(concat(what, "[", i, "]: expected a numpy array"));
    }
    py::array a = item.cast<py::array>();
    check_array<S>(a, name, shapes[i], writable);
    out[i] = static_cast<S*>(const_cast<void*>(a.data()));
  }
  return out;
}

std::vector<std::vector<index_t>> shapes_of(const py::list& arrays, const char* what) {
  std::vector<std::vector<index_t>> shapes;
  for (std::size_t i = 0; i < py::len(arrays); ++i) {
    py::object item = arrays[i];
#ifdef RNNKIT_WITH_CUDA
    if (is_device_array(item)) {
      shapes.push_back(item.cast<const DeviceArray&>().shape);
      continue;
    }
#endif
    if (!py::isinstance<py::array>(item)) throw py::type_error(concat(what, "[", i, "]: expected a numpy array"));
    py::array a = item.cast<py::array>();
    shapes.emplace_back(a.shape(), a.shape() + a.ndim());
  }
  return shapes;
}

index_t count(const std::vector<index_t>& shape) {
  index_t n = 1;
  for (index_t v : shape) n *= v;
  return n;
}

// Calls fn(S{}, backend.ops<S>(), device) for the dtype S of a list's arrays (nothing for an empty
// list), with the operations of the backend that owns them.
template <typename Fn>
void by_list_dtype(const py::list& arrays, Fn&& fn) {
  if (py::len(arrays) == 0) return;
  py::object first = arrays[0];
  const Device device = list_device(arrays);
  const Backend& backend = backend_for(device);
#ifdef RNNKIT_WITH_CUDA
  if (device == Device::kCuda) {
    const Kind k = first.cast<const DeviceArray&>().kind;
    if (k == Kind::kF32) return fn(float{}, backend.ops<float>(), device);
    if (k == Kind::kF64) return fn(double{}, backend.ops<double>(), device);
    throw py::type_error("arrays: expected dtype float32 or float64, got int64");
  }
#endif
  if (!py::isinstance<py::array>(first)) throw py::type_error("expected a list of numpy arrays");
  const py::array a = first.cast<py::array>();
  by_dtype(a.dtype(), "arrays", [&](auto s) { fn(s, backend.ops<decltype(s)>(), device); });
}

}  // namespace

void register_optim(py::module_& m) {
  m.def("sgd_step",
        [](const py::list& params, const py::list& grads, const py::object& bufs, double lr, double momentum,
           double dampening, double weight_decay, bool nesterov, bool first_step) {
          const auto shapes = shapes_of(params, "params");
          by_list_dtype(params, [&](auto s, const auto& ops, Device dev) {
            using S = decltype(s);
            auto p = array_list<S>(params, "params", shapes, true, dev);
            auto g = array_list<S>(grads, "grads", shapes, false, dev);
            std::vector<S*> b(shapes.size(), nullptr);
            if (momentum != 0.0) b = array_list<S>(bufs.cast<py::list>(), "momentum_buffers", shapes, true, dev);
            SgdHyper h{lr, momentum, dampening, weight_decay, nesterov};
            py::gil_scoped_release release;
            for (std::size_t i = 0; i < shapes.size(); ++i) ops.sgd_update(p[i], g[i], b[i], count(shapes[i]), h, first_step);
          });
        },
        py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::arg("lr"), py::arg("momentum"),
        py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"), py::arg("first_step"));

  m.def("adam_step",
        [](const py::list& params, const py::list& grads, const py::list& exp_avgs, const py::list& exp_avg_sqs,
           double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled, index_t step) {
          const auto shapes = shapes_of(params, "params");
          by_list_dtype(params, [&](auto s, const auto& ops, Device dev) {
            using S = decltype(s);
            auto p = array_list<S>(params, "params", shapes, true, dev);
            auto g = array_list<S>(grads, "grads", shapes, false, dev);
            auto m1 = array_list<S>(exp_avgs, "exp_avg", shapes, true, dev);
            auto m2 = array_list<S>(exp_avg_sqs, "exp_avg_sq", shapes, true, dev);
            AdamHyper h{lr, beta1, beta2, eps, weight_decay, decoupled};
            py::gil_scoped_release release;
            for (std::size_t i = 0; i < shapes.size(); ++i) ops.adam_update(p[i], g[i], m1[i], m2[i], count(shapes[i]), h, step);
          });
        },
        py::arg("params"), py::arg("grads"), py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("lr"),
        py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"),
        py::arg("step"));

  m.def("rmsprop_step",
        [](const py::list& params, const py::list& grads, const py::list& square_avgs, const py::object& momentum_bufs,
           const py::object& grad_avgs, double lr, double alpha, double eps, double weight_decay, double momentum,
           bool centered) {
          const auto shapes = shapes_of(params, "params");
          by_list_dtype(params, [&](auto s, const auto& ops, Device dev) {
            using S = decltype(s);
            auto p = array_list<S>(params, "params", shapes, true, dev);
            auto g = array_list<S>(grads, "grads", shapes, false, dev);
            auto sq = array_list<S>(square_avgs, "square_avg", shapes, true, dev);
            std::vector<S*> mb(shapes.size(), nullptr), ga(shapes.size(), nullptr);
            if (momentum > 0.0) mb = array_list<S>(momentum_bufs.cast<py::list>(), "momentum_buffer", shapes, true, dev);
            if (centered) ga = array_list<S>(grad_avgs.cast<py::list>(), "grad_avg", shapes, true, dev);
            RmspropHyper h{lr, alpha, eps, weight_decay, momentum, centered};
            py::gil_scoped_release release;
            for (std::size_t i = 0; i < shapes.size(); ++i) {
              ops.rmsprop_update(p[i], g[i], sq[i], mb[i], ga[i], count(shapes[i]), h);
            }
          });
        },
        py::arg("params"), py::arg("grads"), py::arg("square_avg"), py::arg("momentum_buffer"), py::arg("grad_avg"),
        py::arg("lr"), py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"),
        py::arg("centered"));

  m.def("sum_of_squares",
        [](const py::list& arrays) {
          double total = 0.0;
          const auto shapes = shapes_of(arrays, "arrays");
          by_list_dtype(arrays, [&](auto s, const auto& ops, Device dev) {
            using S = decltype(s);
            auto a = array_list<S>(arrays, "arrays", shapes, false, dev);
            py::gil_scoped_release release;
            for (std::size_t i = 0; i < shapes.size(); ++i) total += ops.sum_of_squares(a[i], count(shapes[i]));
          });
          return total;
        },
        py::arg("arrays"), "sum of squares of every element of every array (in double).");

  m.def("scale_arrays",
        [](const py::list& arrays, double factor) {
          const auto shapes = shapes_of(arrays, "arrays");
          by_list_dtype(arrays, [&](auto s, const auto& ops, Device dev) {
            using S = decltype(s);
            auto a = array_list<S>(arrays, "arrays", shapes, true, dev);
            for (std::size_t i = 0; i < shapes.size(); ++i) ops.scale(a[i], count(shapes[i]), S(factor));
          });
        },
        py::arg("arrays"), py::arg("factor"));

  m.def("clamp_arrays",
        [](const py::list& arrays, double limit) {
          const auto shapes = shapes_of(arrays, "arrays");
          by_list_dtype(arrays, [&](auto s, const auto& ops, Device dev) {
            using S = decltype(s);
            auto a = array_list<S>(arrays, "arrays", shapes, true, dev);
            for (std::size_t i = 0; i < shapes.size(); ++i) ops.clamp(a[i], count(shapes[i]), S(limit));
          });
        },
        py::arg("arrays"), py::arg("limit"));
}

}  // namespace bind
}  // namespace rnnkit
