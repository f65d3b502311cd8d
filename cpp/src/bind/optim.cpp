// Bindings of the optimizer updates and gradient clipping (optim.h): one call updates every
// parameter of a model, with the GIL released, on the backend that owns the arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <vector>

#include "bind/common.h"
#include "bind/module.h"

namespace rnnkit {
namespace bind {
namespace {

// The arrays of a list, checked: same dtype S as `like`, same shapes, C order, writable if asked.
template <typename S>
std::vector<S*> array_list(const py::list& arrays, const char* what, const std::vector<std::vector<index_t>>& shapes,
                           bool writable) {
  check_list_length(arrays, shapes.size(), what);
  std::vector<S*> out(shapes.size());
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    py::object item = arrays[i];
    if (!py::isinstance<py::array>(item)) {
      throw py::type_error(concat(what, "[", i, "]: expected a numpy array"));
    }
    py::array a = item.cast<py::array>();
    check_array<S>(a, concat(what, "[", i, "]"), shapes[i], writable);
    out[i] = static_cast<S*>(const_cast<void*>(a.data()));
  }
  return out;
}

std::vector<std::vector<index_t>> shapes_of(const py::list& arrays, const char* what) {
  std::vector<std::vector<index_t>> shapes;
  for (std::size_t i = 0; i < py::len(arrays); ++i) {
    py::object item = arrays[i];
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

// Calls fn(S{}, backend.ops<S>()) for the dtype S of a list's arrays (nothing for an empty list),
// with the operations of the backend that owns them.
template <typename Fn>
void by_list_dtype(const py::list& arrays, Fn&& fn) {
  if (py::len(arrays) == 0) return;
  py::object first = arrays[0];
  if (!py::isinstance<py::array>(first)) throw py::type_error("expected a list of numpy arrays");
  const py::array a = first.cast<py::array>();
  const Backend& backend = backend_for(device_of(a));
  by_dtype(a.dtype(), "arrays", [&](auto s) { fn(s, backend.ops<decltype(s)>()); });
}

}  // namespace

void register_optim(py::module_& m) {
  m.def("sgd_step",
        [](const py::list& params, const py::list& grads, const py::object& bufs, double lr, double momentum,
           double dampening, double weight_decay, bool nesterov, bool first_step) {
          const auto shapes = shapes_of(params, "params");
          by_list_dtype(params, [&](auto s, const auto& ops) {
            using S = decltype(s);
            auto p = array_list<S>(params, "params", shapes, true);
            auto g = array_list<S>(grads, "grads", shapes, false);
            std::vector<S*> b(shapes.size(), nullptr);
            if (momentum != 0.0) b = array_list<S>(bufs.cast<py::list>(), "momentum_buffers", shapes, true);
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
          by_list_dtype(params, [&](auto s, const auto& ops) {
            using S = decltype(s);
            auto p = array_list<S>(params, "params", shapes, true);
            auto g = array_list<S>(grads, "grads", shapes, false);
            auto m1 = array_list<S>(exp_avgs, "exp_avg", shapes, true);
            auto m2 = array_list<S>(exp_avg_sqs, "exp_avg_sq", shapes, true);
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
          by_list_dtype(params, [&](auto s, const auto& ops) {
            using S = decltype(s);
            auto p = array_list<S>(params, "params", shapes, true);
            auto g = array_list<S>(grads, "grads", shapes, false);
            auto sq = array_list<S>(square_avgs, "square_avg", shapes, true);
            std::vector<S*> mb(shapes.size(), nullptr), ga(shapes.size(), nullptr);
            if (momentum > 0.0) mb = array_list<S>(momentum_bufs.cast<py::list>(), "momentum_buffer", shapes, true);
            if (centered) ga = array_list<S>(grad_avgs.cast<py::list>(), "grad_avg", shapes, true);
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
          by_list_dtype(arrays, [&](auto s, const auto& ops) {
            using S = decltype(s);
            auto a = array_list<S>(arrays, "arrays", shapes, false);
            py::gil_scoped_release release;
            for (std::size_t i = 0; i < shapes.size(); ++i) total += ops.sum_of_squares(a[i], count(shapes[i]));
          });
          return total;
        },
        py::arg("arrays"), "sum of squares of every element of every array (in double).");

  m.def("scale_arrays",
        [](const py::list& arrays, double factor) {
          const auto shapes = shapes_of(arrays, "arrays");
          by_list_dtype(arrays, [&](auto s, const auto& ops) {
            using S = decltype(s);
            auto a = array_list<S>(arrays, "arrays", shapes, true);
            for (std::size_t i = 0; i < shapes.size(); ++i) ops.scale(a[i], count(shapes[i]), S(factor));
          });
        },
        py::arg("arrays"), py::arg("factor"));

  m.def("clamp_arrays",
        [](const py::list& arrays, double limit) {
          const auto shapes = shapes_of(arrays, "arrays");
          by_list_dtype(arrays, [&](auto s, const auto& ops) {
            using S = decltype(s);
            auto a = array_list<S>(arrays, "arrays", shapes, true);
            for (std::size_t i = 0; i < shapes.size(); ++i) ops.clamp(a[i], count(shapes[i]), S(limit));
          });
        },
        py::arg("arrays"), py::arg("limit"));
}

}  // namespace bind
}  // namespace rnnkit
