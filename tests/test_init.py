"""Initialisers (rnnkit.init): each scheme sets what it documents, seeded."""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit

ALL_SCHEMES = ["default", "xavier", "orthogonal", "identity", "xavier+orthogonal"]


@pytest.mark.parametrize("init", ALL_SCHEMES)
@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU, rnnkit.LayerNormLSTM])
def test_schemes_are_seeded(init, cls):
    a = cls(6, 8, num_layers=2, bidirectional=True, init=init, seed=11)
    b = cls(6, 8, num_layers=2, bidirectional=True, init=init, seed=11)
    c = cls(6, 8, num_layers=2, bidirectional=True, init=init, seed=12)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert any(not np.array_equal(a.params[k], c.params[k]) for k in a.params)


def test_xavier_sets_input_weights_per_gate_block():
    layer = rnnkit.LSTM(30, 40, num_layers=2, init="xavier", init_gain=2.0, seed=0, dtype="float64")
    default = rnnkit.LSTM(30, 40, num_layers=2, seed=0, dtype="float64")
    for k, fan_in in (("weight_ih_l0", 30), ("weight_ih_l1", 40)):
        a = 2.0 * np.sqrt(6.0 / (fan_in + 40))
        w = layer.params[k]
        assert np.all(np.abs(w) <= a) and np.max(np.abs(w)) > 0.9 * a
    # The recurrent weights keep the default draw.
    np.testing.assert_array_equal(layer.params["weight_hh_l0"], default.params["weight_hh_l0"])


@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_orthogonal_recurrent_blocks(gain):
    layer = rnnkit.GRU(5, 16, init="orthogonal", init_gain=gain, seed=1, dtype="float64")
    w = layer.params["weight_hh_l0"]
    for g in range(3):
        block = w[g * 16:(g + 1) * 16]
        np.testing.assert_allclose(block @ block.T, gain**2 * np.eye(16), atol=1e-12)


def test_orthogonal_with_projection_has_orthonormal_columns():
    layer = rnnkit.LSTM(5, 16, proj_size=4, init="orthogonal", seed=1, dtype="float64")
    w = layer.params["weight_hh_l0"]  # [64, 4]: each block [16, 4]
    for g in range(4):
        block = w[g * 16:(g + 1) * 16]
        np.testing.assert_allclose(block.T @ block, np.eye(4), atol=1e-12)


def test_identity_is_the_irnn_recipe():
    layer = rnnkit.RNN(3, 6, nonlinearity="relu", init="identity", init_gain=0.9, seed=2)
    np.testing.assert_array_equal(layer.params["weight_hh_l0"], 0.9 * np.eye(6, dtype=np.float32))
    assert np.all(layer.params["bias_ih_l0"] == 0) and np.all(layer.params["bias_hh_l0"] == 0)
    assert np.any(layer.params["weight_ih_l0"] != 0)


def test_xavier_plus_orthogonal_sets_both():
    layer = rnnkit.RNN(20, 10, init="xavier+orthogonal", seed=3, dtype="float64")
    w = layer.params["weight_hh_l0"]
    np.testing.assert_allclose(w @ w.T, np.eye(10), atol=1e-12)
    assert np.max(np.abs(layer.params["weight_ih_l0"])) <= np.sqrt(6.0 / 30)


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.LayerNormLSTM])
def test_forget_bias(cls):
    layer = cls(3, 5, num_layers=2, bidirectional=True, forget_bias=1.0, seed=0)
    for k, v in layer.params.items():
        if k.startswith("bias_ih"):
            assert np.all(v[5:10] == 1.0)
        if k.startswith("bias_hh"):
            assert np.all(v[5:10] == 0.0)


def test_layer_norm_parameters_start_at_one_and_zero():
    layer = rnnkit.LayerNormLSTM(3, 5, init="xavier", seed=0)
    for k, v in layer.params.items():
        if k.startswith("ln_"):
            assert np.all(v == (1.0 if "_weight_" in k else 0.0)), k


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(init="he"), ValueError, "init: expected one of"),
        (dict(init="identity+orthogonal"), ValueError, "only 'xavier' and 'orthogonal' combine"),
        (dict(init=3), TypeError, "init"),
        (dict(init_gain=0.0), ValueError, "init_gain: expected a positive number"),
        (dict(forget_bias="1"), TypeError, "forget_bias"),
        (dict(forget_bias=1.0, bias=False), ValueError, "forget_bias: expected None when bias=False"),
    ],
)
def test_bad_init_options(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        rnnkit.LSTM(3, 4, **kwargs)


def test_reset_parameters_with_seed_reproduces():
    layer = rnnkit.GRU(3, 4, seed=0)
    layer.reset_parameters(seed=42)
    first = layer.state_dict()
    layer.reset_parameters(seed=42)
    for k, v in first.items():
        np.testing.assert_array_equal(layer.params[k], v)
