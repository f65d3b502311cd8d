"""Dropout between layers: PyTorch's semantics, seeded, reproducible, training only."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import rnnkit
from rnnkit import _core
from conftest import REFERENCE_RTOL
from reference import max_relative_diff, stack_forward

T, N, C, H = 6, 3, 4, 5


def _layer(seed=0, **kw):
    return rnnkit.LSTM(C, H, num_layers=3, bidirectional=True, dropout=0.5, dtype=np.float64, seed=seed, **kw)


def _train_step(layer, x, dy):
    y, _ = layer(x)
    dx, _ = layer.backward(dy)
    return y, dx, {k: g.copy() for k, g in layer.grads.items()}


def test_same_seed_same_results_and_masks_change_between_steps(rng):
    x = rng.standard_normal((T, N, C))
    dy = rng.standard_normal((T, N, 2 * H))
    a, b = _layer(seed=7), _layer(seed=7)
    ya1, dxa1, ga1 = _train_step(a, x, dy)
    yb1, dxb1, gb1 = _train_step(b, x, dy)
    np.testing.assert_array_equal(ya1, yb1)
    np.testing.assert_array_equal(dxa1, dxb1)
    for k in ga1:
        np.testing.assert_array_equal(ga1[k], gb1[k])
    # The next step draws a new mask (same for both layers).
    ya2, _, _ = _train_step(a, x, dy)
    yb2, _, _ = _train_step(b, x, dy)
    np.testing.assert_array_equal(ya2, yb2)
    assert not np.array_equal(ya1, ya2)
    # Another seed, other masks.
    yc, _, _ = _train_step(_layer(seed=8, init="default"), x, dy)
    assert not np.array_equal(ya1, yc)


def test_eval_mode_applies_no_dropout(rng):
    layer = _layer()
    x = rng.standard_normal((T, N, C))
    layer.eval()
    y, (h_n, c_n) = layer(x)
    y_ref, h_ref, c_ref = stack_forward("LSTM", layer.params, x, 3, True)
    assert max_relative_diff(y, y_ref) < REFERENCE_RTOL[np.float64]
    assert max_relative_diff(h_n, h_ref) < REFERENCE_RTOL[np.float64]
    # Training mode with the same weights does drop units.
    layer.train()
    y_train, _ = layer(x)
    assert max_relative_diff(y_train, y_ref) > 1e-3


@pytest.mark.parametrize("p", [0.25, 0.5, 1.0])
def test_training_forward_matches_reference_with_the_same_masks(rng, p):
    layer = rnnkit.GRU(C, H, num_layers=3, bidirectional=True, dropout=p, dtype=np.float64, seed=3)
    x = rng.standard_normal((T, N, C))
    lengths = [6, 2, 4]
    seed = int(copy.deepcopy(layer.dropout_rng).integers(0, 2**63))  # the seed forward will draw
    masks = [_core._dropout_mask(seed, l, T * N * 2 * H, p).reshape(T, N, 2 * H) for l in range(2)]
    y, h_n = layer(x, None, lengths)
    y_ref, h_ref, _ = stack_forward("GRU", layer.params, x, 3, True, lengths=lengths, dropout_masks=masks)
    assert max_relative_diff(y, y_ref) < REFERENCE_RTOL[np.float64]
    assert max_relative_diff(h_n, h_ref) < REFERENCE_RTOL[np.float64]


def test_mask_drops_the_requested_fraction_and_scales_the_rest():
    m = _core._dropout_mask(12345, 0, 200_000, 0.3)
    dropped = float(np.mean(m == 0))
    assert abs(dropped - 0.3) < 0.005
    np.testing.assert_allclose(m[m != 0], 1 / 0.7)
    # Layers get independent masks.
    assert not np.array_equal(m, _core._dropout_mask(12345, 1, 200_000, 0.3))


def test_dropout_with_one_layer_warns_like_pytorch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        rnnkit.RNN(3, 4, dropout=0.2)
