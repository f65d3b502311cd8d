"""The thread team: every cell and option computed with 2 and 3 threads (forced onto small shapes)
against the NumPy reference and finite differences; run-to-run reproducibility at a fixed thread
count; layers used from several Python threads while the team is busy."""

from __future__ import annotations


import numpy as np
import pytest

import rnnkit
from rnnkit import _core
from conftest import REFERENCE_RTOL, run_concurrently
from test_gradients import check_all_gradients
from test_layers import CELLS, make, random_states, run_and_compare

# With a different thread count the per-thread GEMMs have other shapes and BLAS may round
# differently: results then agree to float32 rounding, not bit for bit.
THREAD_COUNT_RTOL_F32 = 1e-5


@pytest.fixture(params=[2, 3], ids=["2-threads", "3-threads"])
def threads(request):
    """Forces the thread team onto every shape, restoring the defaults afterwards."""
    before = rnnkit.get_num_threads()
    _core._set_min_parallel_step_work(0)
    rnnkit.set_num_threads(request.param)
    yield request.param
    rnnkit.set_num_threads(before)
    _core._set_min_parallel_step_work(1 << 19)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("with_lengths", [False, True])
def test_threaded_stack_matches_reference(rng, threads, cell, with_lengths):
    T, N, C, H = 6, 5, 5, 7
    layer, mode = make(cell, C, H, num_layers=2, bidirectional=True, dropout=0.0)
    x = rng.standard_normal((T, N, C))
    hx, h0, c0 = random_states(layer, N, rng, np.float64)
    lengths = np.array([6, 2, 5, 1, 4]) if with_lengths else None
    run_and_compare(layer, mode, x, hx, h0, c0, lengths, REFERENCE_RTOL[np.float64])


# The cells with extra per-step phases (projection, two-stage GEMM, per-thread partial sums); 3
# threads (uneven splits; slow when oversubscribing a 2-core machine) on two of them.
@pytest.mark.parametrize("n_threads, cell", [(2, "lstm_proj"), (2, "gru_reset_before"), (2, "ln_lstm"),
                                             (2, "ln_gru"), (3, "lstm_proj"), (3, "ln_lstm")])
def test_threaded_gradients_match_finite_differences(rng, n_threads, cell):
    before = rnnkit.get_num_threads()
    _core._set_min_parallel_step_work(0)
    rnnkit.set_num_threads(n_threads)
    try:
        layer, _ = make(cell, 3, 4, num_layers=2, bidirectional=True)
        check_all_gradients(layer, rng, lengths=np.array([4, 2, 3]))
    finally:
        rnnkit.set_num_threads(before)
        _core._set_min_parallel_step_work(1 << 19)


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_before", "ln_lstm", "lstm_proj"])
def test_thread_counts_agree_and_each_is_reproducible(rng, cell):
    x = rng.standard_normal((9, 6, 8)).astype(np.float32)
    results = {}
    _core._set_min_parallel_step_work(0)
    before = rnnkit.get_num_threads()
    try:
        for n in (1, 2, 3, 2):
            rnnkit.set_num_threads(n)
            layer, _ = make(cell, 8, 12, dtype=np.float32, num_layers=2, bidirectional=True, dropout=0.3)
            y, _ = layer(x, None, [9, 3, 7, 1, 9, 5])
            dx, _ = layer.backward(np.ones_like(y))
            out = [y, dx] + [layer.grads[k].copy() for k in sorted(layer.grads)]
            if n in results:  # the same thread count again: bit for bit
                for a, b in zip(results[n], out):
                    np.testing.assert_array_equal(a, b)
            results[n] = out
    finally:
        rnnkit.set_num_threads(before)
        _core._set_min_parallel_step_work(1 << 19)
    for n in (2, 3):
        for a, b in zip(results[1], results[n]):
            scale = max(float(np.abs(a).max()), 1e-30)
            assert float(np.abs(a - b).max()) / scale < THREAD_COUNT_RTOL_F32


