// bfloat16 GEMMs with float32 accumulation: the products of precision="bfloat16" (StackConfig).
//
// Both operands are rounded to bfloat16 (round to nearest even), every product of two bf16
// values is exact in float32, and the sums are float32; C and everything outside the GEMMs stay
// float32. Three kernels compute that over the same packed operands, the best chosen at run time:
//   * AMX (amx_bf16): tile dot products, 16 x 16 x 32 per instruction, accumulated in tiles;
//   * AVX512_BF16: vdpbf16ps, two k per instruction (on Sapphire Rapids at half the FLOP rate
//     of float32 FMAs, so there AMX or nothing; Zen 4/5 run it at full rate);
//   * elsewhere: the packed bf16 operands widened to float32 and multiplied with float32 FMAs.
// All take the same products, summed in different orders, so results agree to float32 rounding.
//
// Packed layout of B [K, cols] (pack_b_bf16): column panels of bf16_panel_width() columns,
// [panels][Kp/2][NR][2] with Kp = bf16_row_length(K) -- for each pair of k and each column j,
// B[2kk, j], B[2kk+1, j] (the AMX B-tile layout) -- with zeros past K and past cols. A is
// row-major bf16 [bf16_padded_rows(M), Kp] (convert_a_bf16), zero past M and K, so a pair of
// A's k broadcasts as one 32-bit value and a 32 x 32 block loads as two tiles.
//
//   C[m, cb:ce] = beta * C[m, cb:ce] + sum_k A[m, k] * B[k, cb:ce]      m < M
//
// [cb, ce) starts at a multiple of bf16_panel_width() (threads split the columns panel-wise).
// Every element of C is computed the same way whatever [cb, ce) or the thread that computes it,
// and, for the AVX512_BF16 and fallback kernels, whatever M. Under AMX, calls of one or two rows
// (a streaming step's) run the AVX512_BF16 panel kernel, whose sums run in another order than the
// tiles': there a row's last bits depend on the call's M, which deterministic mode fixes (fixed
// row blocks; a step's M is its batch).
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/blas.h"
#include "rnnkit/common.h"

namespace rnnkit {
namespace cpu {

// bf16_t, to_bf16 and from_bf16 (round to nearest even): rnnkit/common.h, shared with the CUDA
// backend; named here too (cpu::bf16_t), as before they moved.
using ::rnnkit::bf16_t;
using ::rnnkit::from_bf16;
using ::rnnkit::to_bf16;

// Which kernel runs: "amx_bf16" (AMX tiles, Sapphire Rapids and later, where Linux grants the
// process the tile state), "avx512_bf16" or "fp32_fma" (the widening fallback).
const char* bf16_kernel_name();
// The kernels this CPU can run, best first (the first is the default).
std::vector<std::string> bf16_kernel_names();
// Tests and benchmarks: run `name` ("auto": the CPU's best; else one of bf16_kernel_names(),
// else std::invalid_argument). Not while a call is running.
void set_bf16_kernel(const std::string& name);

// NR: columns per packed panel (32).
index_t bf16_panel_width();
// Row length of a converted A with K columns, and the k of a packed panel: K rounded up to 32
// (an AMX tile's 16 k pairs), zeros past K.
inline index_t bf16_row_length(index_t K) { return (K + 31) / 32 * 32; }
// Rows of a converted A with M rows: M rounded up to 32 (the AMX kernel's row block), zeros past M.
inline index_t bf16_padded_rows(index_t M) { return (M + 31) / 32 * 32; }
// bf16 elements of the packed form of a [K, cols] matrix.
index_t bf16_packed_size(index_t K, index_t cols);
// The same in elements of S (packed bf16 pairs kept in S memory: a layer's float buffers).
template <typename S>
index_t bf16_packed_elems(index_t K, index_t cols) {
  return (bf16_packed_size(K, cols) * index_t(sizeof(bf16_t)) + index_t(sizeof(S)) - 1) / index_t(sizeof(S));
}

// Packs B [K, cols], columns [c0, c1) (c0 panel-aligned; the rest of `out` is left alone), from
// float: `transposed` reads B^T stored row-major [cols, K] (leading dimension ld), else B [K, cols].
void pack_b_bf16(const float* src, index_t ld, bool transposed, index_t K, index_t cols, index_t c0, index_t c1,
                 bf16_t* out);

// op(A) [M, K] from float into out [bf16_padded_rows(M), bf16_row_length(K)] (zeros past M and K):
// `transposed` reads A stored [K, M] with leading dimension ld (op(A)[m, k] = src[k * ld + m]),
// else A [M, K].
void convert_a_bf16(const float* src, index_t ld, bool transposed, index_t M, index_t K, bf16_t* out);

// See the file comment. A: convert_a_bf16's rows (lda = bf16_row_length(K));
// packed: pack_b_bf16 of the same K and cols.
void packed_gemm_bf16(index_t M, index_t K, index_t cols, index_t cb, index_t ce, const bf16_t* A, index_t lda,
                      const bf16_t* packed, float beta, float* C, index_t ldc);

// C[m,n] = op(A)[m,k] op(B)[k,n] + beta C, as gemm() of blas.h with alpha = 1, at bf16 input
// precision. Converts and packs into this thread's workspace (grown, never shrunk), so a call
// that has run once at a size allocates nothing when it runs again.
void gemm_bf16(Trans trans_a, Trans trans_b, index_t m, index_t n, index_t k, const float* a, index_t lda,
               const float* b, index_t ldb, float beta, float* c, index_t ldc);

// A GEMM of gemm()'s form with alpha = 1, at bf16 input precision when `bf16` (float only).
template <typename S>
void gemm_at_precision(bool bf16, Trans ta, Trans tb, index_t m, index_t n, index_t k, const S* a, index_t lda,
                       const S* b, index_t ldb, S beta, S* c, index_t ldc) {
  if constexpr (std::is_same_v<S, float>) {
    if (bf16) return gemm_bf16(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
  }
  assert(!bf16);
  gemm(ta, tb, m, n, k, S(1), a, lda, b, ldb, beta, c, ldc);
}

// This thread's workspace for converting A (bf16 elements, grown to at least `elems`).
bf16_t* bf16_a_workspace(index_t elems);

// packed_gemm_bf16 of float rows A [M, K] (leading dimension lda), converted into this thread's
// workspace first (convert_a_bf16): the per-step products against panels packed beforehand.
void packed_gemm_bf16_from_float(index_t M, index_t K, index_t cols, index_t cb, index_t ce, const float* A,
                                 index_t lda, const bf16_t* packed, float beta, float* C, index_t ldc);

}  // namespace cpu
}  // namespace rnnkit
