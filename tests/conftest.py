"""Shared test configuration: named tolerances, seeded data, the optional PyTorch oracle.

Tolerances are named here and nowhere else. "Relative" means max|got - want| / max|want| over the
array (reference.max_relative_diff) unless a test says otherwise.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

# rnnkit vs the float64 NumPy reference: one layer, and deeper stacks (layers, directions,
# LayerNorm) where float32 rounding compounds over more operations.
REFERENCE_RTOL = {np.float32: 2e-6, np.float64: 1e-12}
STACK_REFERENCE_RTOL = {np.float32: 1e-5, np.float64: 1e-12}
# Analytic gradients vs float64 central finite differences (norm-wise relative error).
FINITE_DIFF_RTOL = 1e-6
FINITE_DIFF_EPS = 1e-6
# rnnkit vs torch.nn.RNN, float32, forward and every gradient.
TORCH_PARITY_RTOL_F32 = 1e-5


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def require_torch():
    """Imports torch or skips the test, saying why."""
    return pytest.importorskip("torch", reason="PyTorch is not installed: the PyTorch parity oracle is skipped")
