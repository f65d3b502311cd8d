"""IndRNN (Li et al. 2018; issue 15): h_t = act(x_t W_ih^T + b + u * h_{t-1}) with one recurrent
weight per unit. Forward against a NumPy reference written from the paper's equation, every
gradient against float64 finite differences, recurrent_max_abs kept after optimizer steps, the
streaming step, the network, the PyTorch bridge, the CUDA backend, and bad input refused.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from reference import assert_cuda_agrees, assert_matches_sequence_reference, assert_step_equals_sequence, assert_torch_module_matches, network_losses
from test_gradients import check_all_gradients

REF_RTOL = 1e-12  # float64 against the float64 reference: the same arithmetic


def reference(layer, x, h0=None, lengths=None):
    """y [T, N, D*H], h_n [L*D, N, H] from the paper's equation, per layer and direction."""
    T, N, _ = x.shape
    H, D, L = layer.hidden_size, layer.num_directions, layer.num_layers
    act = (lambda v: np.maximum(v, 0.0)) if layer.nonlinearity == "relu" else np.tanh  # noqa: E731
    lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
    inp, h_n = x, []
    for k in range(L):
        outs = []
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            W, u = layer.params["weight_ih" + sfx], layer.params["weight_hh" + sfx]
            b = layer.params["bias_ih" + sfx] + layer.params["bias_hh" + sfx]
            y = np.zeros((T, N, H))
            h_last = np.zeros((N, H))
            for n in range(N):
                h = np.zeros(H) if h0 is None else h0[k * D + d, n].copy()
                steps = range(lengths[n] - 1, -1, -1) if d == 1 else range(lengths[n])
                for t in steps:
                    h = act(inp[t, n] @ W.T + b + u * h)
                    y[t, n] = h
                h_last[n] = h if lengths[n] > 0 else 0.0
            outs.append(y)
            h_n.append(h_last)
        inp = np.concatenate(outs, axis=2)
    return inp, np.stack(h_n)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, False), (2, True)])
def test_forward_matches_the_papers_equation(nonlinearity, num_layers, bidirectional, rng):
    layer = rnnkit.IndRNN(3, 5, num_layers=num_layers, nonlinearity=nonlinearity, bidirectional=bidirectional,
                          dtype="float64", seed=1)
    assert layer.params["weight_hh_l0"].shape == (5,)
    x, h0, lengths = assert_matches_sequence_reference(layer, reference, rng, REF_RTOL)
    y_ref, _ = reference(layer, x, h0, lengths)
    layer32 = rnnkit.IndRNN(3, 5, num_layers=num_layers, nonlinearity=nonlinearity, bidirectional=bidirectional)
    layer32.load_state_dict(layer.state_dict())
    y32, _ = layer32(x.astype(np.float32), h0.astype(np.float32), lengths=lengths)
    np.testing.assert_allclose(y32, y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_finite_differences(nonlinearity, num_layers, bidirectional, rng):
    layer = rnnkit.IndRNN(3, 4, num_layers=num_layers, nonlinearity=nonlinearity, bidirectional=bidirectional,
                          dtype="float64", seed=2)
    check_all_gradients(layer, rng, lengths=np.array([4, 2, 3]))


def test_recurrent_max_abs_is_kept_after_optimizer_steps(rng):
    layer = rnnkit.IndRNN(3, 4, recurrent_max_abs=0.3, dtype="float64", seed=0)
    assert np.all(np.abs(layer.params["weight_hh_l0"]) <= 0.3)
    opt = rnnkit.optim.SGD(layer, lr=50.0)
    x = rng.standard_normal((6, 2, 3))
    for _ in range(3):
        y, _ = layer(x)
        layer.backward(-np.ones_like(y))  # pushes u up
        opt.step()
        opt.zero_grad()
        u = layer.params["weight_hh_l0"]
        assert np.all(np.abs(u) <= 0.3) and np.any(np.abs(u) == 0.3)
    free = rnnkit.IndRNN(3, 4, dtype="float64", seed=0)
    assert free.recurrent_max_abs is None


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_bad_recurrent_max_abs_is_refused(value):
    with pytest.raises(ValueError, match="recurrent_max_abs: expected a positive number"):
        rnnkit.IndRNN(3, 4, recurrent_max_abs=value)


def test_step_equals_the_sequence(rng):
    assert_step_equals_sequence(rnnkit.IndRNN(3, 4, num_layers=2, seed=3), rng)


def test_network_trains_and_rebuilds(rng):
    net = rnnkit.RNNNetwork(vocab_size=6, hidden_size=8, cell="indrnn", recurrent_max_abs=0.9, seed=0)
    assert net.rnn.nonlinearity == "relu" and net.rnn.recurrent_max_abs == 0.9

    def bounded():
        assert np.all(np.abs(net.params["rnn.weight_hh_l0"]) <= 0.9)

    losses = network_losses(net, rng, after_step=bounded)
    assert losses[-1] < 0.7 * losses[0]
    tokens = rng.integers(0, 6, size=(12, 4))
    again = rnnkit.RNNNetwork(**net.config())
    again.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(again(tokens)[0], net(tokens)[0])
    with pytest.raises(ValueError, match="recurrent_max_abs: expected None for cell 'lstm'"):
        rnnkit.RNNNetwork(vocab_size=6, cell="lstm", recurrent_max_abs=1.0)


def test_torch_module_matches(rng):
    torch = pytest.importorskip("torch")
    from rnnkit import torch as rtorch

    m = rtorch.IndRNN(3, 4, num_layers=2, nonlinearity="tanh", dtype=torch.float64)
    assert dict(m.named_parameters())["weight_hh_l0"].shape == (4,)
    assert_torch_module_matches(m, rnnkit.IndRNN(3, 4, num_layers=2, nonlinearity="tanh", dtype="float64"), rng)


def test_onnx_has_no_indrnn():
    with pytest.raises(TypeError, match="no LayerNorm, IndRNN"):
        rnnkit.convert.to_onnx(rnnkit.IndRNN(3, 4))


def test_bfloat16_runs_close_to_float32(rng):
    x = rng.standard_normal((6, 3, 8)).astype(np.float32)
    exact = rnnkit.IndRNN(8, 16, seed=4).eval()
    low = rnnkit.IndRNN(8, 16, seed=4, precision="bfloat16").eval()
    err = np.max(np.abs(low(x)[0] - exact(x)[0])) / np.max(np.abs(exact(x)[0]))
    assert 0 < err < 2e-2


@pytest.mark.cuda
@pytest.mark.skipif(not rnnkit.cuda.is_available(), reason="no CUDA backend here (a GPU or the emulation build)")
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_the_cuda_backend_agrees(nonlinearity, rng):
    assert_cuda_agrees(lambda: rnnkit.IndRNN(3, 4, num_layers=2, bidirectional=True, nonlinearity=nonlinearity,
                                             dtype="float64", seed=5), rng)


def test_cli_trains_an_indrnn(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "rnnkit", "train", "--cell", "indrnn", "--steps", "5", "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert "indrnn" in json.dumps(summary)
