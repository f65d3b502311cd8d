// bfloat16 GEMM kernels (bf16_gemm.h): AMX tiles where the CPU has them and Linux grants the
// tile state, AVX512_BF16 where it has that, a widening float32 fallback elsewhere, and the
// packing and conversions they share. As in packed_gemm.cpp, the ISA-specific code carries its
// own target attribute so the rest of rnnkit stays baseline x86-64.
#include "cpu/bf16_gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RNNKIT_X86_KERNELS 1
#include <cpuid.h>
#include <immintrin.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace rnnkit {
namespace cpu {
namespace {

constexpr index_t kNR = 32;       // columns per panel: two vectors of 16 float accumulators
constexpr index_t kKPairs = 64;   // k pairs per pass: 64 x 32 x 2 bf16 = 8 KiB of a panel stays in L1
constexpr int kMR = 8;            // rows of A per micro-kernel call
constexpr index_t kRowBlock = 256;  // rows of A converted at a time by gemm_bf16 (a multiple of 32)

using MicroFn = void (*)(int rows, index_t kc2, const bf16_t* A, index_t lda, const bf16_t* B, float* C,
                         index_t ldc, int ncols, float beta, bool first);
// Up to kGemvRows rows over several panels at once (panels_dpbf16): kGemvPanels panels for one
// row, half as many for two (8 and 4 measured alike at one row: the loads bound it then).
using PanelsFn = void (*)(int rows, index_t kc2, const bf16_t* A, index_t lda, const bf16_t* B,
                          index_t panel_stride, int panels, float* C, index_t ldc, int ncols, float beta, bool first);
constexpr index_t kGemvRows = 2;
constexpr int kGemvPanels = 8;
// A whole packed GEMM (packed_gemm_bf16's arguments, K2 = k pairs): the AMX kernel keeps its
// accumulators in tiles over all of K, so it takes the call rather than chunks of it.
using WholeFn = void (*)(index_t M, index_t K2, index_t cb, index_t ce, const bf16_t* A, index_t lda,
                         const bf16_t* packed, float beta, float* C, index_t ldc);

// The fallback: rows x one chunk of a panel, each product widened to float32 and added in the
// same k order as the bf16 kernel's pairs (k even, then k odd, into the same sum).
void micro_widening(int rows, index_t kc2, const bf16_t* A, index_t lda, const bf16_t* B, float* C, index_t ldc,
                    int ncols, float beta, bool first) {
  for (int i = 0; i < rows; ++i) {
    float acc[kNR] = {};
    const bf16_t* a = A + i * lda;
    for (index_t kk = 0; kk < kc2; ++kk) {
      const float a0 = from_bf16(a[2 * kk]), a1 = from_bf16(a[2 * kk + 1]);
      const bf16_t* b = B + kk * 2 * kNR;
      for (index_t j = 0; j < kNR; ++j) acc[j] += a0 * from_bf16(b[2 * j]) + a1 * from_bf16(b[2 * j + 1]);
    }
    float* c = C + i * ldc;
    for (int j = 0; j < ncols; ++j) {
      if (!first) c[j] += acc[j];
      else c[j] = beta == 0.0f ? acc[j] : beta * c[j] + acc[j];
    }
  }
}

#if defined(RNNKIT_X86_KERNELS)
#define RNNKIT_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

template <int MR>
RNNKIT_BF16_TARGET void micro_dpbf16(index_t kc2, const bf16_t* A, index_t lda, const bf16_t* B, float* C,
                                     index_t ldc, int ncols, float beta, bool first) {
  __m512 acc0[MR], acc1[MR];
  for (int i = 0; i < MR; ++i) {
    acc0[i] = _mm512_setzero_ps();
    acc1[i] = _mm512_setzero_ps();
  }
  for (index_t kk = 0; kk < kc2; ++kk) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(B + kk * 2 * kNR);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(B + kk * 2 * kNR + kNR);
    for (int i = 0; i < MR; ++i) {
      std::int32_t pair;
      std::memcpy(&pair, A + i * lda + 2 * kk, sizeof pair);
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      acc0[i] = _mm512_dpbf16_ps(acc0[i], a, b0);
      acc1[i] = _mm512_dpbf16_ps(acc1[i], a, b1);
    }
  }
  const int n0 = std::min(ncols, 16), n1 = std::max(0, std::min(ncols - 16, 16));
  const __mmask16 m0 = static_cast<__mmask16>((1u << n0) - 1u), m1 = static_cast<__mmask16>((1u << n1) - 1u);
  const bool keep = !first || beta != 0.0f;
  const __m512 vb = _mm512_set1_ps(first ? beta : 1.0f);
  for (int i = 0; i < MR; ++i) {
    float* c = C + i * ldc;
    __m512 c0 = acc0[i], c1 = acc1[i];
    if (keep) {
      c0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, c), vb, c0);
      if (n1 > 0) c1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, c + 16), vb, c1);
    }
    _mm512_mask_storeu_ps(c, m0, c0);
    if (n1 > 0) _mm512_mask_storeu_ps(c + 16, m1, c1);
  }
}

