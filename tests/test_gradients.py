"""Every gradient of every cell and layer option against float64 central finite differences.

The loss is L = sum(y * R_y) + sum(h_n * R_h) (+ sum(c_n * R_c) for LSTM cells) with random R's,
so backward(R_y, R_h[, R_c]) must return dL/d(everything): the input, the initial states and every
parameter (LayerNorm gains and biases, projections included).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import FINITE_DIFF_EPS, FINITE_DIFF_RTOL
from reference import central_difference, relative_error
from test_layers import CELLS, make


def _problem(layer, rng, T, N, lengths):
    groups = layer.num_layers * layer.num_directions
    x = rng.standard_normal((T, N, layer.input_size))
    h0 = rng.standard_normal((groups, N, layer.state_size))
    r_y = rng.standard_normal((T, N, layer.num_directions * layer.state_size))
    r_h = rng.standard_normal((groups, N, layer.state_size))
    if layer._has_cell_state:
        c0 = rng.standard_normal((groups, N, layer.hidden_size))
        r_c = rng.standard_normal((groups, N, layer.hidden_size))
        return x, (h0, c0), r_y, (r_h, r_c)
    return x, h0, r_y, r_h


def _loss(layer, x, hx, r_y, r_s, lengths, before_forward=None):
    if before_forward:
        before_forward()
    y, s = layer(x, hx, lengths)
    total = float(np.sum(y * r_y))
    for a, r in zip(s if isinstance(s, tuple) else (s,), r_s if isinstance(r_s, tuple) else (r_s,)):
        total += float(np.sum(a * r))
    return total


def check_all_gradients(layer, rng, T=4, N=3, lengths=None, before_forward=None):
    x, hx, r_y, r_s = _problem(layer, rng, T, N, lengths)
    layer.zero_grad()
    if before_forward:
        before_forward()
    layer(x, hx, lengths)
    dx, ds = layer.backward(r_y, r_s)
    grads = {k: g.copy() for k, g in layer.grads.items()}

    loss = lambda: _loss(layer, x, hx, r_y, r_s, lengths, before_forward)  # noqa: E731
    checks = {"x": (x, dx)}
    if isinstance(hx, tuple):
        checks["h0"], checks["c0"] = (hx[0], ds[0]), (hx[1], ds[1])
    else:
        checks["h0"] = (hx, ds)
    checks.update({name: (layer.params[name], grads[name]) for name in layer.params})
    failures = []
    for label, (arr, analytic) in checks.items():
        numeric = central_difference(loss, arr, FINITE_DIFF_EPS)
        err = relative_error(analytic, numeric)
        if not err < FINITE_DIFF_RTOL:
            failures.append(f"{label}: relative error {err:.2e}")
    assert not failures, failures
    return checks


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_finite_differences(rng, cell, num_layers, bidirectional, with_lengths):
    H = 4
    layer, _ = make(cell, 3, H, num_layers=num_layers, bidirectional=bidirectional)
    lengths = np.array([4, 2, 3]) if with_lengths else None
    checks = check_all_gradients(layer, rng, lengths=lengths)
    if with_lengths:
        dx = checks["x"][1]
        assert np.all(dx[2:, 1] == 0) and np.all(dx[3:, 2] == 0), "padded steps get no gradient"


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm_proj", "gru_reset_before", "ln_gru"])
def test_finite_differences_with_dropout_fixed_mask(rng, cell):
    layer, _ = make(cell, 3, 4, num_layers=3, bidirectional=True, dropout=0.4)

    def same_mask():
        layer.dropout_rng = np.random.default_rng(2024)

    check_all_gradients(layer, rng, lengths=np.array([4, 1, 3]), before_forward=same_mask)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_finite_differences_without_bias_batch_first(rng, cell):
    layer, _ = make(cell, 3, 4, num_layers=2, bias=False, batch_first=True)
    groups = 2
    x = rng.standard_normal((3, 4, 3))  # [N, T, C]
    r_y = rng.standard_normal((3, 4, 4))
    r_h = rng.standard_normal((groups, 3, 4))
    layer.zero_grad()
    layer(x)
    dx, _ = layer.backward(r_y, r_h)
    loss = lambda: _loss(layer, x, None, r_y, (r_h, np.zeros((groups, 3, 4))) if layer._has_cell_state else r_h, None)  # noqa: E731
    assert relative_error(dx, central_difference(loss, x, FINITE_DIFF_EPS)) < FINITE_DIFF_RTOL
    for name in layer.params:
        assert relative_error(layer.grads[name], central_difference(loss, layer.params[name], FINITE_DIFF_EPS)) < FINITE_DIFF_RTOL, name
