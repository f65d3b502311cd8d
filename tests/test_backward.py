"""BPTT of rnnkit.RNN: every gradient against the NumPy reference and float64 finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from conftest import FINITE_DIFF_EPS, FINITE_DIFF_RTOL, REFERENCE_RTOL
from reference import central_difference, elman_backward, max_relative_diff, relative_error

PARAM_KEYS = {"weight_ih_l0": "w_ih", "weight_hh_l0": "w_hh", "bias_ih_l0": "b_ih", "bias_hh_l0": "b_hh"}


def _random_problem(rng, T, N, C, H, dtype):
    x = rng.standard_normal((T, N, C)).astype(dtype)
    h0 = rng.standard_normal((1, N, H)).astype(dtype)
    dy = rng.standard_normal((T, N, H)).astype(dtype)
    dh_n = rng.standard_normal((1, N, H)).astype(dtype)
    return x, h0, dy, dh_n


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(6, 4, 5, 7), (1, 2, 3, 4), (4, 1, 2, 3)], ids=lambda s: "T%d-N%d-C%d-H%d" % s)
def test_backward_matches_reference(rng, nonlinearity, dtype, bias, shape):
    T, N, C, H = shape
    layer = rnnkit.RNN(C, H, nonlinearity=nonlinearity, bias=bias, dtype=dtype, seed=11)
    x, h0, dy, dh_n = _random_problem(rng, T, N, C, H, dtype)
    layer(x, h0)
    dx, dh0 = layer.backward(dy, dh_n)

    p = {k: v.astype(np.float64) for k, v in layer.params.items()}
    ref = elman_backward(x, h0[0], p["weight_ih_l0"], p["weight_hh_l0"], p.get("bias_ih_l0"),
                         p.get("bias_hh_l0"), dy.astype(np.float64), dh_n[0].astype(np.float64), nonlinearity)
    tol = REFERENCE_RTOL[dtype]
    assert dx.dtype == dtype and dh0.dtype == dtype and dh0.shape == (1, N, H)
    assert max_relative_diff(dx, ref["x"]) < tol
    assert max_relative_diff(dh0[0], ref["h0"]) < tol
    for name, key in PARAM_KEYS.items():
        if name in layer.grads:
            assert max_relative_diff(layer.grads[name], ref[key]) < tol, name


def _loss_and_grads(layer, x, h0, r_y, r_h):
    """L = sum(y * r_y) + sum(h_n * r_h) and all its analytic gradients via backward."""
    layer.zero_grad()
    y, h_n = layer(x, h0)
    dx, dh0 = layer.backward(r_y, r_h)
    return dx, dh0, {k: g.copy() for k, g in layer.grads.items()}


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_every_gradient_matches_finite_differences(rng, nonlinearity, batch_first):
    T, N, C, H = 5, 3, 4, 6
    layer = rnnkit.RNN(C, H, nonlinearity=nonlinearity, batch_first=batch_first, dtype=np.float64, seed=21)
    x_shape = (N, T, C) if batch_first else (T, N, C)
    y_shape = (N, T, H) if batch_first else (T, N, H)
    x = rng.standard_normal(x_shape)
    h0 = rng.standard_normal((1, N, H))
    r_y = rng.standard_normal(y_shape)
    r_h = rng.standard_normal((1, N, H))

    dx, dh0, grads = _loss_and_grads(layer, x, h0, r_y, r_h)

    def loss():
        y, h_n = layer(x, h0)
        return float(np.sum(y * r_y) + np.sum(h_n * r_h))

    layer.eval()  # finite differences need no cache
    checks = {"x": (x, dx), "h0": (h0, dh0)}
    checks.update({name: (layer.params[name], grads[name]) for name in layer.params})
    for label, (arr, analytic) in checks.items():
        numeric = central_difference(loss, arr, FINITE_DIFF_EPS)
        err = relative_error(analytic, numeric)
        assert err < FINITE_DIFF_RTOL, f"{label}: relative error {err:.2e}"


def test_gradients_accumulate_until_zero_grad(rng):
    layer = rnnkit.RNN(3, 4, dtype=np.float64, seed=0)
    x, h0, dy, dh_n = _random_problem(rng, 4, 2, 3, 4, np.float64)
    layer(x, h0)
    layer.backward(dy, dh_n)
    once = {k: g.copy() for k, g in layer.grads.items()}
    layer(x, h0)
    layer.backward(dy, dh_n)
    for k in once:
        np.testing.assert_allclose(layer.grads[k], 2 * once[k], rtol=1e-14, atol=0)
    layer.zero_grad()
    assert all(np.all(g == 0) for g in layer.grads.values())


def test_backward_only_dh_n_or_only_dy(rng):
    layer = rnnkit.RNN(3, 4, dtype=np.float64, seed=0)
    x, h0, dy, dh_n = _random_problem(rng, 4, 2, 3, 4, np.float64)
    p = {k: v for k, v in layer.params.items()}
    for dy_, dh_ in [(None, dh_n), (dy, None)]:
        layer.zero_grad()
        layer(x, h0)
        dx, dh0 = layer.backward(dy_, dh_)
        ref = elman_backward(x, h0[0], p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"],
                             dy_, None if dh_ is None else dh_[0])
        assert max_relative_diff(dx, ref["x"]) < REFERENCE_RTOL[np.float64]
        assert max_relative_diff(layer.grads["weight_hh_l0"], ref["w_hh"]) < REFERENCE_RTOL[np.float64]


def test_skipping_dx_leaves_other_gradients_unchanged(rng):
    layer = rnnkit.RNN(3, 4, dtype=np.float64, seed=0)
    x, h0, dy, dh_n = _random_problem(rng, 4, 2, 3, 4, np.float64)
    layer(x, h0)
    dx, dh0 = layer.backward(dy, dh_n)
    full = {k: g.copy() for k, g in layer.grads.items()}
    layer.zero_grad()
    layer(x, h0)
    dx_none, dh0_b = layer.backward(dy, dh_n, compute_dx=False)
    assert dx_none is None
    np.testing.assert_array_equal(dh0, dh0_b)
    for k in full:
        np.testing.assert_array_equal(full[k], layer.grads[k])


def test_backward_uses_weights_and_input_of_the_forward(rng):
    """Changing x or the weights in place between forward and backward (an optimizer step, say)
    must not change the gradients of that forward: the cache holds its own copies."""
    layer = rnnkit.RNN(3, 4, dtype=np.float64, seed=0)
    x, h0, dy, dh_n = _random_problem(rng, 4, 2, 3, 4, np.float64)
    layer(x, h0)
    dx_ref, _ = layer.backward(dy, dh_n)
    grads_ref = {k: g.copy() for k, g in layer.grads.items()}
    layer.zero_grad()
    layer(x, h0)
    x += 1.0
    for p in layer.params.values():
        p *= 0.5
    dx, _ = layer.backward(dy, dh_n)
    np.testing.assert_array_equal(dx, dx_ref)
    for k in grads_ref:
        np.testing.assert_array_equal(layer.grads[k], grads_ref[k])
