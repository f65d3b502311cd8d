"""Parity with torch.nn.RNN (the oracle): forward and every gradient, float32.

Weights go from the torch module to rnnkit through load_state_dict, exactly as a user would move
them. Skipped, with the reason shown, when PyTorch is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from conftest import TORCH_PARITY_RTOL_F32, require_torch
from reference import max_relative_diff

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_matches_torch_rnn(rng, nonlinearity, bias, batch_first, with_h0):
    torch = require_torch()
    T, N, C, H = 12, 5, 10, 16
    torch.manual_seed(0)
    ref = torch.nn.RNN(C, H, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first)
    layer = rnnkit.RNN(C, H, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first)
    layer.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})

    x = rng.standard_normal((N, T, C) if batch_first else (T, N, C)).astype(np.float32)
    h0 = rng.standard_normal((1, N, H)).astype(np.float32) if with_h0 else None
    dy = rng.standard_normal((N, T, H) if batch_first else (T, N, H)).astype(np.float32)
    dh_n = rng.standard_normal((1, N, H)).astype(np.float32)

    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True) if with_h0 else None
    yt, hnt = ref(xt, h0t)
    (yt * torch.from_numpy(dy)).sum().add((hnt * torch.from_numpy(dh_n)).sum()).backward()

    y, h_n = layer(x, h0)
    dx, dh0 = layer.backward(dy, dh_n)

    checks = {"y": (y, yt), "h_n": (h_n, hnt), "dx": (dx, xt.grad)}
    if with_h0:
        checks["dh0"] = (dh0, h0t.grad)
    for name, p in ref.named_parameters():
        checks[f"grad {name}"] = (layer.grads[name], p.grad)
    for label, (ours, theirs) in checks.items():
        err = max_relative_diff(ours, theirs.detach().numpy())
        assert err < TORCH_PARITY_RTOL_F32, f"{label}: relative difference {err:.2e}"


def test_state_dict_round_trip_through_torch(rng):
    torch = require_torch()
    layer = rnnkit.RNN(6, 9, seed=4)
    ref = torch.nn.RNN(6, 9)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    back = rnnkit.RNN(6, 9, seed=5)
    back.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    for k, v in layer.params.items():
        np.testing.assert_array_equal(back.params[k], v)