def test_python_threads_share_the_team_safely(rng, threads):
    """Several Python threads train different layers at once: one gets the team, the others run
    on their own thread; all results equal a sequential run's to float rounding."""
    configs = [(rnnkit.LSTM, 7), (rnnkit.GRU, 8), (rnnkit.RNN, 9), (rnnkit.LayerNormGRU, 10)]
    data = [(rng.standard_normal((12, 6, 5)), rng.standard_normal((12, 6, 16))) for _ in configs]

    def run(i):
        cls, seed = configs[i]
        layer = cls(5, 16, num_layers=2, dtype=np.float64, seed=seed)
        x, dy = data[i]
        out = []
        for _ in range(3):
            y, _ = layer(x)
            dx, _ = layer.backward(dy)
            out.append((y, dx))
        return out, {k: g.copy() for k, g in layer.grads.items()}

    sequential = [run(i) for i in range(len(configs))]
    results = run_concurrently([lambda i=i: run(i) for i in range(len(configs))])
    for (seq_out, seq_g), (par_out, par_g) in zip(sequential, results):
        for (y1, dx1), (y2, dx2) in zip(seq_out, par_out):
            np.testing.assert_allclose(y2, y1, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(dx2, dx1, rtol=1e-12, atol=1e-14)
        for k in seq_g:
            np.testing.assert_allclose(par_g[k], seq_g[k], rtol=1e-11, atol=1e-13)


def test_network_with_threads_matches_one_thread(rng, threads):
    net_args = dict(vocab_size=11, embedding_dim=6, hidden_size=16, cell="lstm", num_layers=2,
                    bidirectional=True, dtype=np.float64, seed=2)
    x = rng.integers(0, 11, (8, 5))
    y = rng.integers(0, 11, (8, 5))
    net = rnnkit.RNNNetwork(**net_args)
    loss_n, _ = net.train_step(x, y, None, [8, 3, 5, 8, 1])
    grads_n = {k: g.copy() for k, g in net.grads.items()}
    rnnkit.set_num_threads(1)
    one = rnnkit.RNNNetwork(**net_args)
    loss_1, _ = one.train_step(x, y, None, [8, 3, 5, 8, 1])
    assert abs(loss_n - loss_1) < 1e-13 * loss_1
    for k in grads_n:
        np.testing.assert_allclose(grads_n[k], one.grads[k], rtol=1e-11, atol=1e-14)


# ---- deterministic mode: bit for bit across thread counts ----------------------------------------
@pytest.fixture
def deterministic():
    """Deterministic mode and the team forced onto every shape, restoring the defaults afterwards."""
    before = rnnkit.get_num_threads()
    rnnkit.set_deterministic(True)
    _core._set_min_parallel_step_work(0)
    yield
    rnnkit.set_deterministic(False)
    rnnkit.set_num_threads(before)
    _core._set_min_parallel_step_work(1 << 19)


# (T, N, C, H): T < 8 keeps the per-step GEMM on BLAS (unpacked); the others use the packed kernel;
# sizes that split unevenly among 2 and 3 threads, and one whose hoisted GEMMs are split in blocks.
DETERMINISM_SHAPES = [(3, 40, 50, 130), (7, 3, 30, 20), (9, 6, 8, 32), (12, 300, 40, 48)]


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru", "gru_reset_before", "ln_lstm", "ln_gru", "lstm_proj"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", DETERMINISM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_deterministic_mode_is_bitwise_identical_for_every_thread_count(rng, deterministic, cell, dtype, shape):
    T, N, C, H = shape
    x = rng.standard_normal((T, N, C)).astype(dtype)
    lengths = rng.integers(1, T + 1, N)
    dy = None
    results = {}
    for n in (1, 2, 3):
        rnnkit.set_num_threads(n)
        layer, _ = make(cell, C, H, dtype=dtype, num_layers=2, bidirectional=True, dropout=0.25)
        y, _ = layer(x, None, lengths)
        if dy is None:
            dy = rng.standard_normal(y.shape).astype(dtype)
        dx, _ = layer.backward(dy)
        results[n] = [y, dx] + [layer.grads[k].copy() for k in sorted(layer.grads)]
    for n in (2, 3):
        for a, b in zip(results[1], results[n]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", ["lstm", "ln_gru"])
@pytest.mark.parametrize("vocab", [11, 700])
def test_deterministic_mode_network_is_bitwise_identical_for_every_thread_count(rng, deterministic, cell, vocab):
    tokens = rng.integers(0, vocab, (20, 16))
    targets = rng.integers(0, vocab, (20, 16))
    results = {}
    for n in (1, 2, 3):
        rnnkit.set_num_threads(n)
        net = rnnkit.RNNNetwork(vocab_size=vocab, embedding_dim=8, hidden_size=64, cell=cell, num_layers=2, seed=0)
        loss, _ = net.train_step(tokens, targets)
        results[n] = [np.array(loss)] + [net.grads[k].copy() for k in sorted(net.grads)]
    for n in (2, 3):
        for a, b in zip(results[1], results[n]):
            np.testing.assert_array_equal(a, b)


def test_deterministic_setting_round_trips_and_is_validated():
    assert rnnkit.get_deterministic() is False
    rnnkit.set_deterministic(True)
    try:
        assert rnnkit.get_deterministic() is True
        assert rnnkit.build_info()["deterministic"] is True
    finally:
        rnnkit.set_deterministic(False)
    with pytest.raises(TypeError, match="on: expected"):
        rnnkit.set_deterministic("yes")
