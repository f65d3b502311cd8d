"""Threads: the GIL is released during compute, and different layers run concurrently correctly."""

from __future__ import annotations

import sys
import threading

import numpy as np

import rnnkit
from conftest import run_concurrently


def _train_steps(layer, x, dy, steps):
    """A few forward+backward passes; returns everything they produced."""
    out = []
    for _ in range(steps):
        y, h_n = layer(x)
        dx, dh0 = layer.backward(dy)
        out.append((y, h_n, dx, dh0))
    out.append({k: g.copy() for k, g in layer.grads.items()})
    return out


def _make(seed, T, N, C, H, nonlinearity, dtype):
    rng = np.random.default_rng(seed)
    layer = rnnkit.RNN(C, H, nonlinearity=nonlinearity, dtype=dtype, seed=seed)
    x = rng.standard_normal((T, N, C)).astype(dtype)
    dy = rng.standard_normal((T, N, H)).astype(dtype)
    return layer, x, dy


def _assert_same(a, b):
    assert len(a) == len(b)
    for ra, rb in zip(a[:-1], b[:-1]):
        for u, v in zip(ra, rb):
            np.testing.assert_array_equal(u, v)
    for k in a[-1]:
        np.testing.assert_array_equal(a[-1][k], b[-1][k])


def test_two_threads_two_layers_match_sequential_runs():
    configs = [(1, 40, 8, 32, 48, "tanh", np.float32), (2, 30, 6, 24, 40, "relu", np.float64)]
    steps = 5
    sequential = [_train_steps(*_make(*cfg), steps) for cfg in configs]

    setups = [_make(*cfg) for cfg in configs]
    results = run_concurrently([lambda i=i: _train_steps(*setups[i], steps) for i in range(len(setups))])
    for seq, par in zip(sequential, results):
        _assert_same(seq, par)


def test_gil_is_released_during_forward():
    """With a 10 s switch interval, the main thread can only run while a worker is inside
    forward() if forward released the GIL; otherwise it runs after forward has returned."""
    layer, x, _ = _make(0, 200, 32, 256, 256, "tanh", np.float32)
    layer.eval()
    layer(x)  # warm-up
    entering = threading.Event()
    done = threading.Event()
    seen_while_running = []

    def worker():
        entering.set()
        for _ in range(20):  # long enough that the main thread wakes up inside a call
            layer(x)
        done.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        t = threading.Thread(target=worker)
        t.start()
        entering.wait()
        seen_while_running.append(not done.is_set())
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert seen_while_running == [True]
