// precision="bfloat16" on the CUDA backend: the GEMMs of the layer loops and the network's output
// layer read bfloat16 operands and sum in float32, as the CPU backend's do (cpu/bf16_gemm.h); the
// parameters, gradients, states and cell math stay float32.
//
// How the operands get to bf16: a weight is rounded once per call into a copy the whole loop reads
// (RoundedWeights); an activation (an input, a state, a gate gradient) is rounded right before the
// GEMM that reads it, into one of two scratch slots (one per operand), by the ToBf16 kernel -- inside
// a graphed loop a launch like any other, so nothing is allocated in the time loop. Rounding is
// rnnkit/common.h's to_bf16 (to nearest even), the CPU's, so both backends multiply the same values
// and differ only in the order of their float32 sums.
#pragma once

#include <type_traits>

#include "dev_blas.h"
#include "device.h"

namespace rnnkit {
namespace cuda {

// dst [rows, cols] (dense, leading dimension cols) = to_bf16(src [rows, cols], leading dimension ld).
struct ToBf16 {
  index_t rows, cols, ld;
  const float* src;
  bf16_t* dst;

  RNNKIT_DEVICE void operator()(const Thread& th) const {
    if (ld == cols) {  // dense: no index arithmetic per element
      for (index_t i = th.global(); i < rows * cols; i += th.stride()) dst[i] = to_bf16(src[i]);
      return;
    }
    for (index_t i = th.global(); i < rows * cols; i += th.stride()) {
      const index_t r = i / cols, j = i % cols;
      dst[i] = to_bf16(src[r * ld + j]);
    }
  }
};

// Elements rounded up to a multiple of 8 (16 bytes of bf16): where a copy or slot starts, so that
// cuBLAS may use its tensor-core kernels (they want 16-byte aligned operands).
inline index_t bf16_aligned(index_t elems) { return (elems + 7) / 8 * 8; }

// One operand of a row-major GEMM (gemm_rm): its float32 (or float64) values with their leading
// dimension and, for a weight, its bf16 copy with the same layout (null: rounded at the GEMM).
template <typename S>
struct Operand {
  const S* v;
  index_t ld;
  const bf16_t* rounded = nullptr;
};

// A bf16 copy's sub-matrix from element `offset` (null stays null: float32 precision).
inline const bf16_t* bf16_at(const bf16_t* copy, index_t offset) { return copy ? copy + offset : nullptr; }

// The two activation slots of a call (each `slot_elems` bf16 elements, the largest operand a GEMM
// of the call rounds); both null at float32 precision.
struct Bf16Slots {
  bf16_t* slot[2] = {nullptr, nullptr};
  index_t slot_elems = 0;
  bool on() const { return slot[0] != nullptr; }
};

// The bf16 scratch of a call: its two activation slots, then `extra_elems` more (the weights'
// copies); nothing unless `on`.
struct Bf16Scratch {
  DeviceBuffer<bf16_t> block;
  Bf16Slots slots;
  bf16_t* extra = nullptr;

  Bf16Scratch(bool on, index_t slot_elems, index_t extra_elems = 0) {
    if (!on) return;
    slot_elems = bf16_aligned(slot_elems);
    block.allocate(checked_add(checked_mul(2, slot_elems, "bf16 scratch"), extra_elems, "bf16 scratch"),
                   "bf16 scratch");
    slots.slot_elems = slot_elems;
    slots.slot[0] = block.data();
    slots.slot[1] = block.data() + slot_elems;
    extra = block.data() + 2 * slot_elems;
  }
};

// Rounds `v` [rows, cols] (leading dimension ld) into `dst` (dense) and returns it.
inline const bf16_t* round_rows(Stream stream, const float* v, index_t rows, index_t cols, index_t ld, bf16_t* dst) {
  RNNKIT_LAUNCH(stream, rows * cols, (ToBf16{rows, cols, ld, v, dst}));
  return dst;
}

// `v` [rows, ld] (dense) as an operand rounded once, into `slot`, for several GEMMs that read it
// (the first rounding of another operand into that slot ends its use); at float32 precision (slots
// off, or S double) the plain operand.
template <typename S>
Operand<S> rounded_once(const Bf16Slots& bf16, Stream stream, const S* v, index_t rows, index_t ld, int slot) {
  Operand<S> o{v, ld};
  if constexpr (std::is_same_v<S, float>) {
    if (bf16.on()) o.rounded = round_rows(stream, v, rows, ld, ld, bf16.slot[slot]);
  } else {
    (void)bf16, (void)stream, (void)rows, (void)slot;
  }
  return o;
}

// Row-major C[m,n] = op(A) op(B) + beta * C (alpha 1, as every GEMM of the loops) at the call's
// precision: the dtype's own GEMM, or (slots on, S float) bf16 operands -- a weight's copy, or the
// activation rounded into its slot -- summed in float32.
template <typename S>
void gemm_at_precision(const Bf16Slots& bf16, Stream stream, Op op_a, Op op_b, index_t m, index_t n, index_t k,
                       const Operand<S>& a, const Operand<S>& b, S beta, S* c, index_t ldc) {
  if constexpr (std::is_same_v<S, float>) {
    if (bf16.on()) {
      if (m == 0 || n == 0) return;
      // op(A) [m, k] is stored [m, k] or [k, m]; op(B) [k, n] is stored [k, n] or [n, k].
      auto rounded = [&](const Operand<S>& o, bool first, index_t rows, index_t cols, index_t* ld) {
        if (o.rounded != nullptr) {
          *ld = o.ld;
          return o.rounded;
        }
        assert(rows * cols <= bf16.slot_elems);
        *ld = cols;
        return round_rows(stream, o.v, rows, cols, o.ld, bf16.slot[first ? 0 : 1]);
      };
      index_t lda = 0, ldb = 0;
      const bf16_t* a16 = op_a == Op::kN ? rounded(a, true, m, k, &lda) : rounded(a, true, k, m, &lda);
      const bf16_t* b16 = op_b == Op::kN ? rounded(b, false, k, n, &ldb) : rounded(b, false, n, k, &ldb);
      gemm_rm(stream, op_a, op_b, m, n, k, 1.0f, a16, lda, b16, ldb, beta, c, ldc);
      return;
    }
  }
  gemm_rm<S>(stream, op_a, op_b, m, n, k, S(1), a.v, a.ld, b.v, b.ld, beta, c, ldc);
}

}  // namespace cuda
}  // namespace rnnkit
