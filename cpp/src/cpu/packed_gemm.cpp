// Packed-B GEMM kernels (packed_gemm.h): AVX-512F and AVX2+FMA, float and double, selected once
// at run time. Each ISA's code lives in functions carrying that ISA's target attribute, so the
// rest of rnnkit stays baseline x86-64 and a CPU without the instructions never executes them.
#include "cpu/packed_gemm.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RNNKIT_X86_KERNELS 1
#include <immintrin.h>
#endif

namespace rnnkit {
namespace cpu {
namespace {

constexpr index_t kKChunk = 128;  // K rows of a panel per pass: 128 x NR values (8-16 KiB) stay in L1

#if defined(RNNKIT_X86_KERNELS)

#define RNNKIT_T512 __attribute__((target("avx512f"), always_inline)) static inline
#define RNNKIT_T256 __attribute__((target("avx2,fma"), always_inline)) static inline

// Vector operations per ISA and element type; L lanes per vector, two vectors per panel row.
struct Avx512Float {
  using S = float;
  using V = __m512;
  static constexpr int L = 16;
  RNNKIT_T512 V zero() { return _mm512_setzero_ps(); }
  RNNKIT_T512 V load(const S* p) { return _mm512_loadu_ps(p); }
  RNNKIT_T512 V set1(S a) { return _mm512_set1_ps(a); }
  RNNKIT_T512 V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  RNNKIT_T512 V add(V a, V b) { return _mm512_add_ps(a, b); }
  RNNKIT_T512 V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  RNNKIT_T512 V load_n(const S* p, int n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p); }
  RNNKIT_T512 void store_n(S* p, V v, int n) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), v); }
  static constexpr int kRegisters = 32;
  // out[i] = the sum of s[i]'s lanes, i < 8: the halves added, then Avx2Float's tree.
  RNNKIT_T512 void hsum8(const V* s, S* out) {
    __m256 half[8];
    for (int i = 0; i < 8; ++i) {
      // Blocks (2, 3, 0, 1) added: a shuffle, as _mm512_extractf32x8_ps needs AVX512DQ.
      half[i] = _mm512_castps512_ps256(_mm512_add_ps(s[i], _mm512_shuffle_f32x4(s[i], s[i], 0x4E)));
    }
    hsum8_256(half, out);
  }
  RNNKIT_T512 void hsum8_256(const __m256* s, S* out) {
    const __m256 t0 = _mm256_hadd_ps(s[0], s[1]), t1 = _mm256_hadd_ps(s[2], s[3]);
    const __m256 t2 = _mm256_hadd_ps(s[4], s[5]), t3 = _mm256_hadd_ps(s[6], s[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
  }
};

struct Avx512Double {
  using S = double;
  using V = __m512d;
  static constexpr int L = 8;
  RNNKIT_T512 V zero() { return _mm512_setzero_pd(); }
  RNNKIT_T512 V load(const S* p) { return _mm512_loadu_pd(p); }
  RNNKIT_T512 V set1(S a) { return _mm512_set1_pd(a); }
  RNNKIT_T512 V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  RNNKIT_T512 V add(V a, V b) { return _mm512_add_pd(a, b); }
  RNNKIT_T512 V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  RNNKIT_T512 V load_n(const S* p, int n) { return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1u), p); }
  RNNKIT_T512 void store_n(S* p, V v, int n) { _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1u), v); }
};

