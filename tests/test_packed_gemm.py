"""The packed per-step GEMM (cpp/src/cpu/packed_gemm.cpp) on its own, against NumPy.

Every recurrent step multiplies by W_hh through pack_b + packed_gemm when the CPU has the kernels
(AVX2+FMA or AVX-512F). The layer tests reach it only at their own sizes; here the kernel meets
every row count its register blocking splits differently (1 to 20 rows), column counts that leave
a partial, zero-padded last panel, both source layouts, beta 0 and 1, and column sub-ranges.
"""

from __future__ import annotations

import numpy as np
import pytest

from rnnkit import _core

# One K-long dot product per output, summed in float64 by NumPy: float32 rounding of a sum of K
# products bounds the difference at about K * 2**-24 relative to sum |a_k b_k|.
PACKED_RTOL = {np.float32: 1e-5, np.float64: 1e-13}


def _available(dtype) -> bool:
    """Whether this CPU has the kernel (panel width 0: none, and the layers use BLAS instead)."""
    return _core._packed_panel_width(np.dtype(dtype).name) > 0


def _check(got: np.ndarray, want: np.ndarray, scale: np.ndarray, dtype) -> None:
    err = np.abs(got.astype(np.float64) - want) / np.maximum(scale, 1e-30)
    assert err.max() <= PACKED_RTOL[dtype], f"max relative error {err.max():.3g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("transposed", [True, False], ids=["B^T", "B"])
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 16, 17, 20])
def test_packed_gemm_matches_numpy(rng, dtype, transposed, rows):
    if not _available(dtype):
        pytest.skip(f"this CPU has no packed {np.dtype(dtype).name} kernel (AVX2+FMA or AVX-512F)")
    nr = _core._packed_panel_width(np.dtype(dtype).name)
    for K, cols in ((1, 1), (7, nr - 3), (37, 2 * nr + 5), (129, 3 * nr)):
        a = rng.standard_normal((rows, K)).astype(dtype)
        b = rng.standard_normal((K, cols)).astype(dtype)
        source = np.ascontiguousarray(b.T) if transposed else b
        c0 = rng.standard_normal((rows, cols)).astype(dtype)
        scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)) + np.abs(c0)
        for beta in (0.0, 1.0):
            c = c0.copy()
            _core._packed_gemm(a, source, transposed, beta, c, 0, cols)
            want = beta * c0.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
            _check(c, want, scale, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_packed_gemm_writes_only_its_column_range(rng, dtype):
    """Threads split the columns panel by panel: a call on [cb, ce) leaves every other column alone."""
    if not _available(dtype):
        pytest.skip(f"this CPU has no packed {np.dtype(dtype).name} kernel (AVX2+FMA or AVX-512F)")
    nr = _core._packed_panel_width(np.dtype(dtype).name)
    rows, K, cols = 9, 23, 3 * nr + 4
    a = rng.standard_normal((rows, K)).astype(dtype)
    b = rng.standard_normal((K, cols)).astype(dtype)
    for cb, ce in ((0, nr), (nr, 3 * nr), (2 * nr, cols), (3 * nr, cols), (nr, nr)):
        c0 = rng.standard_normal((rows, cols)).astype(dtype)
        c = c0.copy()
        _core._packed_gemm(a, np.ascontiguousarray(b.T), True, 1.0, c, cb, ce)
        want = c0.astype(np.float64)
        want[:, cb:ce] += a.astype(np.float64) @ b[:, cb:ce].astype(np.float64)
        np.testing.assert_array_equal(c[:, :cb], c0[:, :cb])
        np.testing.assert_array_equal(c[:, ce:], c0[:, ce:])
        scale = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)) + np.abs(c0)
        _check(c, want, scale, dtype)


def test_packed_gemm_refuses_a_range_that_is_not_panel_aligned(rng):
    if not _available(np.float32):
        pytest.skip("this CPU has no packed float32 kernel (AVX2+FMA or AVX-512F)")
    nr = _core._packed_panel_width("float32")
    a = np.ones((2, 3), np.float32)
    b = np.ones((nr + 1, 3), np.float32)
    c = np.zeros((2, nr + 1), np.float32)
    with pytest.raises(ValueError, match="cb, ce"):
        _core._packed_gemm(a, b, True, 0.0, c, 1, nr + 1)