// Few rows (a streaming step's batch): micro_dpbf16 keeps 2 * MR accumulators, and at MR = 1 or 2
// each waits for its own previous vdpbf16ps (a dependency chain of ~6 cycles), so the kernel ran at
// a third of the instruction's rate (1 x 1024 x 256: 9.4 us). This one takes NP panels at once,
// 2 * MR * NP independent sums (6.5 us), each still added over k in the same order as
// micro_dpbf16's (so every element of C is bit for bit what micro_dpbf16 computes; tested). Kept
// beside micro_dpbf16 rather than as its NP = 1 case: that generic form (all MR broadcasts held
// at once) ran the 8-row block 8-13% slower. B: the first panel, the next ones panel_stride bf16
// apart; ncols: the last panel's columns (the others are whole).
template <int MR, int NP>
RNNKIT_BF16_TARGET void panels_dpbf16(index_t kc2, const bf16_t* A, index_t lda, const bf16_t* B,
                                      index_t panel_stride, int panels, float* C, index_t ldc, int ncols,
                                      float beta, bool first) {
  __m512 acc[MR][NP][2];
  for (int i = 0; i < MR; ++i) {
    for (int q = 0; q < NP; ++q) acc[i][q][0] = acc[i][q][1] = _mm512_setzero_ps();
  }
  for (index_t kk = 0; kk < kc2; ++kk) {
    __m512bh a[MR];
    for (int i = 0; i < MR; ++i) {
      std::int32_t pair;
      std::memcpy(&pair, A + i * lda + 2 * kk, sizeof pair);
      a[i] = (__m512bh)_mm512_set1_epi32(pair);
    }
    for (int q = 0; q < NP; ++q) {
      if (q >= panels) break;
      const bf16_t* b = B + q * panel_stride + kk * 2 * kNR;
      const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
      const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + kNR);
      for (int i = 0; i < MR; ++i) {
        acc[i][q][0] = _mm512_dpbf16_ps(acc[i][q][0], a[i], b0);
        acc[i][q][1] = _mm512_dpbf16_ps(acc[i][q][1], a[i], b1);
      }
    }
  }
  const bool keep = !first || beta != 0.0f;
  const __m512 vb = _mm512_set1_ps(first ? beta : 1.0f);
  for (int q = 0; q < panels; ++q) {
    const int nc = q + 1 == panels ? ncols : static_cast<int>(kNR);
    const int n0 = std::min(nc, 16), n1 = std::max(0, std::min(nc - 16, 16));
    const __mmask16 m0 = static_cast<__mmask16>((1u << n0) - 1u), m1 = static_cast<__mmask16>((1u << n1) - 1u);
    for (int i = 0; i < MR; ++i) {
      float* c = C + i * ldc + q * kNR;
      __m512 c0 = acc[i][q][0], c1 = acc[i][q][1];
      if (keep) {
        c0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, c), vb, c0);
        if (n1 > 0) c1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, c + 16), vb, c1);
      }
      _mm512_mask_storeu_ps(c, m0, c0);
      if (n1 > 0) _mm512_mask_storeu_ps(c + 16, m1, c1);
    }
  }
}