struct Avx2Float {
  using S = float;
  using V = __m256;
  static constexpr int L = 8;
  RNNKIT_T256 V zero() { return _mm256_setzero_ps(); }
  RNNKIT_T256 V load(const S* p) { return _mm256_loadu_ps(p); }
  RNNKIT_T256 V set1(S a) { return _mm256_set1_ps(a); }
  RNNKIT_T256 V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  RNNKIT_T256 V add(V a, V b) { return _mm256_add_ps(a, b); }
  RNNKIT_T256 V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  RNNKIT_T256 __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  RNNKIT_T256 V load_n(const S* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  RNNKIT_T256 void store_n(S* p, V v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static constexpr int kRegisters = 16;
  // out[i] = the sum of s[i]'s lanes, i < 8: pairs of lanes, then of pairs, then the two halves.
  RNNKIT_T256 void hsum8(const V* s, S* out) {
    const V t0 = _mm256_hadd_ps(s[0], s[1]), t1 = _mm256_hadd_ps(s[2], s[3]);
    const V t2 = _mm256_hadd_ps(s[4], s[5]), t3 = _mm256_hadd_ps(s[6], s[7]);
    const V u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
  }
};

struct Avx2Double {
  using S = double;
  using V = __m256d;
  static constexpr int L = 4;
  RNNKIT_T256 V zero() { return _mm256_setzero_pd(); }
  RNNKIT_T256 V load(const S* p) { return _mm256_loadu_pd(p); }
  RNNKIT_T256 V set1(S a) { return _mm256_set1_pd(a); }
  RNNKIT_T256 V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  RNNKIT_T256 V add(V a, V b) { return _mm256_add_pd(a, b); }
  RNNKIT_T256 V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  RNNKIT_T256 __m256i mask(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  RNNKIT_T256 V load_n(const S* p, int n) { return _mm256_maskload_pd(p, mask(n)); }
  RNNKIT_T256 void store_n(S* p, V v, int n) { _mm256_maskstore_pd(p, mask(n), v); }
};

// MR rows of A times one K chunk of a panel (two vectors wide). `first` chunk applies beta to C;
// later chunks add. ncols: valid columns of the panel (the rest are padding and not stored).
#define RNNKIT_DEFINE_MICRO(ISA, TARGET)                                                          \
  template <int MR>                                                                               \
  __attribute__((target(TARGET))) void micro_##ISA(index_t kc, const ISA::S* A, index_t lda,      \
                                                   const ISA::S* B, ISA::S* C, index_t ldc,       \
                                                   int ncols, ISA::S beta, bool first) {         \
    using I = ISA;                                                                                \
    constexpr int L = I::L;                                                                       \
    I::V acc0[MR], acc1[MR];                                                                      \
    for (int i = 0; i < MR; ++i) {                                                                \
      acc0[i] = I::zero();                                                                        \
      acc1[i] = I::zero();                                                                        \
    }                                                                                             \
    for (index_t k = 0; k < kc; ++k) {                                                            \
      const I::V b0 = I::load(B + k * 2 * L);                                                     \
      const I::V b1 = I::load(B + k * 2 * L + L);                                                 \
      for (int i = 0; i < MR; ++i) {                                                              \
        const I::V a = I::set1(A[i * lda + k]);                                                   \
        acc0[i] = I::fma(a, b0, acc0[i]);                                                         \
        acc1[i] = I::fma(a, b1, acc1[i]);                                                         \
      }                                                                                           \
    }                                                                                             \
    const int n0 = std::min(ncols, L), n1 = std::max(0, std::min(ncols - L, L));                  \
    const bool keep = !first || beta != ISA::S(0);                                                \
    const I::V vb = I::set1(first ? beta : ISA::S(1));                                            \
    for (int i = 0; i < MR; ++i) {                                                                \
      ISA::S* c = C + i * ldc;                                                                    \
      I::V c0 = acc0[i], c1 = acc1[i];                                                            \
      if (keep) {                                                                                 \
        c0 = I::fma(I::load_n(c, n0), vb, c0);                                                    \
        if (n1 > 0) c1 = I::fma(I::load_n(c + L, n1), vb, c1);                                    \
      }                                                                                           \
      I::store_n(c, c0, n0);                                                                      \
      if (n1 > 0) I::store_n(c + L, c1, n1);                                                      \
    }                                                                                             \
  }                                                                                               \
  __attribute__((target(TARGET))) void gemm_##ISA(index_t M, index_t K, index_t cols, index_t cb, \
                                                  index_t ce, const ISA::S* A, index_t lda,       \
                                                  const ISA::S* packed, ISA::S beta, ISA::S* C,   \
                                                  index_t ldc) {                                  \
    constexpr index_t NR = 2 * ISA::L;                                                            \
    constexpr int MR = 6;                                                                         \
    (void)cols;                                                                                   \
    for (index_t k0 = 0; k0 < K; k0 += kKChunk) {                                                 \
      const index_t kc = std::min(kKChunk, K - k0);                                               \
      const bool first = k0 == 0;                                                                 \
      for (index_t p = cb / NR; p * NR < ce; ++p) {                                               \
        const ISA::S* Bp = packed + (p * K + k0) * NR;                                            \
        const int ncols = static_cast<int>(std::min(NR, ce - p * NR));                            \
        ISA::S* Cp = C + p * NR;                                                                  \
        index_t i = 0;                                                                            \
        for (; i + MR <= M; i += MR) {                                                            \
          micro_##ISA<MR>(kc, A + i * lda + k0, lda, Bp, Cp + i * ldc, ldc, ncols, beta, first);  \
        }                                                                                         \
        const ISA::S* Ai = A + i * lda + k0;                                                      \
        ISA::S* Ci = Cp + i * ldc;                                                                \
        switch (M - i) {                                                                          \
          case 1: micro_##ISA<1>(kc, Ai, lda, Bp, Ci, ldc, ncols, beta, first); break;            \
          case 2: micro_##ISA<2>(kc, Ai, lda, Bp, Ci, ldc, ncols, beta, first); break;            \
          case 3: micro_##ISA<3>(kc, Ai, lda, Bp, Ci, ldc, ncols, beta, first); break;            \
          case 4: micro_##ISA<4>(kc, Ai, lda, Bp, Ci, ldc, ncols, beta, first); break;            \
          case 5: micro_##ISA<5>(kc, Ai, lda, Bp, Ci, ldc, ncols, beta, first); break;            \
          default: break;                                                                         \
        }                                                                                         \
      }                                                                                           \
    }                                                                                             \
  }

RNNKIT_DEFINE_MICRO(Avx512Float, "avx512f")
RNNKIT_DEFINE_MICRO(Avx512Double, "avx512f")
RNNKIT_DEFINE_MICRO(Avx2Float, "avx2,fma")
RNNKIT_DEFINE_MICRO(Avx2Double, "avx2,fma")
#undef RNNKIT_DEFINE_MICRO


// row_gemm (packed_gemm.h): RB rows of W against MR rows of A, one accumulator per (row of A, row
// of W) so each output is one dot product whatever the block. RB is as many rows as the registers
// hold (up to 16); a remainder runs in a block of 8 (when RB is 16), then row by row, its outputs
// summed identically (hsum8 per 8 rows; the unused accumulators stay zero). Blocks of 4 and 2 for
// the remainder were dropped for the wheel's size (each (MR, RB) pair is one more instantiation per
// ISA): at the goal shapes (4H, 3H or H rows, H = 256) the rows are whole blocks; other sizes run
// at most RB - 1 (or 7 after a block of 8) rows singly.
template <typename I>
constexpr int row_block(int mr) {
  int rb = 16;  // one row of A on AVX-512: 16 rows of W at once ran 3-4% faster than 8 (from L2)
  while (rb > 1 && mr * rb + mr + 1 > I::kRegisters - 2) rb /= 2;
  return rb;
}

#define RNNKIT_DEFINE_ROWS(ISA, TARGET)                                                                    \
  /* acc[m][r] += the lanes of A[m, :] * W[r, :] over t's K (the last vector masked). */                  \
  template <int MR, int RB, int kSlots>                                                                   \
  __attribute__((target(TARGET), always_inline)) inline void accumulate_##ISA(ISA::V (&acc)[MR][kSlots],  \
                                                                              const RowProduct& t,        \
                                                                              index_t j) {                \
    using I = ISA;                                                                                        \
    constexpr int L = I::L;                                                                               \
    const float* W = t.W + j * t.ldw;                                                                     \
    index_t k = 0;                                                                                        \
    for (; k + L <= t.K; k += L) {                                                                        \
      I::V a[MR];                                                                                         \
      for (int m = 0; m < MR; ++m) a[m] = I::load(t.A + m * t.lda + k);                                   \
      for (int r = 0; r < RB; ++r) {                                                                      \
        const I::V w = I::load(W + r * t.ldw + k);                                                        \
        for (int m = 0; m < MR; ++m) acc[m][r] = I::fma(w, a[m], acc[m][r]);                              \
      }                                                                                                   \
    }                                                                                                     \
    if (k < t.K) {                                                                                        \
      const int n = static_cast<int>(t.K - k);                                                            \
      I::V a[MR];                                                                                         \
      for (int m = 0; m < MR; ++m) a[m] = I::load_n(t.A + m * t.lda + k, n);                              \
      for (int r = 0; r < RB; ++r) {                                                                      \
        const I::V w = I::load_n(W + r * t.ldw + k, n);                                                   \
        for (int m = 0; m < MR; ++m) acc[m][r] = I::fma(w, a[m], acc[m][r]);                              \
      }                                                                                                   \
    }                                                                                                     \
  }                                                                                                       \
  /* Rows [j, j + RB) of C for MR rows of A: both terms into the same accumulators. */                    \
  template <int MR, int RB>                                                                               \
  __attribute__((target(TARGET))) void rows_##ISA(const RowProduct& t1, const RowProduct& t2, index_t j,  \
                                                  float beta, float* C, index_t ldc) {                    \
    using I = ISA;                                                                                        \
    constexpr int kSlots = RB > 8 ? 16 : 8;                                                               \
    I::V acc[MR][kSlots];                                                                                 \
    for (int m = 0; m < MR; ++m) {                                                                        \
      for (int r = 0; r < kSlots; ++r) acc[m][r] = I::zero();                                             \
    }                                                                                                     \
    accumulate_##ISA<MR, RB, kSlots>(acc, t1, j);                                                         \
    if (t2.K > 0) accumulate_##ISA<MR, RB, kSlots>(acc, t2, j);                                           \
    alignas(32) float out[16];                                                                            \
    for (int m = 0; m < MR; ++m) {                                                                        \
      I::hsum8(acc[m], out);                                                                              \
      if (RB > 8) I::hsum8(acc[m] + 8, out + 8);                                                          \
      float* c = C + m * ldc + j;                                                                         \
      for (int r = 0; r < RB; ++r) c[r] = beta == 0.0f ? out[r] : beta * c[r] + out[r];                   \
    }                                                                                                     \
  }                                                                                                       \
  /* Rows [j0, j1) for MR rows of A: full blocks of RB, the remainder in 8 and 1. */                      \
  template <int MR>                                                                                       \
  __attribute__((target(TARGET))) void row_range_##ISA(const RowProduct& t1, const RowProduct& t2,        \
                                                       index_t j0, index_t j1, float beta, float* C,      \
                                                       index_t ldc, bool descending) {                    \
    constexpr int RB = row_block<ISA>(MR);                                                                \
    const index_t full = j0 + (j1 - j0) / RB * RB;                                                        \
    auto rest = [&] {                                                                                     \
      index_t j = full;                                                                                   \
      if (RB > 8 && j + 8 <= j1) {                                                                        \
        rows_##ISA<MR, (RB > 8 ? 8 : 1)>(t1, t2, j, beta, C, ldc);                                        \
        j += 8;                                                                                           \
      }                                                                                                   \
      for (; RB > 1 && j < j1; ++j) rows_##ISA<MR, 1>(t1, t2, j, beta, C, ldc);                           \
    };                                                                                                    \
    if (!descending) {                                                                                    \
      for (index_t j = j0; j < full; j += RB) rows_##ISA<MR, RB>(t1, t2, j, beta, C, ldc);                \
      rest();                                                                                             \
    } else {                                                                                              \
      rest();                                                                                             \
      for (index_t j = full - RB; j >= j0; j -= RB) rows_##ISA<MR, RB>(t1, t2, j, beta, C, ldc);          \
    }                                                                                                     \
  }                                                                                                       \
  __attribute__((target(TARGET))) void row_gemm_##ISA(index_t M, const RowProduct& t1, const RowProduct& t2, \
                                                      index_t j0, index_t j1, float beta, float* C,       \
                                                      index_t ldc, bool descending) {                     \
    for (index_t m0 = 0; m0 < M; m0 += kRowGemmMaxM) {                                                    \
      RowProduct a1 = t1, a2 = t2;                                                                        \
      a1.A += m0 * a1.lda;                                                                                \
      a2.A += m0 * a2.lda;                                                                                \
      float* Cm = C + m0 * ldc;                                                                           \
      switch (std::min<index_t>(kRowGemmMaxM, M - m0)) {                                                 \
        case 1: row_range_##ISA<1>(a1, a2, j0, j1, beta, Cm, ldc, descending); break;                    \
        case 2: row_range_##ISA<2>(a1, a2, j0, j1, beta, Cm, ldc, descending); break;                    \
        case 3: /* as 2 + 1 rows: one instantiation fewer per ISA, for the wheel's size */                \
          row_range_##ISA<2>(a1, a2, j0, j1, beta, Cm, ldc, descending);                                  \
          a1.A += 2 * a1.lda;                                                                             \
          a2.A += 2 * a2.lda;                                                                             \
          row_range_##ISA<1>(a1, a2, j0, j1, beta, Cm + 2 * ldc, ldc, descending);                        \
          break;                                                                                          \
        default: row_range_##ISA<4>(a1, a2, j0, j1, beta, Cm, ldc, descending); break;                   \
      }                                                                                                   \
    }                                                                                                     \
  }

