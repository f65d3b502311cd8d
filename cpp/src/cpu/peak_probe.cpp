// Peak probes (peak_probe.h): tight loops of independent register-only FMAs, compiled for their
// ISA by target attributes and chosen at run time, so the module's own compile flags (and the
// machine that built it) do not decide what is measured.
#include "cpu/peak_probe.h"

#include <chrono>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RNNKIT_X86 1
#endif

namespace rnnkit {
namespace cpu {
namespace {

constexpr int kAccumulators = 16;  // enough independent chains to cover FMA latency x throughput

#if defined(RNNKIT_X86)
// GCC 12's reduce intrinsics start from _mm512_undefined_*(), which that compiler reports as
// -Wuninitialized (GCC bug 105593, fixed in 12.3): silenced for these probe loops only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
__attribute__((target("avx512f"))) float fma_avx512(std::int64_t iters) {
  __m512 acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_set1_ps(1e-3f * static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(0.9999999f), b = _mm512_set1_ps(1e-9f);
  for (std::int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  __m512 sum = acc[0];
  for (int i = 1; i < kAccumulators; ++i) sum = _mm512_add_ps(sum, acc[i]);
  return _mm512_reduce_add_ps(sum);
}

__attribute__((target("avx2,fma"))) float fma_avx2(std::int64_t iters) {
  __m256 acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm256_set1_ps(1e-3f * static_cast<float>(i));
  const __m256 a = _mm256_set1_ps(0.9999999f), b = _mm256_set1_ps(1e-9f);
  for (std::int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
  }
  __m256 sum = acc[0];
  for (int i = 1; i < kAccumulators; ++i) sum = _mm256_add_ps(sum, acc[i]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0.0f;
  for (float v : lanes) total += v;
  return total;
}

__attribute__((target("avx512f,avx512bf16"))) float dot_bf16(std::int64_t iters) {
  __m512 acc[kAccumulators];
  for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_set1_ps(1e-3f * static_cast<float>(i));
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-4f), _mm512_set1_ps(-1e-4f));
  for (std::int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < kAccumulators; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, a);
  }
  __m512 sum = acc[0];
  for (int i = 1; i < kAccumulators; ++i) sum = _mm512_add_ps(sum, acc[i]);
  return _mm512_reduce_add_ps(sum);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // RNNKIT_X86

// Runs `loop` long enough for `seconds` (a calibration run first) and returns GFLOP/s, where one
// iteration is `flops_per_iter` FLOPs. The best of three timed runs: the ceiling, not the average.
template <typename Loop>
double measure(Loop&& loop, double flops_per_iter, double seconds) {
  using clock = std::chrono::steady_clock;
  volatile float sink = 0.0f;
  std::int64_t iters = 1 << 14;
  for (;;) {  // calibrate: at least ~10 ms per run
    const auto t0 = clock::now();
    sink = sink + loop(iters);
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    if (s > 0.01 || iters > (std::int64_t(1) << 40)) {
      iters = static_cast<std::int64_t>(static_cast<double>(iters) * (seconds / 3.0) / (s > 0.0 ? s : 1e-9)) + 1;
      break;
    }
    iters *= 4;
  }
  double best = 0.0;
  for (int run = 0; run < 3; ++run) {
    const auto t0 = clock::now();
    sink = sink + loop(iters);
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    const double gflops = flops_per_iter * static_cast<double>(iters) / s / 1e9;
    if (gflops > best) best = gflops;
  }
  (void)sink;
  return best;
}

}  // namespace

PeakProbe fp32_fma_peak(double seconds) {
  PeakProbe p;
#if defined(RNNKIT_X86)
  if (__builtin_cpu_supports("avx512f")) {
    p.isa = "avx512";
    p.gflops = measure(fma_avx512, 2.0 * 16 * kAccumulators, seconds);
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    p.isa = "avx2+fma";
    p.gflops = measure(fma_avx2, 2.0 * 8 * kAccumulators, seconds);
  }
#else
  (void)seconds;
#endif
  return p;
}

PeakProbe bf16_dot_peak(double seconds) {
  PeakProbe p;
#if defined(RNNKIT_X86)
  if (__builtin_cpu_supports("avx512bf16")) {
    p.isa = "avx512_bf16";
    p.gflops = measure(dot_bf16, 4.0 * 16 * kAccumulators, seconds);
  }
#else
  (void)seconds;
#endif
  return p;
}

std::string cpu_vector_isa() {
#if defined(RNNKIT_X86)
  if (__builtin_cpu_supports("avx512f")) return "avx512";
  if (__builtin_cpu_supports("avx2")) return "avx2";
  if (__builtin_cpu_supports("avx")) return "avx";
  if (__builtin_cpu_supports("sse2")) return "sse2";
#endif
  return "other";
}

}  // namespace cpu
}  // namespace rnnkit
