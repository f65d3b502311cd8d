"""Parity with torch.nn.RNN / LSTM / GRU (the oracle): forward and every gradient, float32.

Weights go from the torch module to rnnkit through load_state_dict, exactly as a user would move
them. Variable lengths are compared against pack_padded_sequence(enforce_sorted=False). Skipped,
with the reason shown, when PyTorch is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from conftest import TORCH_PARITY_RTOL_F32, require_torch
from reference import max_relative_diff

pytestmark = pytest.mark.torch

# name -> (torch class name, torch kwargs, rnnkit class, rnnkit kwargs)
MODULES = {
    "rnn_tanh": ("RNN", {}, rnnkit.RNN, {}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}, rnnkit.RNN, {"nonlinearity": "relu"}),
    "lstm": ("LSTM", {}, rnnkit.LSTM, {}),
    "lstm_proj": ("LSTM", {"proj_size": 6}, rnnkit.LSTM, {"proj_size": 6}),
    "gru": ("GRU", {}, rnnkit.GRU, {}),
}


def _run_torch(torch, ref, x, hx, lengths, dy, dstate):
    """Forward + backward in torch; returns outputs and gradients as numpy."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    xt = torch.tensor(x, requires_grad=True)
    hxt = None
    if hx is not None:
        hxt = tuple(torch.tensor(a, requires_grad=True) for a in hx) if isinstance(hx, tuple) else torch.tensor(hx, requires_grad=True)
    if lengths is None:
        yt, st = ref(xt, hxt)
    else:
        packed = pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
        out, st = ref(packed, hxt)
        yt, _ = pad_packed_sequence(out, total_length=x.shape[0])
    states = st if isinstance(st, tuple) else (st,)
    loss = (yt * torch.from_numpy(dy)).sum()
    for s, ds in zip(states, dstate if isinstance(dstate, tuple) else (dstate,)):
        loss = loss + (s * torch.from_numpy(ds)).sum()
    loss.backward()
    d_hx = None
    if hx is not None:
        d_hx = tuple(a.grad.numpy() for a in hxt) if isinstance(hxt, tuple) else hxt.grad.numpy()
    return (yt.detach().numpy(), tuple(s.detach().numpy() for s in states), xt.grad.numpy(), d_hx,
            {name: p.grad.numpy() for name, p in ref.named_parameters()})


@pytest.mark.parametrize("module", list(MODULES))
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)], ids=["1-uni", "2-bi"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
def test_matches_torch(rng, module, num_layers, bidirectional, with_lengths, with_state):
    torch = require_torch()
    T, N, C, H = 11, 5, 10, 16
    t_name, t_kw, ours_cls, ours_kw = MODULES[module]
    torch.manual_seed(0)
    ref = getattr(torch.nn, t_name)(C, H, num_layers=num_layers, bidirectional=bidirectional, **t_kw)
    layer = ours_cls(C, H, num_layers=num_layers, bidirectional=bidirectional, **ours_kw)
    layer.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})

    D = 2 if bidirectional else 1
    P = t_kw.get("proj_size", 0) or H
    cell_state = t_name == "LSTM"
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    lengths = [11, 3, 7, 1, 9] if with_lengths else None
    hx = None
    if with_state:
        h0 = rng.standard_normal((num_layers * D, N, P)).astype(np.float32)
        hx = (h0, rng.standard_normal((num_layers * D, N, H)).astype(np.float32)) if cell_state else h0
    dy = rng.standard_normal((T, N, D * P)).astype(np.float32)
    dh = rng.standard_normal((num_layers * D, N, P)).astype(np.float32)
    dstate = (dh, rng.standard_normal((num_layers * D, N, H)).astype(np.float32)) if cell_state else dh

    y_t, states_t, dx_t, dhx_t, grads_t = _run_torch(torch, ref, x, hx, lengths, dy, dstate)

    y, state = layer(x, hx, lengths)
    dx, dhx = layer.backward(dy, dstate)

    checks = {"y": (y, y_t), "dx": (dx, dx_t)}
    for i, (ours, theirs) in enumerate(zip(state if cell_state else (state,), states_t)):
        checks[f"state[{i}]"] = (ours, theirs)
    if with_state:
        for i, (ours, theirs) in enumerate(zip(dhx if cell_state else (dhx,), dhx_t if cell_state else (dhx_t,))):
            checks[f"d state0[{i}]"] = (ours, theirs)
    for name, g in grads_t.items():
        checks[f"grad {name}"] = (layer.grads[name], g)
    failures = []
    for label, (ours, theirs) in checks.items():
        err = max_relative_diff(ours, theirs)
        if not err < TORCH_PARITY_RTOL_F32:
            failures.append(f"{label}: relative difference {err:.2e}")
    assert not failures, failures


def test_state_dict_round_trip_through_torch():
    torch = require_torch()
    layer = rnnkit.LSTM(6, 9, num_layers=2, bidirectional=True, proj_size=4, seed=4)
    ref = torch.nn.LSTM(6, 9, num_layers=2, bidirectional=True, proj_size=4)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    back = rnnkit.LSTM(6, 9, num_layers=2, bidirectional=True, proj_size=4, seed=5)
    back.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    for k, v in layer.params.items():
        np.testing.assert_array_equal(back.params[k], v)


def test_batch_first_matches_torch(rng):
    torch = require_torch()
    torch.manual_seed(1)
    ref = torch.nn.GRU(4, 6, num_layers=2, batch_first=True)
    layer = rnnkit.GRU(4, 6, num_layers=2, batch_first=True)
    layer.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = rng.standard_normal((3, 7, 4)).astype(np.float32)
    y_t, h_t = ref(torch.from_numpy(x))
    y, h = layer(x)
    assert max_relative_diff(y, y_t.detach().numpy()) < TORCH_PARITY_RTOL_F32
    assert max_relative_diff(h, h_t.detach().numpy()) < TORCH_PARITY_RTOL_F32
