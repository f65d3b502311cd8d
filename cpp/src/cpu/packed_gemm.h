// GEMM with the right-hand matrix packed once and reused: the recurrent product of every step.
//
// A layer multiplies by the same W_hh at each of its T steps. BLAS repacks W_hh into its kernel
// layout on every call, which for the small per-step matrices (N rows) costs about as much as the
// arithmetic. Here W_hh (or its transpose) is packed once per call into column panels of NR
// columns, [panels][K][NR] with zero padding, and each step runs register-blocked kernels over it:
// MR rows of A at a time, broadcast-FMA against two vectors of B, K in L1-sized chunks.
//
// Kernels: AVX-512F and AVX2+FMA for float and double, chosen at run time from the CPU
// (rnnkit is built for the baseline x86-64; these functions carry their own target attributes).
// On other CPUs packed_gemm_available() is false and callers keep using gemm() from blas.h.
//
//   C[m, cb:ce] = beta * C[m, cb:ce] + sum_k A[m, k] * B[k, cb:ce]      m < M
//
// A is row-major [M, K] (lda), C row-major (ldc); [cb, ce) is a range of B's columns whose start
// is a multiple of packed_panel_width<S>() (so threads can split the columns panel-wise).
#pragma once

#include <string>
#include <vector>

#include "rnnkit/common.h"

namespace rnnkit {
namespace cpu {

// Whether this CPU has a packed kernel for S (AVX2+FMA or AVX-512F on x86-64).
template <typename S>
bool packed_gemm_available();

// NR: columns per panel of the kernel in use (16 or 32 for float, 8 or 16 for double).
template <typename S>
index_t packed_panel_width();

// Elements of the packed form of a [K, cols] matrix.
template <typename S>
index_t packed_size(index_t K, index_t cols);

// Packs B [K, cols] into `out` (packed_size elements). If `transposed`, the source is B^T stored
// row-major [cols, K] with leading dimension ld (e.g. W_hh [G*H, P] packs B = W_hh^T);
// otherwise B itself, row-major [K, cols] with leading dimension ld. Columns [c0, c1) only (the
// rest of `out` is left alone), so threads can pack their own panels; c0 must be panel-aligned.
template <typename S>
void pack_b(const S* src, index_t ld, bool transposed, index_t K, index_t cols, index_t c0, index_t c1, S* out);

// See the file comment. `packed` comes from pack_b with the same K and cols.
template <typename S>
void packed_gemm(index_t M, index_t K, index_t cols, index_t cb, index_t ce, const S* A, index_t lda,
                 const S* packed, S beta, S* C, index_t ldc);

}  // namespace cpu
}  // namespace rnnkit

namespace rnnkit {
namespace cpu {

// ---- A times W^T with W read in place: a streaming step's products --------------------------------
//
// A step (T = 1, a few streams) multiplies each weight matrix once: packing it first would read it
// twice, and BLAS's GEMV sums each dot product in an order of its own. Here W is row-major
// [rows, K] (W_ih, W_hh, W_hr, a head's V as stored) and each output is one dot product:
//
//   C[m, j] = beta * C[m, j] + sum_k A[m, k] * W[j, k]      m < M, j in [j0, j1)
//
// Every element is summed the same way (k ascending in vector lanes, then a fixed lane tree),
// whatever M, [j0, j1) or the direction, so results do not depend on how a team splits the rows;
// `descending` walks the rows of W from j1 down (step_layers alternates it between calls, so a
// call starts on the rows the previous call read last, still in L2). beta == 0: C is not read.
// A, W and C must not overlap. Meant for M <= kRowGemmMaxM (W is read once per 4 rows of A).

constexpr index_t kRowGemmMaxM = 4;

// Whether this CPU has the kernel (float: AVX-512F or AVX2+FMA on x86-64).
bool row_gemm_available();

void row_gemm(index_t M, index_t K, index_t j0, index_t j1, const float* A, index_t lda, const float* W,
              index_t ldw, float beta, float* C, index_t ldc, bool descending);

// One term A W^T of the two-term form: A [M, K] (lda), W [rows, K] (ldw).
struct RowProduct {
  index_t K = 0;  // 0: no term
  const float* A = nullptr;
  index_t lda = 0;
  const float* W = nullptr;
  index_t ldw = 0;
};

// C[m, j] = beta * C[m, j] + sum over both terms of A[m, k] * W[j, k], as one sum per element
// (the first term's lanes, then the second's): a step's x W_ih^T + h W_hh^T reads W_ih's and
// W_hh's row j together, so the rows of both reverse together in a descending call.
void row_gemm(index_t M, const RowProduct& first, const RowProduct& second, index_t j0, index_t j1, float beta,
              float* C, index_t ldc, bool descending);

// Tests: the row kernels this CPU runs ("avx512", "avx2"; the default first), and which one runs
// ("auto": the default). Not thread-safe against running steps.
std::vector<std::string> row_gemm_kernel_names();
void set_row_gemm_kernel(const std::string& name);

}  // namespace cpu
}  // namespace rnnkit
