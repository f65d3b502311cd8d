// Row-major GEMM for the CPU backend, over the CBLAS of PyPI's scipy-openblas32.
//
// That OpenBLAS build prefixes every symbol (scipy_cblas_sgemm, ...), which is why Eigen's
// EIGEN_USE_BLAS cannot be used and we call CBLAS ourselves through RNNKIT_BLAS(name). The prefix
// comes from the build (BLAS_SYMBOL_PREFIX); without it the plain names are used.
//
// All matrices here are row-major with explicit leading dimensions, which lets a caller address a
// slice of a wider array (e.g. one direction's half of a concatenated output) without copying.
#pragma once

#include <string>

#include "rnnkit/common.h"

namespace rnnkit {
namespace cpu {

enum class Trans { kNo, kYes };

// C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C.
// op(A) is A [m,k] (lda >= k) or, transposed, A [k,m] (lda >= m); likewise for B.
// Float products A B^T of at most kRowGemmMaxM rows (a streaming step's) run rnnkit's row_gemm
// (packed_gemm.h), which reads B in place; one-row products otherwise run BLAS's GEMV.
// C must not alias A or B. Dimensions are at most kMaxGemmDim; callers guarantee it (layer
// entry points reject larger sizes up front with a user error).
void gemm(Trans trans_a, Trans trans_b, index_t m, index_t n, index_t k, float alpha, const float* a,
          index_t lda, const float* b, index_t ldb, float beta, float* c, index_t ldc);
void gemm(Trans trans_a, Trans trans_b, index_t m, index_t n, index_t k, double alpha,
          const double* a, index_t lda, const double* b, index_t ldb, double beta, double* c,
          index_t ldc);

// BLAS threads: rnnkit defaults to 1 (measured: RNN-sized GEMMs get slower with a second
// thread on a shared core; see build-recipe notes). The count is process-wide for our OpenBLAS.
void set_blas_threads(int n);
int get_blas_threads();
// OpenBLAS' own description: version, build options and the kernel picked for this CPU.
std::string blas_info();
// The kernel OpenBLAS chose (openblas_get_corename: "Haswell", "SkylakeX", "Cooperlake", ...).
std::string blas_kernel();

}  // namespace cpu
}  // namespace rnnkit
