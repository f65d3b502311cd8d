// Hooks for tests and benchmarks, not API: the dropout masks forward applies, the packed per-step
// GEMM against NumPy and against BLAS, the single-thread sgemm rate, and the threshold from which
// a call uses the thread team. Their names start with an underscore.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bind/common.h"
#include "bind/module.h"
#include "cpu/bf16_gemm.h"
#include "cpu/blas.h"
#include "cpu/buffer.h"
#include "cpu/packed_gemm.h"
#include "cpu/peak_probe.h"
#include "cpu/stack.h"

namespace rnnkit {
namespace bind {

void register_test_hooks(py::module_& m) {
  using namespace cpu;
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

  m.def("_packed_gemm", [](py::array A, py::array B, bool transposed, double beta, py::array C, index_t cb, index_t ce) {
        // C[:, cb:ce] = beta C + A B through the packed kernels (B given as B, or as B^T).
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
        if (is_dtype<float>(C.dtype())) run(float{}); else run(double{});
      }, py::arg("A"), py::arg("B"), py::arg("transposed"), py::arg("beta"), py::arg("C"), py::arg("cb"), py::arg("ce"));

  m.def("_row_gemm", [](py::array A, py::array W, double beta, py::array C, index_t j0, index_t j1, bool descending,
                        std::optional<py::array> A2, std::optional<py::array> W2) {
        // C[:, j0:j1] = beta C + A W^T (+ A2 W2^T as one sum) through row_gemm, float32.
        if (!row_gemm_available()) throw std::runtime_error("no row kernel on this CPU");
        const index_t M = A.shape(0), K = A.shape(1), rows = W.shape(0);
        check_array<float>(A, "A", {M, K}, false);
        check_array<float>(W, "W", {rows, K}, false);
        check_array<float>(C, "C", {M, rows}, true);
        if (j0 < 0 || j1 > rows || j0 > j1) throw_expected("j0, j1", concat("a range within [0, ", rows, "]"), j0);
        RowProduct second;
        if (A2 && W2) {
          const index_t K2 = A2->shape(1);
          check_array<float>(*A2, "A2", {M, K2}, false);
          check_array<float>(*W2, "W2", {rows, K2}, false);
          second = {K2, static_cast<const float*>(A2->data()), K2, static_cast<const float*>(W2->data()), K2};
        }
        row_gemm(M, RowProduct{K, static_cast<const float*>(A.data()), K, static_cast<const float*>(W.data()), K},
                 second, j0, j1, static_cast<float>(beta), static_cast<float*>(C.mutable_data()), rows, descending);
      }, py::arg("A"), py::arg("W"), py::arg("beta"), py::arg("C"), py::arg("j0"), py::arg("j1"),
      py::arg("descending"), py::arg("A2") = py::none(), py::arg("W2") = py::none());
  m.def("_row_gemm_kernels", &row_gemm_kernel_names, "The row kernels this CPU runs, the default first.");
  m.def("_set_row_gemm_kernel", &set_row_gemm_kernel, py::arg("name"),
        "Which row kernel runs ('auto': the default); for tests.");

  m.def("_packed_vs_blas", [](index_t M, index_t K, index_t cols, int reps) {
        // Seconds per call of the packed kernel (packed once) and of BLAS.
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

  m.def("_fma_peak_gflops", [](double seconds) {
        cpu::PeakProbe p;
        {
          py::gil_scoped_release release;
          p = cpu::fp32_fma_peak(seconds);
        }
        return py::make_tuple(p.gflops, p.isa);
      }, py::arg("seconds"),
      "The core's fp32 FMA peak: (GFLOP/s, ISA probed), (0.0, '') without AVX2/AVX-512 (bench/goals.py).");
  m.def("_bf16_dot_peak_gflops", [](double seconds) {
        cpu::PeakProbe p;
        {
          py::gil_scoped_release release;
          p = cpu::bf16_dot_peak(seconds);
        }
        return py::make_tuple(p.gflops, p.isa);
      }, py::arg("seconds"),
      "The core's AVX512_BF16 dot-product peak: (GFLOP/s, ISA), (0.0, '') without it (bench/goals.py).");
  m.def("_gemm_bf16", [](py::array_t<float, py::array::c_style | py::array::forcecast> A, bool trans_a,
                        py::array_t<float, py::array::c_style | py::array::forcecast> B, bool trans_b, double beta,
                        py::array_t<float> C) {
        // C = op(A) op(B) + beta C at bf16 input precision (C float32 [m, n], C-contiguous, written in place).
        const auto [m, n, k] = check_gemm_arrays(A, trans_a, B, trans_b, C);
        if (!(C.flags() & py::array::c_style) || !C.writeable()) throw_expected("C", "a writable C-contiguous float32 array", "another");
        gemm_bf16(trans_a ? Trans::kYes : Trans::kNo, trans_b ? Trans::kYes : Trans::kNo, m, n, k, A.data(), A.shape(1),
                  B.data(), B.shape(1), static_cast<float>(beta), C.mutable_data(), n);
      }, py::arg("A"), py::arg("trans_a"), py::arg("B"), py::arg("trans_b"), py::arg("beta"), py::arg("C"),
      "C = op(A) op(B) + beta C through precision='bfloat16''s GEMM (for tests).");
  m.def("_set_bf16_kernel", &set_bf16_kernel, py::arg("name"),
        "Selects the bfloat16 GEMM kernel: 'auto' or one of _bf16_kernels() (tests, benchmarks).");
  m.def("_bf16_gemm_seconds", [](index_t m, index_t n, index_t k, int reps) {
        // Seconds per call of each part of a bf16 GEMM C[m,n] = A[m,k] B^T (B stored [n,k]) on
        // random data: (convert A, pack B, the packed kernel), for tuning the kernels.
        if (m < 1 || n < 1 || k < 1 || reps < 1) throw_expected("m, n, k, reps", ">= 1", "less");
        std::vector<float> a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(n * k)), c(static_cast<std::size_t>(m * n));
        for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
        for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>((i * 40503u) % 1000) * 1e-3f - 0.5f;
        std::vector<bf16_t> a16(static_cast<std::size_t>(bf16_padded_rows(m) * bf16_row_length(k)));
        std::vector<bf16_t> b16(static_cast<std::size_t>(bf16_packed_size(k, n)));
        using clock = std::chrono::steady_clock;
        auto time = [&](auto&& fn) {
          fn();
          const auto t0 = clock::now();
          for (int r = 0; r < reps; ++r) fn();
          return std::chrono::duration<double>(clock::now() - t0).count() / reps;
        };
        py::gil_scoped_release release;
        const double ta = time([&] { convert_a_bf16(a.data(), k, false, m, k, a16.data()); });
        const double tb = time([&] { pack_b_bf16(b.data(), k, true, k, n, 0, n, b16.data()); });
        const double tk = time([&] {
          packed_gemm_bf16(m, k, n, 0, n, a16.data(), bf16_row_length(k), b16.data(), 0.0f, c.data(), n);
        });
        return std::make_tuple(ta, tb, tk);
      }, py::arg("m"), py::arg("n"), py::arg("k"), py::arg("reps"),
      "(convert A, pack B, kernel) seconds per call of a bf16 GEMM [m,k] x [k,n] (benchmarks).");
  m.def("_bf16_kernels", &bf16_kernel_names, "The bfloat16 GEMM kernels this CPU runs, best (the default) first.");
  m.def("_packed_panel_width", [](const std::string& dtype) -> index_t {
        return dtype == "float64" ? packed_panel_width<double>() : packed_panel_width<float>();
      });
  m.def("_set_min_parallel_step_work", &set_min_parallel_step_work, py::arg("work"),
        "From how much per-step work (multiply-adds) a call uses the thread team (tests lower it).");
}

}  // namespace bind
}  // namespace rnnkit
