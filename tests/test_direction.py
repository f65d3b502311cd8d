"""direction="forward" | "reverse" | "bidirectional" (issue 14): a reverse-only layer runs every
layer over t = T-1 ... 0. Checked against the forward layer on each sequence reversed (its valid
part, with lengths), against ONNX Runtime's direction="reverse" operators, by float64 finite
differences, on the CUDA backend, through the PyTorch bridge and the ONNX converters; and every
misuse refused.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import convert
from reference import max_relative_diff
from test_gradients import check_all_gradients
from test_zero_lengths import ORT_RTOL, _ort_run

CELLS = {"RNN": {}, "LSTM": {}, "GRU": {}, "GRU_before": {"reset_after": False}, "LayerNormLSTM": {},
         "LayerNormGRU": {}, "LSTM_proj": {"proj_size": 3}}


def make(name, direction, dtype="float32", **kw):
    cls = name.split("_")[0]
    return getattr(rnnkit, cls)(3, 5, seed=7, direction=direction, dtype=dtype, **CELLS[name], **kw)


def reverse_valid(a, lengths):
    """Each sequence's valid steps in reverse order (padding left in place): [T, N, ...]."""
    out = a.copy()
    for n, L in enumerate(lengths):
        out[:L, n] = a[:L, n][::-1]
    return out


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("num_layers", [1, 2])
def test_reverse_is_the_forward_layer_on_reversed_sequences(name, num_layers, rng):
    rev = make(name, "reverse", num_layers=num_layers)
    fwd = make(name, "forward", num_layers=num_layers)
    assert rev.state_dict().keys() == fwd.state_dict().keys()  # one direction: no _reverse suffix
    fwd.load_state_dict(rev.state_dict())
    T, N = 6, 3
    lengths = np.array([6, 2, 4])
    x = rng.standard_normal((T, N, 3)).astype(np.float32)
    y, state = rev(x, lengths=lengths)
    y_f, state_f = fwd(reverse_valid(x, lengths), lengths=lengths)
    # Layer by layer the reverse stack is the forward one on reversed sequences, reversed back, so
    # the whole stack is too: the same arithmetic in the same order, bit for bit.
    np.testing.assert_array_equal(y, reverse_valid(y_f, lengths))
    h, h_f = (state[0], state_f[0]) if rev._has_cell_state else (state, state_f)
    np.testing.assert_array_equal(h, h_f)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_a_two_layer_reverse_stack_is_two_reverse_layers(name, rng):
    stack = make(name, "reverse", num_layers=2)
    first, second = make(name, "reverse"), getattr(rnnkit, name)(5, 5, seed=0, direction="reverse")
    sd = stack.state_dict()
    first.load_state_dict({k: v for k, v in sd.items() if k.endswith("_l0")})
    second.load_state_dict({k.replace("_l1", "_l0"): v for k, v in sd.items() if k.endswith("_l1")})
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y, _ = stack(x)
    y1, _ = first(x)
    y2, _ = second(y1)
    np.testing.assert_allclose(y, y2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_reverse_is_onnx_runtimes(cls, rng):
    layer = make(cls, "reverse")
    layer.eval()
    T, N, H = 6, 4, 5
    x = rng.standard_normal((T, N, 3)).astype(np.float32)
    h0 = rng.standard_normal((1, N, H)).astype(np.float32)
    c0 = rng.standard_normal((1, N, H)).astype(np.float32)
    lengths = np.array([6, 1, 3, 0])
    hx = (h0, c0) if cls == "LSTM" else h0
    y, state = layer(x, hx, lengths=lengths)
    got = _ort_run(layer, x, h0, c0, lengths)
    assert convert.to_onnx(layer)[0]["direction"] == "reverse"
    assert max_relative_diff(y, got[0][:, 0]) < ORT_RTOL
    h_n = state[0] if cls == "LSTM" else state
    assert max_relative_diff(h_n, got[1]) < ORT_RTOL
    if cls == "LSTM":
        assert max_relative_diff(state[1], got[2]) < ORT_RTOL


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_finite_differences(name, with_lengths, rng):
    layer = make(name, "reverse", dtype="float64", num_layers=2)
    check_all_gradients(layer, rng, lengths=[4, 2, 3] if with_lengths else None)


@pytest.mark.skipif(not rnnkit.cuda.is_available(), reason="no CUDA backend here (a GPU or the emulation build)")
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU", "LayerNormGRU"])
def test_the_cuda_backend_agrees(name, rng):
    cpu, dev = make(name, "reverse", num_layers=2), make(name, "reverse", num_layers=2).to("cuda")
    x = rng.standard_normal((5, 3, 3)).astype(np.float32)
    lengths = np.array([5, 2, 0])
    y, _ = cpu(x, lengths=lengths)
    y_d, _ = dev(x, lengths=lengths)
    np.testing.assert_allclose(rnnkit.to_numpy(y_d), y, rtol=2e-5, atol=2e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, _ = cpu.backward(dy)
    dx_d, _ = dev.backward(dy)
    np.testing.assert_allclose(rnnkit.to_numpy(dx_d), dx, rtol=2e-4, atol=2e-5)
    for k, g in cpu.grads.items():
        np.testing.assert_allclose(rnnkit.to_numpy(dev.grads[k]), g, rtol=2e-4, atol=2e-5, err_msg=k)


def test_the_torch_bridge_takes_direction(rng):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    import rnnkit.torch as rt

    ours = rt.GRU(3, 5, num_layers=2, direction="reverse")
    assert "direction='reverse'" in repr(ours)
    layer = make("GRU", "reverse", num_layers=2)
    layer.load_state_dict({k: v.detach().numpy() for k, v in ours.state_dict().items()})
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    y, _ = ours(xt)
    want, _ = layer(x)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-6, atol=1e-7)
    y.sum().backward()
    dx, _ = layer.backward(np.ones_like(want))
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-5, atol=1e-6)


