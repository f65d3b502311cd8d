// The CUDA backend's one GEMM interface, in cuBLAS' own column-major convention. Under nvcc it calls
// cuBLAS (loaded lazily, one handle per host thread, on the caller's stream, TF32 off: cuBLAS' default
// math mode); in the emulation build it calls the CPU's CBLAS with CblasColMajor and exactly the same
// transposes, sizes and leading dimensions, so the emulation tests the very call the GPU makes.
//
// The layer loops think in row-major arrays (as the CPU's do); gemm_rm below is the one place that
// turns a row-major product into the column-major call (C = A B row-major is C^T = B^T A^T).
#pragma once

#include <type_traits>

#include "device.h"

namespace rnnkit {
namespace cuda {

enum class Op { kN, kT };

// Makes this thread's cuBLAS handle and workspace now (cublasCreate and cudaMalloc are refused
// during stream capture, so graph.cu calls it before capturing). A no-op in the emulation.
void prepare_blas(Stream stream);

// C[m,n] = alpha * op(A)[m,k] * op(B)[k,n] + beta * C, column-major (cublas<t>gemm).
void gemm(Stream stream, Op op_a, Op op_b, index_t m, index_t n, index_t k, float alpha, const float* a,
          index_t lda, const float* b, index_t ldb, float beta, float* c, index_t ldc);
void gemm(Stream stream, Op op_a, Op op_b, index_t m, index_t n, index_t k, double alpha, const double* a,
          index_t lda, const double* b, index_t ldb, double beta, double* c, index_t ldc);
// precision="bfloat16": A and B bfloat16, C, the scalars and every sum float32 (cublasGemmEx with
// CUDA_R_16BF operands and CUBLAS_COMPUTE_32F; each product of two bf16 values is exact in float32).
// The emulation widens A and B to float32 (exactly) and calls sgemm: the same products and sums.
void gemm(Stream stream, Op op_a, Op op_b, index_t m, index_t n, index_t k, float alpha, const bf16_t* a,
          index_t lda, const bf16_t* b, index_t ldb, float beta, float* c, index_t ldc);

// Row-major C[m,n] = alpha * op(A) op(B) + beta * C (A [m,k] or, with op_a kT, [k,m]; likewise B),
// as the column-major call on the transposed problem. Nothing to do when m, n or k is 0... except
// scaling C by beta, which a k = 0 call still does.
// S: float or double (A, B and C), or bf16_t (A and B; C float).
template <typename S, typename Out = std::conditional_t<std::is_same_v<S, bf16_t>, float, S>>
void gemm_rm(Stream stream, Op op_a, Op op_b, index_t m, index_t n, index_t k, Out alpha, const S* a, index_t lda,
             const S* b, index_t ldb, Out beta, Out* c, index_t ldc) {
  if (m == 0 || n == 0) return;
  gemm(stream, op_b, op_a, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc);
}

}  // namespace cuda
}  // namespace rnnkit