RNNKIT_BF16_TARGET void panels_avx512bf16(int rows, index_t kc2, const bf16_t* A, index_t lda, const bf16_t* B,
                                          index_t panel_stride, int panels, float* C, index_t ldc, int ncols,
                                          float beta, bool first) {
  switch (rows) {
    case 1: panels_dpbf16<1, kGemvPanels>(kc2, A, lda, B, panel_stride, panels, C, ldc, ncols, beta, first); break;
    case 2: panels_dpbf16<2, kGemvPanels / 2>(kc2, A, lda, B, panel_stride, panels, C, ldc, ncols, beta, first); break;
    default: break;
  }
}

RNNKIT_BF16_TARGET void micro_avx512bf16(int rows, index_t kc2, const bf16_t* A, index_t lda, const bf16_t* B,
                                         float* C, index_t ldc, int ncols, float beta, bool first) {
  switch (rows) {
    case 8: micro_dpbf16<8>(kc2, A, lda, B, C, ldc, ncols, beta, first); break;
    case 7: micro_dpbf16<7>(kc2, A, lda, B, C, ldc, ncols, beta, first); break;
    case 6: micro_dpbf16<6>(kc2, A, lda, B, C, ldc, ncols, beta, first); break;
    case 5: micro_dpbf16<5>(kc2, A, lda, B, C, ldc, ncols, beta, first); break;
    case 4: micro_dpbf16<4>(kc2, A, lda, B, C, ldc, ncols, beta, first); break;
    case 3: micro_dpbf16<3>(kc2, A, lda, B, C, ldc, ncols, beta, first); break;
    case 2: micro_dpbf16<2>(kc2, A, lda, B, C, ldc, ncols, beta, first); break;
    case 1: micro_dpbf16<1>(kc2, A, lda, B, C, ldc, ncols, beta, first); break;
    default: break;
  }
}

// AMX: tiles of 16 rows x 64 bytes. C is 32 rows x one 32-column panel in four fp32 tiles
// (tmm0-3: rows 0-15 and 16-31, columns 0-15 and 16-31), A two tiles of 16 rows x 16 k pairs
// (tmm4-5), B the panel's two 16-column halves over the same 16 k pairs (tmm6-7): a panel row of
// 32 columns' pairs is 128 bytes, so each half is a tile load at a 128-byte stride. A's rows are
// padded to 32 and K to 32 (bf16_padded_rows, bf16_row_length), all zeros, so every load is whole.
struct alignas(64) TileConfig {
  std::uint8_t palette_id = 1;
  std::uint8_t start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

#define RNNKIT_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw")))

// One 16 x 16 fp32 tile's valid part into C: rows x cols of it, with beta.
RNNKIT_AMX_TARGET void store_tile(const float* tile, int rows, int cols, float beta, float* C, index_t ldc) {
  const __mmask16 m = static_cast<__mmask16>((1u << cols) - 1u);
  for (int r = 0; r < rows; ++r) {
    __m512 v = _mm512_load_ps(tile + 16 * r);
    if (beta != 0.0f) v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, C + r * ldc), _mm512_set1_ps(beta), v);
    _mm512_mask_storeu_ps(C + r * ldc, m, v);
  }
}

RNNKIT_AMX_TARGET void gemm_amx(index_t M, index_t K2, index_t cb, index_t ce, const bf16_t* A, index_t lda,
                                const bf16_t* packed, float beta, float* C, index_t ldc) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
  alignas(64) float out[16 * 16];
  const index_t a_stride = lda * index_t(sizeof(bf16_t)), b_stride = 2 * kNR * index_t(sizeof(bf16_t));
  const index_t c_stride = ldc * index_t(sizeof(float));
  // beta 0 or 1 and a whole 16 x 16 block: the accumulator tile starts from C (or zero) and is
  // stored straight back; other blocks go through `out`.
#define RNNKIT_AMX_START(t, rows, cols, c)                                       \
  do {                                                                           \
    if (direct_beta && beta == 1.0f && (rows) == 16 && (cols) == 16) {           \
      _tile_loadd(t, c, c_stride);                                               \
    } else {                                                                     \
      _tile_zero(t);                                                             \
    }                                                                            \
  } while (0)
