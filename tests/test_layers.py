"""Forward of every cell and layer option against the NumPy reference (tests/reference.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import rnnkit
from conftest import REFERENCE_RTOL, STACK_REFERENCE_RTOL
from reference import HAS_CELL_STATE, max_relative_diff, stack_forward

# name -> (constructor, reference mode, extra constructor kwargs)
CELLS = {
    "rnn_tanh": (rnnkit.RNN, "RNN_TANH", {}),
    "rnn_relu": (rnnkit.RNN, "RNN_RELU", {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTM, "LSTM", {}),
    "lstm_proj": (rnnkit.LSTM, "LSTM", {"proj_size": 3}),
    "gru": (rnnkit.GRU, "GRU", {}),
    "gru_reset_before": (rnnkit.GRU, "GRU_RESET_BEFORE", {"reset_after": False}),
    "ln_lstm": (rnnkit.LayerNormLSTM, "LN_LSTM", {}),
    "ln_gru": (rnnkit.LayerNormGRU, "LN_GRU", {}),
}


def make(cell, C, H, dtype=np.float64, seed=0, **kw):
    ctor, mode, extra = CELLS[cell]
    layer = ctor(C, H, dtype=dtype, seed=seed, **extra, **kw)
    # LayerNorm parameters start at 1/0; perturb them so the test sees every parameter act.
    rng = np.random.default_rng(seed + 100)
    for name, p in layer.params.items():
        if name.startswith("ln_"):
            p += rng.uniform(-0.5, 0.5, p.shape).astype(dtype)
    return layer, mode


def random_states(layer, N, rng, dtype):
    groups = layer.num_layers * layer.num_directions
    h0 = rng.standard_normal((groups, N, layer.state_size)).astype(dtype)
    if layer.mode in HAS_CELL_STATE:
        c0 = rng.standard_normal((groups, N, layer.hidden_size)).astype(dtype)
        return (h0, c0), h0, c0
    return h0, h0, None


def run_and_compare(layer, mode, x_tm, hx, h0, c0, lengths, tol, dropout_masks=None):
    x = x_tm.transpose(1, 0, 2).copy() if layer.batch_first else x_tm
    y, state = layer(x, hx, lengths)
    y_ref, h_ref, c_ref = stack_forward(
        mode, layer.params, x_tm, layer.num_layers, layer.bidirectional, h0, c0, lengths, dropout_masks
    )
    if layer.batch_first:
        y_ref = y_ref.transpose(1, 0, 2)
    h_n, c_n = state if mode in HAS_CELL_STATE else (state, None)
    assert y.shape == y_ref.shape and h_n.shape == h_ref.shape
    assert max_relative_diff(y, y_ref) < tol, "y"
    assert max_relative_diff(h_n, h_ref) < tol, "h_n"
    if c_ref is not None:
        assert c_n.shape == c_ref.shape
        assert max_relative_diff(c_n, c_ref) < tol, "c_n"
    return y


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (1, True), (2, False), (2, True)])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_stack_matches_reference_float64(rng, cell, num_layers, bidirectional, with_lengths, with_state):
    T, N, C, H = 6, 4, 5, 7
    layer, mode = make(cell, C, H, num_layers=num_layers, bidirectional=bidirectional)
    x = rng.standard_normal((T, N, C))
    lengths = np.array([6, 2, 5, 1]) if with_lengths else None
    hx, h0, c0 = random_states(layer, N, rng, np.float64) if with_state else (None, None, None)
    y = run_and_compare(layer, mode, x, hx, h0, c0, lengths, REFERENCE_RTOL[np.float64])
    if with_lengths:
        for n, L in enumerate(lengths):
            assert np.all(y[L:, n] == 0), "outputs past a sequence's length must be exactly 0"


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("options", [
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(bias=False),
    dict(num_layers=3),
])
def test_stack_matches_reference_float32(rng, cell, options):
    T, N, C, H = 9, 3, 6, 8
    layer, mode = make(cell, C, H, dtype=np.float32, **options)
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    hx, h0, c0 = random_states(layer, N, rng, np.float32)
    lengths = np.array([4, 9, 7])
    y = run_and_compare(layer, mode, x, hx, h0, c0, lengths, STACK_REFERENCE_RTOL[np.float32])
    assert y.dtype == np.float32


@pytest.mark.parametrize("cell", list(CELLS))
def test_eval_mode_matches_training_mode(rng, cell):
    # Same math; the buffers differ (inference reuses two state slots), which may change BLAS's
    # blocking by an ulp, so the comparison is to rounding, not bitwise.
    layer, _ = make(cell, 4, 5, num_layers=2, bidirectional=True)
    x = rng.standard_normal((5, 3, 4))
    lengths = [5, 3, 1]
    y_train, s_train = layer(x, None, lengths)
    layer.eval()
    y_eval, s_eval = layer(x, None, lengths)
    assert max_relative_diff(y_eval, y_train) < REFERENCE_RTOL[np.float64]
    for a, b in zip(s_train if isinstance(s_train, tuple) else (s_train,),
                    s_eval if isinstance(s_eval, tuple) else (s_eval,)):
        assert max_relative_diff(b, a) < REFERENCE_RTOL[np.float64]


@pytest.mark.parametrize("cell", ["lstm", "gru", "ln_lstm"])
def test_lengths_equal_running_each_sequence_alone(rng, cell):
    """A padded batch with lengths gives, for each sequence, exactly what running that sequence
    alone (without padding) gives, in both directions."""
    layer, _ = make(cell, 3, 4, num_layers=2, bidirectional=True)
    lengths = [2, 5, 3]
    x = rng.standard_normal((5, 3, 3))
    y, state = layer(x, None, lengths)
    h_n = state[0] if isinstance(state, tuple) else state
    for n, L in enumerate(lengths):
        y_n, s_n = layer(x[:L, n])  # unbatched [T, C]
        h_single = s_n[0] if isinstance(s_n, tuple) else s_n
        np.testing.assert_allclose(y[:L, n], y_n, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(h_n[:, n], h_single, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell", list(CELLS))
def test_unbatched_matches_batch_of_one(rng, cell):
    layer, _ = make(cell, 3, 4, num_layers=2, bidirectional=True)
    x = rng.standard_normal((5, 3))
    y, s = layer(x)
    y_b, s_b = layer(x[:, None, :])
    np.testing.assert_array_equal(y, y_b[:, 0])
    for a, b in zip(s if isinstance(s, tuple) else (s,), s_b if isinstance(s_b, tuple) else (s_b,)):
        np.testing.assert_array_equal(a, b[:, 0])


def test_padded_input_values_do_not_matter(rng):
    """Whatever sits in padded steps (even NaN) changes no output and no gradient."""
    layer = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    lengths = [3, 5]
    x = rng.standard_normal((5, 2, 3))
    dy = rng.standard_normal((5, 2, 8))
    y1, _ = layer(x, None, lengths)
    dx1, _ = layer.backward(dy)
    g1 = {k: v.copy() for k, v in layer.grads.items()}
    layer.zero_grad()
    x2 = x.copy()
    x2[3:, 0] = np.nan
    y2, _ = layer(x2, None, lengths)
    dx2, _ = layer.backward(dy)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)
    assert np.all(dx1[3:, 0] == 0)
    for k in g1:
        np.testing.assert_array_equal(g1[k], layer.grads[k])


def test_parameter_names_and_shapes_follow_pytorch():
    lstm = rnnkit.LSTM(10, 20, num_layers=2, bidirectional=True, proj_size=5)
    expected = []
    for k, sfx in itertools.product(range(2), ["", "_reverse"]):
        c = 10 if k == 0 else 2 * 5
        expected += [(f"weight_ih_l{k}{sfx}", (80, c)), (f"weight_hh_l{k}{sfx}", (80, 5)),
                     (f"bias_ih_l{k}{sfx}", (80,)), (f"bias_hh_l{k}{sfx}", (80,)),
                     (f"weight_hr_l{k}{sfx}", (5, 20))]
    assert [(k, v.shape) for k, v in lstm.state_dict().items()] == expected
    gru = rnnkit.LayerNormGRU(4, 6)
    assert list(gru.params) == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                "ln_ih_weight_l0", "ln_ih_bias_l0", "ln_hh_weight_l0", "ln_hh_bias_l0"]
    assert gru.params["ln_ih_weight_l0"].shape == (18,)
    ln_lstm = rnnkit.LayerNormLSTM(4, 6, bias=False)
    assert list(ln_lstm.params)[-2:] == ["ln_c_weight_l0", "ln_c_bias_l0"]
    assert ln_lstm.params["ln_c_bias_l0"].shape == (6,)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_streaming_equals_full_forward(rng, cell, dtype):
    layer, _ = make(cell, 5, 6, dtype=dtype, num_layers=2)
    T, N = 7, 3
    x = rng.standard_normal((T, N, 5)).astype(dtype)
    hx, _, _ = random_states(layer, N, rng, dtype)
    layer.eval()
    y_full, s_full = layer(x, hx)
    state = hx
    tol = REFERENCE_RTOL[dtype] * 10
    for t in range(T):
        y_t, state = layer.step(x[t], state)
        assert max_relative_diff(y_t, y_full[t]) < tol
    for a, b in zip(state if isinstance(state, tuple) else (state,), s_full if isinstance(s_full, tuple) else (s_full,)):
        assert max_relative_diff(a, b) < tol


def test_step_one_stream_and_zero_state(rng):
    layer = rnnkit.GRU(4, 5, seed=0, dtype=np.float64)
    x = rng.standard_normal(4)
    y, h = layer.step(x)
    assert y.shape == (5,) and h.shape == (1, 1, 5)
    y_full, _ = layer(x[None, None, :])
    np.testing.assert_allclose(y, y_full[0, 0], rtol=1e-13)
    y2, h2 = layer.step(x, h)
    y3, _ = layer.step(x, h.copy())   # the state is plain data: copy to branch
    np.testing.assert_array_equal(y2, y3)


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: rnnkit.LSTM(3, 4, bidirectional=True).step(np.zeros(3)), ValueError, "step: expected a unidirectional forward layer"),
        (lambda: rnnkit.LSTM(3, 4).step(np.zeros(5)), ValueError, "x_t: expected input_size 3"),
        (lambda: rnnkit.LSTM(3, 4).step(np.zeros((2, 3)), np.zeros((1, 2, 4))), TypeError, r"state: expected a tuple \(h, c\)"),
        (lambda: rnnkit.GRU(3, 4).step(np.zeros((2, 3)), np.zeros((1, 3, 4))), ValueError, r"state: expected shape \(1, 2, 4\)"),
        (lambda: rnnkit.GRU(3, 4).step(np.zeros((2, 3), np.int64)), TypeError, "x_t: expected a floating-point array"),
        (lambda: rnnkit.GRU(3, 4).step(np.zeros((0, 3))), ValueError, "x_t: expected batch size N >= 1"),
    ],
)
def test_step_rejects_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()
