"""The streaming step's row kernel (row_gemm, cpp/src/cpu/packed_gemm.cpp) and the alternating order
of a stream of steps, against NumPy.

A step multiplies each weight matrix once, so it reads W [rows, K] in place: C = beta C + A W^T,
each output one dot product (optionally over two terms, x W_ih^T + h W_hh^T, as one sum). Every
element is summed the same way whatever the row range, the direction or the number of rows of A,
and consecutive steps read the weights in opposite orders (descending rows, W_hh first) so each
starts on what the previous one left in L2: the same results bit for bit in both orders.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import _core

# One dot product of at most K = 300 float32 products per output, against float64: the float32
# rounding of a sum of K products is bounded by about K * 2**-24 relative to sum |a_k w_k|.
ROW_GEMM_RTOL = 2e-5
# Steps against the forward (a different summation order, same float32 products).
STEP_VS_FORWARD_RTOL = 1e-5
# A bf16 output layer (16 features) against float32's: operands rounded to 8 bits of mantissa.
BF16_HEAD_ATOL = 3e-2

KERNELS = _core._row_gemm_kernels()
pytestmark = pytest.mark.skipif(not KERNELS, reason="this CPU has no row kernel (AVX2+FMA or AVX-512F)")


@pytest.fixture(params=KERNELS or ["none"])
def kernel(request):
    _core._set_row_gemm_kernel(request.param)
    yield request.param
    _core._set_row_gemm_kernel("auto")


def _check(got, want, scale):
    err = np.abs(got.astype(np.float64) - want) / np.maximum(scale, 1e-30)
    assert err.max() <= ROW_GEMM_RTOL, f"max relative error {err.max():.3g}"


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("K", [1, 7, 16, 37, 259])
def test_row_gemm_matches_numpy(kernel, rng, M, K):
    for rows in (1, 5, 8, 13, 16, 17, 33):
        a = rng.standard_normal((M, K)).astype(np.float32)
        w = rng.standard_normal((rows, K)).astype(np.float32)
        c0 = rng.standard_normal((M, rows)).astype(np.float32)
        scale = np.abs(a.astype(np.float64)) @ np.abs(w.astype(np.float64)).T + np.abs(c0)
        for beta in (0.0, 1.0, 0.5):
            for descending in (False, True):
                # beta = 0 must not read C: NaNs there would show.
                c = np.full_like(c0, np.nan) if beta == 0.0 else c0.copy()
                _core._row_gemm(a, w, beta, c, 0, rows, descending)
                want = beta * c0.astype(np.float64) + a.astype(np.float64) @ w.astype(np.float64).T
                _check(c, want, scale)


def test_two_terms_are_one_sum(kernel, rng):
    M, K1, K2, rows = 3, 32, 20, 29
    a1, a2 = rng.standard_normal((M, K1)).astype(np.float32), rng.standard_normal((M, K2)).astype(np.float32)
    w1, w2 = rng.standard_normal((rows, K1)).astype(np.float32), rng.standard_normal((rows, K2)).astype(np.float32)
    c = np.zeros((M, rows), np.float32)
    _core._row_gemm(a1, w1, 0.0, c, 0, rows, False, a2, w2)
    want = a1.astype(np.float64) @ w1.T.astype(np.float64) + a2.astype(np.float64) @ w2.T.astype(np.float64)
    scale = np.abs(a1.astype(np.float64)) @ np.abs(w1.T) + np.abs(a2.astype(np.float64)) @ np.abs(w2.T)
    _check(c, want, scale)
    # The terms share the accumulators: with K1 a whole number of vectors, that is the one-term
    # kernel over the concatenated K, bit for bit.
    joined = np.zeros_like(c)
    _core._row_gemm(np.hstack([a1, a2]), np.hstack([w1, w2]), 0.0, joined, 0, rows, True)
    np.testing.assert_array_equal(joined, c)


@pytest.mark.parametrize("M", [1, 2, 4, 6])
def test_every_element_is_summed_the_same_way_whatever_the_range_and_direction(kernel, rng, M):
    """Row ranges as a team splits them, either direction, any row count of A: bit for bit."""
    K, rows = 70, 53
    a = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((rows, K)).astype(np.float32)
    whole = np.zeros((M, rows), np.float32)
    _core._row_gemm(a, w, 0.0, whole, 0, rows, False)
    for cuts in ((0, 1, rows), (0, 16, 32, rows), (0, 7, 9, 30, 31, rows), (0, 3, rows)):
        for descending in (False, True):
            pieces = np.zeros_like(whole)
            for j0, j1 in zip(cuts[:-1], cuts[1:]):
                _core._row_gemm(a, w, 0.0, pieces, j0, j1, descending)
            np.testing.assert_array_equal(pieces, whole)
    for m in range(M):  # one row of A at a time: the same sums as all rows together
        single = np.zeros((1, rows), np.float32)
        _core._row_gemm(np.ascontiguousarray(a[m:m + 1]), w, 0.0, single, 0, rows, True)
        np.testing.assert_array_equal(single[0], whole[m])


def test_row_gemm_writes_only_its_rows(kernel, rng):
    a = rng.standard_normal((2, 40)).astype(np.float32)
    w = rng.standard_normal((30, 40)).astype(np.float32)
    c = rng.standard_normal((2, 30)).astype(np.float32)
    before = c.copy()
    _core._row_gemm(a, w, 1.0, c, 11, 19, True)
    np.testing.assert_array_equal(c[:, :11], before[:, :11])
    np.testing.assert_array_equal(c[:, 19:], before[:, 19:])
    assert not np.array_equal(c[:, 11:19], before[:, 11:19])


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="row kernel: expected one this CPU runs"):
        _core._set_row_gemm_kernel("sse9")


# ---- a stream of steps: alternating orders, the same results --------------------------------------

STEP_CASES = {
    "rnn_tanh": lambda: rnnkit.RNN(20, 24, seed=1),
    "rnn_relu_2layers": lambda: rnnkit.RNN(20, 24, nonlinearity="relu", num_layers=2, seed=1),
    "lstm": lambda: rnnkit.LSTM(20, 24, seed=1),
    "lstm_proj": lambda: rnnkit.LSTM(20, 24, proj_size=9, num_layers=2, seed=1),
    "lstm_peephole_clip": lambda: rnnkit.LSTM(20, 24, peephole=True, clip=3.0, seed=1),
    "gru": lambda: rnnkit.GRU(20, 24, seed=1),
    "gru_reset_before": lambda: rnnkit.GRU(20, 24, reset_after=False, seed=1),
    "ln_lstm": lambda: rnnkit.LayerNormLSTM(20, 24, seed=1),
    "ln_gru": lambda: rnnkit.LayerNormGRU(20, 24, seed=1),
    "gru_onnx_activations": lambda: rnnkit.GRU(20, 24, activations=["HardSigmoid", "Tanh"], seed=1),
    "lstm_no_bias": lambda: rnnkit.LSTM(20, 24, bias=False, seed=1),
}


def _state_copy(state):
    return tuple(s.copy() for s in state) if isinstance(state, tuple) else state.copy()


def _assert_same(a, b):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("case", list(STEP_CASES))
@pytest.mark.parametrize("N", [1, 3, 4, 5])
def test_consecutive_steps_in_opposite_orders_agree_bit_for_bit(kernel, rng, case, N):
    layer = STEP_CASES[case]()
    x = rng.standard_normal((N, 20)).astype(np.float32)
    _, state = layer.step(x)  # a state to start from
    start = _state_copy(state)
    first = layer.step(x, start)
    second = layer.step(x, start)  # the next call runs in the other order
    third = layer.step(x, start)
    for got in (second, third):
        np.testing.assert_array_equal(got[0], first[0])
        _assert_same(got[1], first[1])


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_steps_in_either_order_match_the_forward(rng, case):
    layer = STEP_CASES[case]()
    layer.eval()
    T, N = 6, 2
    x = rng.standard_normal((T, N, 20)).astype(np.float32)
    y_full, s_full = layer(x)
    state = None
    for t in range(T):  # alternating orders, one per step
        y_t, state = layer.step(x[t], state)
        err = np.abs(y_t - y_full[t]).max() / max(np.abs(y_full[t]).max(), 1e-30)
        assert err < STEP_VS_FORWARD_RTOL, f"step {t}: {err:.3g}"


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_network_steps_in_opposite_orders_agree_and_match_the_forward(rng, cell):
    net = rnnkit.RNNNetwork(input_size=12, hidden_size=16, output_size=5, loss="mse", cell=cell, num_layers=2, seed=3)
    net.eval()
    T, N = 5, 2
    x = rng.standard_normal((T, N, 12)).astype(np.float32)
    y_full, _ = net.forward(x)
    state = None
    for t in range(T):
        before = None if state is None else _state_copy(state)
        y_t, state = net.step(x[t], state)
        again, state_again = net.step(x[t], before)  # the other order
        np.testing.assert_array_equal(again, y_t)
        _assert_same(state_again, state)
        err = np.abs(y_t - y_full[t]).max() / max(np.abs(y_full[t]).max(), 1e-30)
        assert err < STEP_VS_FORWARD_RTOL, f"step {t}: {err:.3g}"


def test_a_bfloat16_networks_step_runs_its_stack_in_float32(rng):
    """network.step() at precision='bfloat16': the float32 network's stack, the output layer at bf16
    (as the forward's head and the CUDA step), so the states equal the float32 network's."""
    kw = dict(input_size=12, hidden_size=16, output_size=5, loss="mse", cell="lstm", seed=3)
    b16 = rnnkit.RNNNetwork(**kw, precision="bfloat16")
    f32 = rnnkit.RNNNetwork(**kw)
    x = rng.standard_normal((3, 12)).astype(np.float32)
    y_b, s_b = b16.step(x)
    y_f, s_f = f32.step(x)
    _assert_same(s_b, s_f)
    assert not np.array_equal(y_b, y_f)  # the head did run at bf16
    np.testing.assert_allclose(y_b, y_f, rtol=0, atol=BF16_HEAD_ATOL)