#define RNNKIT_AMX_FINISH(t, rows, cols, c)                                      \
  do {                                                                           \
    if ((rows) > 0 && (cols) > 0) {                                              \
      if (direct_beta && (rows) == 16 && (cols) == 16) {                         \
        _tile_stored(t, c, c_stride);                                            \
      } else {                                                                   \
        _tile_stored(t, out, 64);                                                \
        store_tile(out, rows, cols, beta, c, ldc);                               \
      }                                                                          \
    }                                                                            \
  } while (0)
  // Row blocks outer, panels inner, all of K per block: a 32-row block of A stays in L1 while
  // the panels of B stream past it. Measured against blocking B GotoBLAS-style (512 k x 1024
  // columns per block, C accumulating between k chunks), interleaved in one process on a
  // Sapphire-Rapids-class core: blocking was 0.71-1.01x as fast at the layers' shapes (1.21x
  // only at 64 x 2048 x 512), so there is none; software prefetch of the next A and B tiles
  // made no difference beyond the machine's noise either.
  const index_t pb = cb / kNR, pe = (ce + kNR - 1) / kNR;
  const bool direct_beta = beta == 0.0f || beta == 1.0f;
  for (index_t i = 0; i < M; i += 32) {
    const int r0 = static_cast<int>(std::min<index_t>(16, M - i));
    const int r1 = static_cast<int>(std::max<index_t>(0, std::min<index_t>(16, M - i - 16)));
    const bf16_t* Ai = A + i * lda;
    for (index_t p = pb; p < pe; ++p) {
      const bf16_t* Bp = packed + p * K2 * 2 * kNR;
      const int ncols = static_cast<int>(std::min(kNR, ce - p * kNR));
      const int c0 = std::min(ncols, 16), c1 = std::max(0, ncols - 16);
      float* Ci = C + i * ldc + p * kNR;
      RNNKIT_AMX_START(0, r0, c0, Ci);
      RNNKIT_AMX_START(1, r0, c1, Ci + 16);
      if (r1 > 0) {
        RNNKIT_AMX_START(2, r1, c0, Ci + 16 * ldc);
        RNNKIT_AMX_START(3, r1, c1, Ci + 16 * ldc + 16);
        for (index_t kk = 0; kk < K2; kk += 16) {
          _tile_loadd(4, Ai + 2 * kk, a_stride);
          _tile_loadd(6, Bp + kk * 2 * kNR, b_stride);
          _tile_loadd(5, Ai + 16 * lda + 2 * kk, a_stride);
          _tile_loadd(7, Bp + kk * 2 * kNR + kNR, b_stride);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(3, 5, 7);
        }
      } else {  // 16 rows or fewer: one A tile (a step GEMM of a small batch)
        for (index_t kk = 0; kk < K2; kk += 16) {
          _tile_loadd(4, Ai + 2 * kk, a_stride);
          _tile_loadd(6, Bp + kk * 2 * kNR, b_stride);
          _tile_loadd(7, Bp + kk * 2 * kNR + kNR, b_stride);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
        }
      }
      RNNKIT_AMX_FINISH(0, r0, c0, Ci);
      RNNKIT_AMX_FINISH(1, r0, c1, Ci + 16);
      RNNKIT_AMX_FINISH(2, r1, c0, Ci + 16 * ldc);
      RNNKIT_AMX_FINISH(3, r1, c1, Ci + 16 * ldc + 16);
    }
  }
#undef RNNKIT_AMX_START
#undef RNNKIT_AMX_FINISH
  _tile_release();
}

// Whether the CPU has AMX-BF16 and Linux lets this process use its tile state (the kernel asks
// each process to request it, arch_prctl ARCH_REQ_XCOMP_PERM; Linux 5.16 and later).
bool amx_usable() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;
  if (!tile || !bf16) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// float -> bf16 (round to nearest even) 16 at a time.
RNNKIT_BF16_TARGET void convert_row_avx512bf16(const float* src, index_t n, bf16_t* dst) {
  index_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + j));
    std::memcpy(dst + j, &v, sizeof v);
  }
  for (; j < n; ++j) dst[j] = to_bf16(src[j]);
}