def test_converters_and_checkpoints_carry_it(rng):
    layer = make("LSTM", "reverse")
    other = make("LSTM", "reverse")
    convert.from_onnx(other, convert.to_onnx(layer))
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(other.params[k], v)
    with pytest.raises(ValueError, match=r"expected 'reverse' for this layer, got 'forward': make the layer with "
                                         r"direction='forward'"):
        convert.from_onnx(layer, convert.to_onnx(make("LSTM", "forward")))
    net = rnnkit.RNNNetwork(vocab_size=7, hidden_size=4, direction="reverse", head="last", output_size=3)
    again = rnnkit.RNNNetwork(**net.config())
    assert again.rnn.direction == "reverse" and not again.rnn.bidirectional
    import pickle

    assert pickle.loads(pickle.dumps(layer)).direction == "reverse"
    assert pickle.loads(pickle.dumps(layer._config)).reverse


def test_misuse_is_refused():
    with pytest.raises(ValueError, match=r"direction: expected one of \['forward', 'reverse', 'bidirectional'\], "
                                         r"got 'backward'"):
        rnnkit.RNN(3, 4, direction="backward")
    with pytest.raises(ValueError, match="direction: expected 'bidirectional' \\(or None\\) with bidirectional=True, "
                                         "got 'reverse'"):
        rnnkit.LSTM(3, 4, bidirectional=True, direction="reverse")
    assert rnnkit.GRU(3, 4, direction="bidirectional").bidirectional
    assert rnnkit.GRU(3, 4, bidirectional=True).direction == "bidirectional"
    with pytest.raises(ValueError, match="step: expected a unidirectional forward layer"):
        rnnkit.LSTM(3, 4, direction="reverse").step(np.zeros(3, np.float32))
    net = rnnkit.RNNNetwork(vocab_size=5, hidden_size=4, direction="reverse")
    with pytest.raises(ValueError, match="step: expected a forward network"):
        net.step(np.array([1]))
    with pytest.raises(ValueError, match="network: expected a forward network"):
        net.generate([1], 3)
    bi = rnnkit.RNNNetwork(vocab_size=5, hidden_size=4, bidirectional=True)
    with pytest.raises(ValueError, match="network: expected a forward network .* got a bidirectional one"):
        bi.generate([1], 3)