// GCC 12's _mm512_shuffle_f32x4 and _mm512_castps512_ps256 start from _mm512_undefined_ps(), which
// that compiler reports as -Wuninitialized (GCC bug 105593, fixed in 12.3): silenced for these.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
RNNKIT_DEFINE_ROWS(Avx512Float, "avx512f")
RNNKIT_DEFINE_ROWS(Avx2Float, "avx2,fma")
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#undef RNNKIT_DEFINE_ROWS

#endif  // RNNKIT_X86_KERNELS

template <typename S>
using GemmFn = void (*)(index_t, index_t, index_t, index_t, index_t, const S*, index_t, const S*, S, S*, index_t);

template <typename S>
struct Kernel {
  GemmFn<S> fn = nullptr;
  index_t nr = 0;
};

template <typename S>
Kernel<S> select_kernel() {
  Kernel<S> k;
#if defined(RNNKIT_X86_KERNELS)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if constexpr (std::is_same_v<S, float>) {
    if (avx512) k = {&gemm_Avx512Float, 2 * Avx512Float::L};
    else if (avx2) k = {&gemm_Avx2Float, 2 * Avx2Float::L};
  } else {
    if (avx512) k = {&gemm_Avx512Double, 2 * Avx512Double::L};
    else if (avx2) k = {&gemm_Avx2Double, 2 * Avx2Double::L};
  }
