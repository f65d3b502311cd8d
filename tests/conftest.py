"""Shared test configuration: named tolerances, seeded data, the optional PyTorch oracle.

Tolerances are named here and nowhere else. "Relative" means max|got - want| / max|want| over the
array (reference.max_relative_diff) unless a test says otherwise.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable, List, Sequence

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


# How long run_concurrently waits for its threads before it calls one hung.
THREAD_JOIN_TIMEOUT_S = 120.0


def run_concurrently(fns: Sequence[Callable[[], Any]]) -> List[Any]:
    """Calls every function in its own thread, all released at once by a barrier, and returns
    their results in order. Any exception a thread raised, or a thread still running after
    THREAD_JOIN_TIMEOUT_S, fails the test."""
    results: List[Any] = [None] * len(fns)
    errors: List[BaseException] = []
    barrier = threading.Barrier(len(fns))

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fns[i]()
        except Exception as exc:  # surfaced below: a thread's exception must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(THREAD_JOIN_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), f"a thread was still running after {THREAD_JOIN_TIMEOUT_S} s"
    assert not errors, errors
    return results


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The CUDA backend's comparison against the CPU (test_cuda_backend.py, test_cuda_bf16.py): cases
    and worst errors. With pytest-xdist the workers' modules are not here: run without -n to see it."""
    module = sys.modules.get("test_cuda_backend") or sys.modules.get("tests.test_cuda_backend")
    if module is not None and module.CASES:
        worst = ", ".join(f"{name} {err:.2e}" for name, err in sorted(module.WORST_ERROR.items()))
        terminalreporter.write_line(
            f"CUDA backend vs CPU: {len(module.CASES)} cell x option x forward-path cases (training forward + "
            f"backward), worst |cuda - cpu| per dtype over every comparison: {worst}"
        )
    module = sys.modules.get("test_cuda_bf16") or sys.modules.get("tests.test_cuda_bf16")
    if module is not None and module.CASES:
        terminalreporter.write_line(
            f"CUDA backend vs CPU at precision='bfloat16': {len(module.CASES)} cell x option cases (training forward "
            f"+ backward), worst relative error (norm-wise) {module.WORST_ERROR['bfloat16']:.2e}"
        )