// The packing and transposing conversions, 32 k (16 pairs) x 16 rows or columns at a time: each
// source row's values become 32-bit bf16 pairs, and a 16 x 16 transpose of those pairs turns
// them around. Loads past the valid rows, columns or K are masked to zero, which is also the
// padding the layouts need.
RNNKIT_BF16_TARGET inline __mmask16 lanes(index_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffffu) : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1u);
}

// 16 floats of `lo` and of `hi` (lanes i) -> 16 pairs (lo[i], hi[i]), lo in the low half.
RNNKIT_BF16_TARGET inline __m512i interleave_pairs(__m512 lo, __m512 hi) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

// 32 consecutive floats (n valid) -> 32 bf16 in order, i.e. 16 pairs (k, k+1).
RNNKIT_BF16_TARGET inline __m512i row_pairs(const float* p, index_t n) {
  const __m512 lo = _mm512_maskz_loadu_ps(lanes(n), p), hi = _mm512_maskz_loadu_ps(lanes(n - 16), p + 16);
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

// GCC 12's unpack intrinsics start from _mm512_undefined_epi32(), which that compiler reports as
// -Wuninitialized (GCC bug 105593, fixed in 12.3): silenced for this function only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
RNNKIT_BF16_TARGET void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

RNNKIT_BF16_TARGET void pack_panels_avx512bf16(const float* src, index_t ld, bool transposed, index_t K, index_t cols,
                                               index_t p0, index_t p1, bf16_t* out) {
  const index_t K2 = bf16_row_length(K) / 2;
  if (!transposed) {
    // B [K, cols]: rows 2kk and 2kk+1 interleaved into pairs, 16 columns at a time. Row pairs
    // outer, so the source is read along its rows: a large X walked panel by panel (down 16
    // columns of every row, 2 KiB apart) was 11% of a large LSTM training step (perf).
    for (index_t kk = 0; kk < K2; ++kk) {
      const index_t k = 2 * kk;
      const float* r0 = src + k * ld;
      const float* r1 = r0 + ld;
      for (index_t c0 = p0 * kNR; c0 < p1 * kNR; c0 += 16) {
        const index_t width = cols - c0;  // may be <= 0: the padding of the last panel
        const __m512 lo = k < K && width > 0 ? _mm512_maskz_loadu_ps(lanes(width), r0 + c0) : _mm512_setzero_ps();
        const __m512 hi = k + 1 < K && width > 0 ? _mm512_maskz_loadu_ps(lanes(width), r1 + c0) : _mm512_setzero_ps();
        const index_t p = c0 / kNR, half = (c0 / 16) % 2;
        _mm512_storeu_si512(out + (p * K2 + kk) * 2 * kNR + 32 * half, interleave_pairs(lo, hi));
      }
    }
    return;
  }
  for (index_t p = p0; p < p1; ++p) {
    bf16_t* panel = out + p * K2 * 2 * kNR;
    for (index_t half = 0; half < 2; ++half) {
      const index_t c0 = p * kNR + 16 * half, width = cols - c0;  // columns of this half (may be <= 0)
      {
        // B^T [cols, K]: column c is a source row; 16 of them, 16 pairs each, transposed.
        for (index_t kk0 = 0; kk0 < K2; kk0 += 16) {
          __m512i r[16];
          for (index_t i = 0; i < 16; ++i) {
            r[i] = i < width ? row_pairs(src + (c0 + i) * ld + 2 * kk0, K - 2 * kk0) : _mm512_setzero_si512();
          }
          transpose16(r);
          for (index_t i = 0; i < 16; ++i) _mm512_storeu_si512(panel + (kk0 + i) * 2 * kNR + 32 * half, r[i]);
        }
      }
    }
  }
}

RNNKIT_BF16_TARGET void convert_transposed_avx512bf16(const float* src, index_t ld, index_t M, index_t K, bf16_t* out,
                                                      index_t row) {
  // 16 rows m of the output x 32 k: pairs (k, k+1) of 16 m from two source rows, transposed.
  // In blocks of 256 m, k inside: the source is read 1 KiB of a row at a time and 256 output
  // rows are written along; m blocks of 16 outside k (each pass down all T*N source rows for
  // 64 bytes of each) made this 11% of a large LSTM training step (perf).
  constexpr index_t kMBlock = 256;
  for (index_t mb = 0; mb < M; mb += kMBlock)
  for (index_t k0 = 0; k0 < row; k0 += 32)
  for (index_t m0 = mb; m0 < std::min(M, mb + kMBlock); m0 += 16) {
    const __mmask16 mm = lanes(M - m0);
    {
      __m512i r[16];
      for (index_t i = 0; i < 16; ++i) {
        const index_t k = k0 + 2 * i;
        const __m512 lo = k < K ? _mm512_maskz_loadu_ps(mm, src + k * ld + m0) : _mm512_setzero_ps();
        const __m512 hi = k + 1 < K ? _mm512_maskz_loadu_ps(mm, src + (k + 1) * ld + m0) : _mm512_setzero_ps();
        r[i] = interleave_pairs(lo, hi);
      }
      transpose16(r);
      for (index_t i = 0; i < 16 && m0 + i < M; ++i) _mm512_storeu_si512(out + (m0 + i) * row + k0, r[i]);
    }
  }
}
#endif  // RNNKIT_X86_KERNELS

void convert_row_scalar(const float* src, index_t n, bf16_t* dst) {
  for (index_t j = 0; j < n; ++j) dst[j] = to_bf16(src[j]);
}

void pack_panels_scalar(const float* src, index_t ld, bool transposed, index_t K, index_t cols, index_t p0,
                        index_t p1, bf16_t* out) {
  const index_t K2 = bf16_row_length(K) / 2;
  for (index_t p = p0; p < p1; ++p) {
    bf16_t* panel = out + p * K2 * 2 * kNR;
    const index_t width = std::min(kNR, cols - p * kNR);
    // Zero first: padding columns, and the odd k's partner past K.
    std::memset(panel, 0, static_cast<std::size_t>(K2 * 2 * kNR) * sizeof(bf16_t));
    // Read the source along its rows either way (a column walk over a large X costs a cache
    // line per element); the panel of one p is small enough to take scattered writes.
    if (transposed) {
      for (index_t j = 0; j < width; ++j) {
        const float* row = src + (p * kNR + j) * ld;
        for (index_t k = 0; k < K; ++k) panel[(k / 2) * 2 * kNR + 2 * j + (k & 1)] = to_bf16(row[k]);
      }
    } else {
      for (index_t k = 0; k < K; ++k) {
        const float* row = src + k * ld + p * kNR;
        bf16_t* o = panel + (k / 2) * 2 * kNR + (k & 1);
        for (index_t j = 0; j < width; ++j) o[2 * j] = to_bf16(row[j]);
      }
    }
  }
}

// op(A)[m, k] = src[k * ld + m] into out rows of `row`: along the source's rows (contiguous m),
// writing M output rows at a stride.
void convert_transposed_scalar(const float* src, index_t ld, index_t M, index_t K, bf16_t* out, index_t row) {
  for (index_t k = 0; k < K; ++k) {
    const float* s = src + k * ld;
    for (index_t m = 0; m < M; ++m) out[m * row + k] = to_bf16(s[m]);
  }
}


struct Kernel {
  MicroFn micro = &micro_widening;
  WholeFn whole = nullptr;  // set: it runs instead of the micro-kernel loop
  PanelsFn panels = nullptr;  // set: it runs calls of up to kGemvRows rows, instead of both
  void (*convert_row)(const float*, index_t, bf16_t*) = &convert_row_scalar;
  // Panels [p0, p1) of pack_b_bf16, and convert_a_bf16's transposed case.
  void (*pack)(const float*, index_t, bool, index_t, index_t, index_t, index_t, bf16_t*) = &pack_panels_scalar;
  void (*convert_transposed)(const float*, index_t, index_t, index_t, bf16_t*, index_t) = &convert_transposed_scalar;
  const char* name = "fp32_fma";
};

// The kernels this CPU can run, best first: AMX, AVX512_BF16, the widening fallback.
std::vector<Kernel> available_kernels() {
  std::vector<Kernel> ks;
#if defined(RNNKIT_X86_KERNELS)
  __builtin_cpu_init();
  const bool avx512bf16 = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
  if (avx512bf16) {
    static const bool amx = amx_usable();  // asked once per process
    if (amx) {
      ks.push_back({&micro_avx512bf16, &gemm_amx, &panels_avx512bf16, &convert_row_avx512bf16,
                    &pack_panels_avx512bf16, &convert_transposed_avx512bf16, "amx_bf16"});
    }
    ks.push_back({&micro_avx512bf16, nullptr, &panels_avx512bf16, &convert_row_avx512bf16,
                  &pack_panels_avx512bf16, &convert_transposed_avx512bf16, "avx512_bf16"});
  }
#endif
  ks.push_back(Kernel{});
  return ks;
}

Kernel select_kernel() { return available_kernels().front(); }

Kernel& kernel() {
  static Kernel k = select_kernel();
  return k;
}

// One thread's grow-only workspace.
struct Workspace {
  std::vector<bf16_t> a, b;
};
Workspace& workspace() {
  thread_local Workspace w;
  return w;
}
bf16_t* grow(std::vector<bf16_t>& v, index_t n) {
  if (static_cast<index_t>(v.size()) < n) v.resize(static_cast<std::size_t>(n));
  return v.data();
}

}  // namespace