#endif
  return k;
}

template <typename S>
const Kernel<S>& kernel() {
  static const Kernel<S> k = select_kernel<S>();
  return k;
}

using RowGemmFn = void (*)(index_t, const RowProduct&, const RowProduct&, index_t, index_t, float, float*, index_t,
                           bool);

struct RowKernel {
  const char* name;
  RowGemmFn fn;
};

// The row kernels this CPU runs, best first.
std::vector<RowKernel> row_kernels() {
  std::vector<RowKernel> ks;
#if defined(RNNKIT_X86_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) ks.push_back({"avx512", &row_gemm_Avx512Float});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ks.push_back({"avx2", &row_gemm_Avx2Float});
#endif
  return ks;
}

// The kernel in use (set_row_gemm_kernel changes it, for tests).
std::atomic<RowGemmFn>& row_gemm_kernel() {
  static std::atomic<RowGemmFn> fn{row_kernels().empty() ? nullptr : row_kernels().front().fn};
  return fn;
}

}  // namespace

bool row_gemm_available() { return row_gemm_kernel().load(std::memory_order_relaxed) != nullptr; }

std::vector<std::string> row_gemm_kernel_names() {
  std::vector<std::string> out;
  for (const RowKernel& k : row_kernels()) out.push_back(k.name);
  return out;
}

