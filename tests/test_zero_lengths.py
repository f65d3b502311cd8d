"""Sequences of length 0 (lengths may contain 0, issue 14): ONNX Runtime's outputs, the gradients
of the rest of the batch unchanged, the same on the CUDA backend, and networks refusing them.

ONNX Runtime is the truth for the forward: a zero-length sequence outputs zeros at every step and
ends with Y_h (and Y_c) = 0 whatever the initial state. Backward follows from that: nothing of a
zero-length sequence depends on anything, so its dx and dh0 are 0 and the parameter gradients are
those of the batch without it.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from reference import max_relative_diff

# rnnkit (float32) against ONNX Runtime's float32 operators.
ORT_RTOL = 1e-5
# Parameter gradients of a batch with a zero-length sequence against the batch without it: the
# same sums with one term of zeros more, float32.
SAME_GRADS_RTOL = 1e-6

CASES = [("RNN", {}), ("LSTM", {}), ("GRU", {}), ("RNN", {"bidirectional": True}),
         ("LSTM", {"bidirectional": True}), ("GRU", {"bidirectional": True})]


def _ort_run(layer, x, h0, c0, lengths):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the ONNX Runtime oracle is skipped")
    from onnx import TensorProto, helper, numpy_helper

    node_w = rnnkit.convert.to_onnx(layer)[0]
    op = {"RNN_TANH": "RNN", "LSTM": "LSTM", "GRU": "GRU"}[layer.mode]
    T, N, C = x.shape
    D, H = layer.num_directions, layer.hidden_size
    inits = [numpy_helper.from_array(node_w[k], k) for k in ("W", "R", "B")]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, C]),
              helper.make_tensor_value_info("L", TensorProto.INT32, [N]),
              helper.make_tensor_value_info("h0", TensorProto.FLOAT, [D, N, H])]
    names = ["X", "W", "R", "B", "L", "h0"]
    outs = ["Y", "Y_h"]
    attrs = {"hidden_size": H, "direction": node_w["direction"]}
    if op == "LSTM":
        inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, [D, N, H]))
        names.append("c0")
        outs.append("Y_c")
    if op == "GRU":
        attrs["linear_before_reset"] = node_w["linear_before_reset"]
    graph = helper.make_graph([helper.make_node(op, names, outs, **attrs)], "g", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"X": x, "L": lengths.astype(np.int32), "h0": h0}
    if op == "LSTM":
        feeds["c0"] = c0
    return sess.run(None, feeds)


@pytest.mark.parametrize("cls,options", CASES)
def test_forward_is_onnx_runtimes(cls, options, rng):
    layer = getattr(rnnkit, cls)(3, 5, seed=1, **options)
    layer.eval()
    T, N, D, H = 6, 4, layer.num_directions, 5
    x = rng.standard_normal((T, N, 3)).astype(np.float32)
    h0 = rng.standard_normal((D, N, H)).astype(np.float32)
    c0 = rng.standard_normal((D, N, H)).astype(np.float32)
    lengths = np.array([6, 0, 3, 0])
    hx = (h0, c0) if cls == "LSTM" else h0
    y, state = layer(x, hx, lengths=lengths)
    got = _ort_run(layer, x, h0, c0, lengths)
    # ONNX's Y is [T, D, N, H]; rnnkit's [T, N, D*H], forward half first.
    want_y = got[0].transpose(0, 2, 1, 3).reshape(T, N, D * H)
    assert max_relative_diff(y, want_y) < ORT_RTOL
    h_n, c_n = state if cls == "LSTM" else (state, None)
    assert max_relative_diff(h_n, got[1]) < ORT_RTOL
    if cls == "LSTM":
        assert max_relative_diff(c_n, got[2]) < ORT_RTOL
    for n in (1, 3):
        assert not y[:, n].any() and not h_n[:, n].any()
        if c_n is not None:
            assert not c_n[:, n].any()


@pytest.mark.parametrize("cls,options", CASES + [("LSTM", {"num_layers": 2, "proj_size": 3}),
                                                 ("GRU", {"num_layers": 2, "reset_after": False})])
def test_backward_leaves_the_rest_of_the_batch_alone(cls, options, rng):
    layer = getattr(rnnkit, cls)(3, 5, seed=2, **options)
    has_c = layer._has_cell_state
    T, N, L, D, P = 5, 3, layer.num_layers, layer.num_directions, layer.state_size
    x = rng.standard_normal((T, N, 3)).astype(np.float32)
    h0 = rng.standard_normal((L * D, N, P)).astype(np.float32)
    c0 = rng.standard_normal((L * D, N, 5)).astype(np.float32)
    dy = rng.standard_normal((T, N, D * P)).astype(np.float32)
    dh_n = rng.standard_normal((L * D, N, P)).astype(np.float32)
    dc_n = rng.standard_normal((L * D, N, 5)).astype(np.float32)
    keep = np.array([0, 2])

    def train(rows, lengths):
        layer.zero_grad()
        hx = (h0[:, rows], c0[:, rows]) if has_c else h0[:, rows]
        y, _ = layer(x[:, rows], hx, lengths=lengths)
        dstate = (dh_n[:, rows], dc_n[:, rows]) if has_c else dh_n[:, rows]
        dx, dhx = layer.backward(dy[:, rows], dstate)
        return y, dx, dhx, {k: np.array(v) for k, v in layer.grads.items()}

    y, dx, dhx, grads = train(np.arange(N), np.array([5, 0, 2]))
    y_k, dx_k, dhx_k, grads_k = train(keep, np.array([5, 2]))
    np.testing.assert_array_equal(y[:, 1], 0)
    np.testing.assert_array_equal(dx[:, 1], 0)
    for d in (dhx if has_c else (dhx,)):
        np.testing.assert_array_equal(d[:, 1], 0)
    np.testing.assert_allclose(y[:, keep], y_k, rtol=0, atol=0)
    for k in grads:
        assert max_relative_diff(grads[k], grads_k[k]) < SAME_GRADS_RTOL, k
    assert max_relative_diff(dx[:, keep], dx_k) < SAME_GRADS_RTOL


def test_a_batch_of_zero_length_sequences(rng):
    layer = rnnkit.LSTM(3, 4, seed=0)
    x = rng.standard_normal((2, 2, 3)).astype(np.float32)
    h0 = np.ones((1, 2, 4), np.float32)
    y, (h_n, c_n) = layer(x, (h0, h0), lengths=[0, 0])
    assert not y.any() and not h_n.any() and not c_n.any()
    dx, (dh0, dc0) = layer.backward(np.ones_like(y), (np.ones_like(h_n), np.ones_like(c_n)))
    assert not dx.any() and not dh0.any() and not dc0.any()
    assert not any(g.any() for g in layer.grads.values())


@pytest.mark.skipif(not rnnkit.cuda.is_available(), reason="no CUDA backend here (a GPU or the emulation build)")
@pytest.mark.parametrize("cls", ["RNN", "LSTM", "GRU"])
def test_the_cuda_backend_agrees(cls, rng):
    cpu = getattr(rnnkit, cls)(3, 5, seed=4, num_layers=2, bidirectional=True)
    dev = getattr(rnnkit, cls)(3, 5, seed=4, num_layers=2, bidirectional=True).to("cuda")
    x = rng.standard_normal((5, 3, 3)).astype(np.float32)
    h0 = rng.standard_normal((4, 3, 5)).astype(np.float32)
    hx = (h0, h0) if cls == "LSTM" else h0
    lengths = np.array([0, 5, 2])
    y, state = cpu(x, hx, lengths=lengths)
    y_d, state_d = dev(x, hx, lengths=lengths)
    np.testing.assert_allclose(rnnkit.to_numpy(y_d), y, rtol=2e-5, atol=2e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dh = rng.standard_normal((4, 3, 5)).astype(np.float32)
    dstate = (dh, dh) if cls == "LSTM" else dh
    dx, dhx = cpu.backward(dy, dstate)
    dx_d, dhx_d = dev.backward(dy, dstate)
    np.testing.assert_allclose(rnnkit.to_numpy(dx_d), dx, rtol=2e-4, atol=2e-5)
    for a, b in zip(dhx if cls == "LSTM" else (dhx,), dhx_d if cls == "LSTM" else (dhx_d,)):
        np.testing.assert_allclose(rnnkit.to_numpy(b), a, rtol=2e-4, atol=2e-5)
        np.testing.assert_array_equal(a[:, 0], 0)


def test_lengths_below_zero_and_networks_are_refused():
    layer = rnnkit.GRU(3, 4)
    x = np.zeros((4, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"lengths\[1\]: expected a length in \[0, 4\], got -1"):
        layer(x, lengths=[2, -1])
    net = rnnkit.RNNNetwork(input_size=3, hidden_size=4, output_size=2, head="last", loss="mse")
    with pytest.raises(ValueError, match=r"lengths\[0\]: expected a length in \[1, 4\], got 0"):
        net.forward(x, lengths=[0, 2])