const char* bf16_kernel_name() { return kernel().name; }

void set_bf16_kernel(const std::string& name) {
  const std::vector<Kernel> ks = available_kernels();
  if (name == "auto") {
    kernel() = ks.front();
    return;
  }
  std::string names = "'auto'";
  for (const Kernel& k : ks) {
    if (name == k.name) {
      kernel() = k;
      return;
    }
    names += concat(", '", k.name, "'");
  }
  throw_expected("bf16 kernel", concat("one this CPU runs (", names, ")"), concat("'", name, "'"));
}

std::vector<std::string> bf16_kernel_names() {
  std::vector<std::string> out;
  for (const Kernel& k : available_kernels()) out.push_back(k.name);
  return out;
}

index_t bf16_panel_width() { return kNR; }

index_t bf16_packed_size(index_t K, index_t cols) {
  const index_t panels = (cols + kNR - 1) / kNR;
  return checked_mul(checked_mul(panels, bf16_row_length(K), "packed bf16 panels"), kNR, "packed bf16 panels");
}

void pack_b_bf16(const float* src, index_t ld, bool transposed, index_t K, index_t cols, index_t c0, index_t c1,
                 bf16_t* out) {
  if (c1 <= c0) return;  // an empty share may start off a panel boundary (see pack_b)
  assert(c0 % kNR == 0);
  kernel().pack(src, ld, transposed, K, cols, c0 / kNR, (c1 + kNR - 1) / kNR, out);
}