void set_row_gemm_kernel(const std::string& name) {
  const std::vector<RowKernel> ks = row_kernels();
  if (ks.empty()) throw_expected("row kernel", "a CPU with AVX2+FMA or AVX-512F", "none");
  if (name == "auto") {
    row_gemm_kernel() = ks.front().fn;
    return;
  }
  std::string names = "'auto'";
  for (const RowKernel& k : ks) {
    if (name == k.name) {
      row_gemm_kernel() = k.fn;
      return;
    }
    names += concat(", '", k.name, "'");
  }
  throw_expected("row kernel", concat("one this CPU runs (", names, ")"), concat("'", name, "'"));
}

void row_gemm(index_t M, const RowProduct& first, const RowProduct& second, index_t j0, index_t j1, float beta,
              float* C, index_t ldc, bool descending) {
  const RowGemmFn fn = row_gemm_kernel().load(std::memory_order_relaxed);
  assert(fn != nullptr);
  if (M <= 0 || j1 <= j0) return;
  fn(M, first, second, j0, j1, beta, C, ldc, descending);
}

void row_gemm(index_t M, index_t K, index_t j0, index_t j1, const float* A, index_t lda, const float* W,
              index_t ldw, float beta, float* C, index_t ldc, bool descending) {
  row_gemm(M, RowProduct{K, A, lda, W, ldw}, RowProduct{}, j0, j1, beta, C, ldc, descending);
}

