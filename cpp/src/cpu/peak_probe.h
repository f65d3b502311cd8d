// One core's arithmetic ceilings and the vector ISA it supports, for the benchmarks
// (bench/goals.py reports every row as a share of the peaks measured in the same run) and for
// naming a mismatch between that ISA and the kernel OpenBLAS runs (rnnkit info).
#pragma once

#include <string>

namespace rnnkit {
namespace cpu {

struct PeakProbe {
  double gflops = 0.0;  // 0: the instructions are not available on this CPU
  std::string isa;      // what the probe ran: "avx512", "avx2+fma", "avx512_bf16", or "" (none)
};

// fp32 multiply-adds from 16 independent accumulator registers (no memory traffic) for about
// `seconds` on the calling thread: the core's FMA peak. Counts 2 FLOPs per multiply-add.
PeakProbe fp32_fma_peak(double seconds);
// The same for AVX512_BF16's dot product (vdpbf16ps: 2 bf16 products added into each fp32 lane),
// 4 FLOPs per lane per instruction; gflops 0 on CPUs without it.
PeakProbe bf16_dot_peak(double seconds);
// The widest vector ISA the CPU supports: "avx512", "avx2", "avx", "sse2" or "other".
std::string cpu_vector_isa();

}  // namespace cpu
}  // namespace rnnkit