void convert_a_bf16(const float* src, index_t ld, bool transposed, index_t M, index_t K, bf16_t* out) {
  const index_t row = bf16_row_length(K);
  if (!transposed) {
    for (index_t m = 0; m < M; ++m) kernel().convert_row(src + m * ld, K, out + m * row);
  } else {
    kernel().convert_transposed(src, ld, M, K, out, row);
  }
  for (index_t m = 0; m < M && row > K; ++m) std::memset(out + m * row + K, 0, static_cast<std::size_t>(row - K) * sizeof(bf16_t));
  // Zero rows up to bf16_padded_rows(M): the AMX kernel loads A 32 rows at a time.
  std::memset(out + M * row, 0, static_cast<std::size_t>((bf16_padded_rows(M) - M) * row) * sizeof(bf16_t));
}

void packed_gemm_bf16(index_t M, index_t K, index_t cols, index_t cb, index_t ce, const bf16_t* A, index_t lda,
                      const bf16_t* packed, float beta, float* C, index_t ldc) {
  (void)cols;
  if (M <= 0 || ce <= cb) return;
  if (K == 0) {
    for (index_t i = 0; i < M; ++i) {
      for (index_t c = cb; c < ce; ++c) C[i * ldc + c] = beta == 0.0f ? 0.0f : beta * C[i * ldc + c];
    }
    return;
  }
  assert(cb % kNR == 0 && lda % 2 == 0);
  const index_t K2 = bf16_row_length(K) / 2;
  // A streaming step's few rows: the panel kernel, also where AMX is chosen (AMX pads A to 32
  // rows; at 1 x 1024 x 256 it took 13.6 us against 6.5).
  if (kernel().panels != nullptr && M <= kGemvRows) {
    const PanelsFn panels = kernel().panels;
    const index_t p0 = cb / kNR, p1 = (ce + kNR - 1) / kNR, stride = K2 * 2 * kNR;
    const index_t per = M == 1 ? kGemvPanels : kGemvPanels / 2;  // panels a call takes
    for (index_t k0 = 0; k0 < K2; k0 += kKPairs) {
      const index_t kc2 = std::min(kKPairs, K2 - k0);
      for (index_t p = p0; p < p1; p += per) {
        const int np = static_cast<int>(std::min<index_t>(per, p1 - p));
        const int ncols = static_cast<int>(std::min(kNR, ce - (p + np - 1) * kNR));
        panels(static_cast<int>(M), kc2, A + 2 * k0, lda, packed + (p * K2 + k0) * 2 * kNR, stride, np,
               C + p * kNR, ldc, ncols, beta, k0 == 0);
      }
    }
    return;
  }
  if (kernel().whole != nullptr) return kernel().whole(M, K2, cb, ce, A, lda, packed, beta, C, ldc);
  const MicroFn micro = kernel().micro;
  for (index_t k0 = 0; k0 < K2; k0 += kKPairs) {
    const index_t kc2 = std::min(kKPairs, K2 - k0);
    const bool first = k0 == 0;
    for (index_t p = cb / kNR; p * kNR < ce; ++p) {
      const bf16_t* Bp = packed + (p * K2 + k0) * 2 * kNR;
      const int ncols = static_cast<int>(std::min(kNR, ce - p * kNR));
      float* Cp = C + p * kNR;
      for (index_t i = 0; i < M; i += kMR) {
        const int rows = static_cast<int>(std::min<index_t>(kMR, M - i));
        micro(rows, kc2, A + i * lda + 2 * k0, lda, Bp, Cp + i * ldc, ldc, ncols, beta, first);
      }
    }
  }
}