template <typename S>
bool packed_gemm_available() {
  return kernel<S>().fn != nullptr;
}

template <typename S>
index_t packed_panel_width() {
  return kernel<S>().nr;
}

template <typename S>
index_t packed_size(index_t K, index_t cols) {
  const index_t nr = kernel<S>().nr;
  if (nr == 0) return 0;
  return checked_mul(checked_mul((cols + nr - 1) / nr, K, "packed panels"), nr, "packed panels");
}

template <typename S>
void pack_b(const S* src, index_t ld, bool transposed, index_t K, index_t cols, index_t c0, index_t c1, S* out) {
  const index_t nr = kernel<S>().nr;
  // A thread of a team larger than the panel count gets an empty range that starts at `cols`,
  // which need not be a panel boundary: rounding it down would repack (and race on) a panel that
  // another thread owns.
  if (c1 <= c0) return;
  assert(nr > 0 && c0 % nr == 0);
  for (index_t p = c0 / nr; p * nr < c1; ++p) {
    S* panel = out + p * K * nr;
    const index_t width = std::min(nr, cols - p * nr);  // real columns; the rest is zero padding
    if (transposed) {
      // Column j of B is row (p*nr + j) of the source: read it contiguously and write it down the
      // panel (a stride of nr elements, within one panel of K*nr that stays in L1). Reading
      // across source rows instead (one element from each of nr rows per k) cost ~1 ns an element.
      for (index_t j = 0; j < width; ++j) {
        const S* row = src + (p * nr + j) * ld;
        for (index_t k = 0; k < K; ++k) panel[k * nr + j] = row[k];
      }
    } else {
      for (index_t k = 0; k < K; ++k) {
        const S* row = src + k * ld + p * nr;
        for (index_t j = 0; j < width; ++j) panel[k * nr + j] = row[j];
      }
    }
    for (index_t k = 0; width < nr && k < K; ++k) {
      for (index_t j = width; j < nr; ++j) panel[k * nr + j] = S(0);
    }
  }
}

template <typename S>
void packed_gemm(index_t M, index_t K, index_t cols, index_t cb, index_t ce, const S* A, index_t lda,
                 const S* packed, S beta, S* C, index_t ldc) {
  assert(kernel<S>().fn != nullptr);
  if (M <= 0 || ce <= cb) return;
  if (K == 0) {  // C = beta * C
    for (index_t i = 0; i < M; ++i) {
      for (index_t c = cb; c < ce; ++c) C[i * ldc + c] = beta == S(0) ? S(0) : beta * C[i * ldc + c];
    }
    return;
  }
  kernel<S>().fn(M, K, cols, cb, ce, A, lda, packed, beta, C, ldc);
}

#define RNNKIT_INSTANTIATE_PACKED(S)                                                              \
  template bool packed_gemm_available<S>();                                                       \
  template index_t packed_panel_width<S>();                                                       \
  template index_t packed_size<S>(index_t, index_t);                                              \
  template void pack_b<S>(const S*, index_t, bool, index_t, index_t, index_t, index_t, S*);       \
  template void packed_gemm<S>(index_t, index_t, index_t, index_t, index_t, const S*, index_t,    \
                               const S*, S, S*, index_t);
RNNKIT_INSTANTIATE_PACKED(float)
RNNKIT_INSTANTIATE_PACKED(double)
#undef RNNKIT_INSTANTIATE_PACKED

}  // namespace cpu
}  // namespace rnnkit
