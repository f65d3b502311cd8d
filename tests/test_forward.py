"""Forward pass of rnnkit.RNN against the NumPy reference (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from conftest import REFERENCE_RTOL
from reference import elman_forward, max_relative_diff

SHAPES = [  # (T, N, C, H)
    (6, 4, 5, 7),
    (1, 3, 4, 5),   # T = 1
    (5, 1, 3, 4),   # N = 1
]


def _reference(layer, x_tm, h0):
    p = {k: v.astype(np.float64) for k, v in layer.params.items()}
    return elman_forward(
        x_tm, h0, p["weight_ih_l0"], p["weight_hh_l0"], p.get("bias_ih_l0"), p.get("bias_hh_l0"),
        layer.nonlinearity,
    )


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T%d-N%d-C%d-H%d" % s)
def test_forward_matches_reference(rng, nonlinearity, dtype, with_h0, batch_first, shape):
    T, N, C, H = shape
    layer = rnnkit.RNN(C, H, nonlinearity=nonlinearity, batch_first=batch_first, dtype=dtype, seed=3)
    x_tm = rng.standard_normal((T, N, C)).astype(dtype)
    h0 = rng.standard_normal((1, N, H)).astype(dtype) if with_h0 else None
    x = x_tm.transpose(1, 0, 2).copy() if batch_first else x_tm

    y, h_n = layer(x, h0)

    y_ref, hn_ref = _reference(layer, x_tm, None if h0 is None else h0[0])
    if batch_first:
        y_ref = y_ref.transpose(1, 0, 2)
    assert y.dtype == dtype and h_n.dtype == dtype
    assert y.shape == ((N, T, H) if batch_first else (T, N, H))
    assert h_n.shape == (1, N, H)
    tol = REFERENCE_RTOL[dtype]
    assert max_relative_diff(y, y_ref) < tol
    assert max_relative_diff(h_n[0], hn_ref) < tol


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_no_bias_matches_reference(rng, nonlinearity):
    layer = rnnkit.RNN(4, 6, nonlinearity=nonlinearity, bias=False, dtype=np.float64, seed=1)
    assert sorted(layer.params) == ["weight_hh_l0", "weight_ih_l0"]
    x = rng.standard_normal((5, 2, 4))
    y, h_n = layer(x)
    y_ref, hn_ref = _reference(layer, x, None)
    assert max_relative_diff(y, y_ref) < REFERENCE_RTOL[np.float64]
    assert max_relative_diff(h_n[0], hn_ref) < REFERENCE_RTOL[np.float64]


def test_unbatched_input_matches_batch_of_one(rng):
    layer = rnnkit.RNN(3, 5, dtype=np.float64, seed=2)
    x = rng.standard_normal((7, 3))
    h0 = rng.standard_normal((1, 5))
    y, h_n = layer(x, h0)
    assert y.shape == (7, 5) and h_n.shape == (1, 5)
    y_b, h_b = layer(x[:, None, :], h0[:, None, :])
    np.testing.assert_array_equal(y, y_b[:, 0, :])
    np.testing.assert_array_equal(h_n, h_b[:, 0, :])


def test_last_output_is_final_state(rng):
    layer = rnnkit.RNN(4, 8, seed=0)
    y, h_n = layer(rng.standard_normal((9, 3, 4)).astype(np.float32))
    np.testing.assert_array_equal(y[-1], h_n[0])


def test_eval_mode_gives_same_outputs_and_keeps_no_cache(rng):
    layer = rnnkit.RNN(4, 8, seed=0)
    x = rng.standard_normal((9, 3, 4)).astype(np.float32)
    layer.eval()
    y_eval, h_eval = layer(x)
    with pytest.raises(RuntimeError, match="training mode"):
        layer.backward(np.ones_like(y_eval))
    layer.train()
    y_train, h_train = layer(x)
    np.testing.assert_array_equal(y_train, y_eval)
    np.testing.assert_array_equal(h_train, h_eval)
    # An inference call in between leaves the pending training forward's cache alone (as a
    # PyTorch graph stays valid): backward still backpropagates the training forward.
    layer.eval()
    layer(2 * x)
    dx, _ = layer.backward(np.ones_like(y_train))
    layer.train()
    reference = rnnkit.RNN(4, 8, seed=0)
    reference(x)
    dx_reference, _ = reference.backward(np.ones_like(y_train))
    np.testing.assert_array_equal(dx, dx_reference)


def test_non_contiguous_and_negative_stride_inputs(rng):
    layer = rnnkit.RNN(4, 6, dtype=np.float64, seed=5)
    base = rng.standard_normal((10, 3, 8))
    x = base[::-2, :, ::2]            # negative stride in T, stride 2 in C
    assert not x.flags.c_contiguous
    y, h_n = layer(x)
    y_ref, h_ref = layer(np.ascontiguousarray(x))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(h_n, h_ref)


def test_float16_and_lists_are_converted(rng):
    layer = rnnkit.RNN(2, 3, dtype=np.float64, seed=5)
    x16 = rng.standard_normal((4, 1, 2)).astype(np.float16)
    y16, _ = layer(x16)
    y64, _ = layer(x16.astype(np.float64))
    np.testing.assert_array_equal(y16, y64)
    y_list, _ = layer(x16.astype(np.float64).tolist())
    np.testing.assert_array_equal(y_list, y64)


def test_init_is_seeded_and_in_pytorch_range():
    a = rnnkit.RNN(10, 20, seed=7)
    b = rnnkit.RNN(10, 20, seed=7)
    c = rnnkit.RNN(10, 20, seed=8)
    bound = 1 / np.sqrt(20)
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name])
        assert not np.array_equal(a.params[name], c.params[name])
        assert np.all(np.abs(a.params[name]) <= bound)
        assert a.params[name].dtype == np.float32
        assert np.all(a.grads[name] == 0)
    # U(-b, b) has standard deviation b / sqrt(3); 200+ draws per matrix keep this loose check stable.
    w = a.params["weight_hh_l0"]
    assert abs(float(w.std()) - bound / np.sqrt(3)) < 0.2 * bound