bf16_t* bf16_a_workspace(index_t elems) { return grow(workspace().a, elems); }

void packed_gemm_bf16_from_float(index_t M, index_t K, index_t cols, index_t cb, index_t ce, const float* A,
                                 index_t lda, const bf16_t* packed, float beta, float* C, index_t ldc) {
  const index_t row = bf16_row_length(K);
  bf16_t* a16 = bf16_a_workspace(checked_mul(bf16_padded_rows(M), row, "bf16 step rows"));
  convert_a_bf16(A, lda, false, M, K, a16);
  packed_gemm_bf16(M, K, cols, cb, ce, a16, row, packed, beta, C, ldc);
}

void gemm_bf16(Trans trans_a, Trans trans_b, index_t m, index_t n, index_t k, const float* a, index_t lda,
               const float* b, index_t ldb, float beta, float* c, index_t ldc) {
  if (m <= 0 || n <= 0) return;
  Workspace& ws = workspace();
  bf16_t* packed = grow(ws.b, bf16_packed_size(k, n));
  pack_b_bf16(b, ldb, trans_b == Trans::kYes, k, n, 0, n, packed);
  const index_t row = bf16_row_length(k);
  bf16_t* a16 = grow(ws.a, checked_mul(bf16_padded_rows(std::min(m, kRowBlock)), row, "bf16 rows"));
  for (index_t r0 = 0; r0 < m; r0 += kRowBlock) {
    const index_t rows = std::min(kRowBlock, m - r0);
    const bool ta = trans_a == Trans::kYes;
    convert_a_bf16(ta ? a + r0 : a + r0 * lda, lda, ta, rows, k, a16);
    packed_gemm_bf16(rows, k, n, 0, n, a16, row, packed, beta, c + r0 * ldc, ldc);
  }
}

}  // namespace cpu
}  // namespace rnnkit
