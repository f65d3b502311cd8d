"""The CUDA build on a GPU machine. Skipped, with the reason, where no usable GPU is present."""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import _core

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not rnnkit.cuda.is_available(), reason=f"CUDA unavailable: {rnnkit.cuda.status()}"),
]


def test_selftest_kernel_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000).astype(np.float32)
    y = rng.standard_normal(1000).astype(np.float32)
    out = np.asarray(_core.cuda_selftest_axpy(2.5, x.tolist(), y.tolist()), np.float32)
    np.testing.assert_allclose(out, 2.5 * x + y, rtol=1e-6, atol=1e-6)
