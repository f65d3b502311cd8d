// CBLAS calls behind cpu/blas.h; the only file that includes the OpenBLAS headers.
#include "cpu/blas.h"

#include <cblas.h>

#include "cpu/packed_gemm.h"

#ifdef BLAS_SYMBOL_PREFIX
#define RNNKIT_BLAS_CAT2(a, b) a##b
#define RNNKIT_BLAS_CAT(a, b) RNNKIT_BLAS_CAT2(a, b)
#define RNNKIT_BLAS(name) RNNKIT_BLAS_CAT(BLAS_SYMBOL_PREFIX, name)
#else
#define RNNKIT_BLAS(name) name
#endif

namespace rnnkit {
namespace cpu {
namespace {

CBLAS_TRANSPOSE to_cblas(Trans t) { return t == Trans::kYes ? CblasTrans : CblasNoTrans; }

blasint to_blasint(index_t v) {
  assert(v >= 0 && v <= kMaxGemmDim);
  return static_cast<blasint>(v);
}

// A product with one row (m == 1) is a matrix-vector product; OpenBLAS's GEMM would pack all of B
// first, which for one row costs more than the product (streaming steps live on this path).
// Returns false when the shapes are not of that kind.
template <typename S, typename Gemv>
bool gemm_as_gemv(Gemv gemv, Trans trans_a, Trans trans_b, index_t m, index_t n, index_t k, S alpha,
                  const S* a, index_t lda, const S* b, index_t ldb, S beta, S* c) {
  if (m != 1) return false;
  // The row vector op(A)[0, :]: contiguous, or a column of A^T with stride lda.
  const blasint inc_a = trans_a == Trans::kNo ? 1 : to_blasint(lda);
  if (trans_b == Trans::kYes) {
    // C[0, j] = sum_i B[j, i] a[i]: B [n, k] times a.
    gemv(CblasRowMajor, CblasNoTrans, to_blasint(n), to_blasint(k), alpha, b, to_blasint(ldb), a, inc_a,
         beta, c, 1);
  } else {
    // C[0, j] = sum_i B[i, j] a[i]: B^T with B [k, n].
    gemv(CblasRowMajor, CblasTrans, to_blasint(k), to_blasint(n), alpha, b, to_blasint(ldb), a, inc_a,
         beta, c, 1);
  }
  return true;
}

}  // namespace

void gemm(Trans trans_a, Trans trans_b, index_t m, index_t n, index_t k, float alpha, const float* a,
          index_t lda, const float* b, index_t ldb, float beta, float* c, index_t ldc) {
  if (m == 0 || n == 0) return;
  if (trans_a == Trans::kNo && trans_b == Trans::kYes && alpha == 1.0f && m <= kRowGemmMaxM &&
      row_gemm_available()) {
    row_gemm(m, k, 0, n, a, lda, b, ldb, beta, c, ldc, false);
    return;
  }
  if (gemm_as_gemv(&RNNKIT_BLAS(cblas_sgemv), trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c)) return;
  RNNKIT_BLAS(cblas_sgemm)(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), to_blasint(m),
                           to_blasint(n), to_blasint(k), alpha, a, to_blasint(lda), b,
                           to_blasint(ldb), beta, c, to_blasint(ldc));
}

void gemm(Trans trans_a, Trans trans_b, index_t m, index_t n, index_t k, double alpha,
          const double* a, index_t lda, const double* b, index_t ldb, double beta, double* c,
          index_t ldc) {
  if (m == 0 || n == 0) return;
  if (gemm_as_gemv(&RNNKIT_BLAS(cblas_dgemv), trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c)) return;
  RNNKIT_BLAS(cblas_dgemm)(CblasRowMajor, to_cblas(trans_a), to_cblas(trans_b), to_blasint(m),
                           to_blasint(n), to_blasint(k), alpha, a, to_blasint(lda), b,
                           to_blasint(ldb), beta, c, to_blasint(ldc));
}

void set_blas_threads(int n) {
  if (n < 1) throw_expected("num_threads", "an integer >= 1", n);
  RNNKIT_BLAS(openblas_set_num_threads)(n);
}

int get_blas_threads() { return RNNKIT_BLAS(openblas_get_num_threads)(); }

std::string blas_kernel() { return RNNKIT_BLAS(openblas_get_corename)(); }

std::string blas_info() {
  std::string info = RNNKIT_BLAS(openblas_get_config)();
  info += " (kernel: ";
  info += RNNKIT_BLAS(openblas_get_corename)();
  info += ")";
  return info;
}

}  // namespace cpu
}  // namespace rnnkit
