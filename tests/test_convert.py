"""rnnkit.convert: ONNX and Keras layouts, checked by round trips and by the other layout's own
equations (written out here from the ONNX operator spec and Keras' cell code)."""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import convert
from reference import max_relative_diff, sigmoid

LAYERS = {
    "rnn": lambda **kw: rnnkit.RNN(4, 5, dtype=np.float64, **kw),
    "rnn_relu": lambda **kw: rnnkit.RNN(4, 5, nonlinearity="relu", dtype=np.float64, **kw),
    "lstm": lambda **kw: rnnkit.LSTM(4, 5, dtype=np.float64, **kw),
    "gru": lambda **kw: rnnkit.GRU(4, 5, dtype=np.float64, **kw),
    "gru_reset_before": lambda **kw: rnnkit.GRU(4, 5, reset_after=False, dtype=np.float64, **kw),
}
OPTIONS = [dict(), dict(num_layers=2, bidirectional=True), dict(bias=False)]


def _outputs(layer, x):
    y, s = layer(x)
    return [y] + list(s if isinstance(s, tuple) else (s,))


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "2-bi", "no-bias"])
def test_onnx_round_trip_is_exact(name, options):
    a = LAYERS[name](seed=1, **options)
    b = LAYERS[name](seed=2, **options)
    convert.from_onnx(b, convert.to_onnx(a))
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "2-bi", "no-bias"])
def test_keras_round_trips(rng, name, options):
    a = LAYERS[name](seed=1, **options)
    keras = convert.to_keras(a)
    b = LAYERS[name](seed=2, **options)
    convert.from_keras(b, keras)
    # keras -> rnnkit -> keras: every array exactly.
    for g1, g2 in zip(keras, convert.to_keras(b)):
        for u, v in zip(g1, g2):
            np.testing.assert_array_equal(u, v)
    # rnnkit -> keras -> rnnkit: the same function (biases may be re-split between b_ih and b_hh).
    x = rng.standard_normal((6, 3, 4))
    for u, v in zip(_outputs(a, x), _outputs(b, x)):
        assert max_relative_diff(v, u) < 1e-14


# ---- the other layouts' own equations ------------------------------------------------------------
def onnx_forward(node, mode, x):
    """One ONNX RNN/LSTM/GRU node, forward direction, per the ONNX operator spec."""
    W, R, B = node["W"][0], node["R"][0], node["B"][0]
    H = R.shape[1]
    G = W.shape[0] // H
    Wb, Rb = B[:G * H], B[G * H:]
    h = np.zeros((x.shape[1], H))
    c = np.zeros_like(h)
    ys = []
    for xt in x:
        if mode == "lstm":
            Wi, Wo, Wf, Wc = np.split(W, 4)
            Ri, Ro, Rf, Rc = np.split(R, 4)
            bi, bo, bf, bc = np.split(Wb + Rb, 4)
            it = sigmoid(xt @ Wi.T + h @ Ri.T + bi)
            ft = sigmoid(xt @ Wf.T + h @ Rf.T + bf)
            ct = np.tanh(xt @ Wc.T + h @ Rc.T + bc)
            c = ft * c + it * ct
            ot = sigmoid(xt @ Wo.T + h @ Ro.T + bo)
            h = ot * np.tanh(c)
        elif mode.startswith("gru"):
            Wz, Wr, Wh = np.split(W, 3)
            Rz, Rr, Rh = np.split(R, 3)
            Wbz, Wbr, Wbh = np.split(Wb, 3)
            Rbz, Rbr, Rbh = np.split(Rb, 3)
            zt = sigmoid(xt @ Wz.T + h @ Rz.T + Wbz + Rbz)
            rt = sigmoid(xt @ Wr.T + h @ Rr.T + Wbr + Rbr)
            if node["linear_before_reset"]:
                ht = np.tanh(xt @ Wh.T + rt * (h @ Rh.T + Rbh) + Wbh)
            else:
                ht = np.tanh(xt @ Wh.T + (rt * h) @ Rh.T + Rbh + Wbh)
            h = (1 - zt) * ht + zt * h
        else:
            pre = xt @ W.T + h @ R.T + Wb + Rb
            h = np.tanh(pre) if mode == "rnn" else np.maximum(pre, 0)
        ys.append(h)
    return np.stack(ys)


def keras_forward(arrays, mode, x, reset_after=True):
    """One Keras SimpleRNN/LSTM/GRU layer (return_sequences=True), per Keras' cell equations."""
    kernel, recurrent, bias = arrays
    H = recurrent.shape[0]
    h = np.zeros((x.shape[1], H))
    c = np.zeros_like(h)
    ys = []
    for xt in x:
        if mode == "lstm":
            z = xt @ kernel + h @ recurrent + bias
            i, f, cc, o = np.split(z, 4, axis=-1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(cc)
            h = sigmoid(o) * np.tanh(c)
        elif mode.startswith("gru"):
            if reset_after:
                mx = xt @ kernel + bias[0]
                mi = h @ recurrent + bias[1]
                xz, xr, xh = np.split(mx, 3, axis=-1)
                rz, rr, rh = np.split(mi, 3, axis=-1)
                z, r = sigmoid(xz + rz), sigmoid(xr + rr)
                hh = np.tanh(xh + r * rh)
            else:
                mx = xt @ kernel + bias
                xz, xr, xh = np.split(mx, 3, axis=-1)
                Uz, Ur, Uh = np.split(recurrent, 3, axis=-1)
                z, r = sigmoid(xz + h @ Uz), sigmoid(xr + h @ Ur)
                hh = np.tanh(xh + (r * h) @ Uh)
            h = z * h + (1 - z) * hh
        else:
            pre = xt @ kernel + h @ recurrent + bias
            h = np.tanh(pre) if mode == "rnn" else np.maximum(pre, 0)
        ys.append(h)
    return np.stack(ys)


@pytest.mark.parametrize("name", list(LAYERS))
def test_onnx_layout_computes_the_same_function(rng, name):
    layer = LAYERS[name](seed=3)
    x = rng.standard_normal((7, 2, 4))
    y, _ = layer(x)
    node = convert.to_onnx(layer)[0]
    assert max_relative_diff(onnx_forward(node, name, x), y) < 1e-13


@pytest.mark.parametrize("name", list(LAYERS))
def test_keras_layout_computes_the_same_function(rng, name):
    layer = LAYERS[name](seed=3)
    x = rng.standard_normal((7, 2, 4))
    y, _ = layer(x)
    arrays = convert.to_keras(layer)[0]
    reset_after = getattr(layer, "reset_after", True)
    assert max_relative_diff(keras_forward(arrays, name, x, reset_after), y) < 1e-13


def test_onnx_gate_order_is_i_o_f_c_and_z_r_h():
    lstm = rnnkit.LSTM(2, 3, seed=0)
    W = convert.to_onnx(lstm)[0]["W"][0]
    w = lstm.params["weight_ih_l0"]
    np.testing.assert_array_equal(W[3:6], w[9:12])   # ONNX o = PyTorch gate 3
    np.testing.assert_array_equal(W[6:9], w[3:6])    # ONNX f = PyTorch gate 1
    gru = rnnkit.GRU(2, 3, seed=0)
    W = convert.to_onnx(gru)[0]["W"][0]
    np.testing.assert_array_equal(W[0:3], gru.params["weight_ih_l0"][3:6])  # ONNX z = PyTorch gate 1


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: rnnkit.LayerNormLSTM(2, 3), "no LayerNorm, IndRNN or minGRU/minLSTM cells"),
        (lambda: rnnkit.IndRNN(2, 3), "no LayerNorm, IndRNN"),
        (lambda: rnnkit.MinLSTM(2, 3), "minGRU/minLSTM"),
        (lambda: rnnkit.LSTM(2, 3, proj_size=2), "without proj_size"),
    ],
)
def test_unconvertible_layers_are_refused(make, pattern):
    with pytest.raises((TypeError, ValueError), match=pattern):
        convert.to_onnx(make())
    with pytest.raises((TypeError, ValueError), match=pattern):
        convert.to_keras(make())


def test_wrong_shapes_are_refused():
    layer = rnnkit.GRU(2, 3)
    nodes = convert.to_onnx(layer)
    nodes[0]["W"] = nodes[0]["W"][:, :-1]
    with pytest.raises(ValueError, match=r"nodes\[0\]\['W'\]: expected shape \(1, 9, 2\)"):
        convert.from_onnx(layer, nodes)
    with pytest.raises(ValueError, match="linear_before_reset"):
        convert.from_onnx(rnnkit.GRU(2, 3, reset_after=False), convert.to_onnx(layer))
    keras = convert.to_keras(layer)
    with pytest.raises(ValueError, match=r"groups: expected 1"):
        convert.from_keras(layer, keras * 2)


# ---- from_onnx: ONNX's defaults applied, and every mismatch refused with what to change ---------
def test_from_onnx_refuses_another_direction():
    layer = rnnkit.LSTM(2, 3)
    nodes = convert.to_onnx(layer)
    assert nodes[0]["direction"] == "forward" and nodes[0]["hidden_size"] == 3
    reverse = dict(nodes[0], direction="reverse")
    before = layer.state_dict()
    with pytest.raises(ValueError, match=r"nodes\[0\]\['direction'\]: expected 'forward' for this layer, got "
                                         r"'reverse': make the layer with direction='reverse'"):
        convert.from_onnx(layer, [reverse])
    with pytest.raises(ValueError, match=r"nodes\[0\]\['direction'\]: expected 'forward' for this layer, got "
                                         r"'bidirectional': make the layer with direction='bidirectional'"):
        convert.from_onnx(layer, [dict(nodes[0], direction=b"bidirectional")])
    with pytest.raises(ValueError, match=r"nodes\[0\]\['hidden_size'\]: expected 3 \(the layer's hidden_size\), got 4"):
        convert.from_onnx(layer, [dict(nodes[0], hidden_size=4)])
    for name, value in before.items():  # nothing was loaded
        np.testing.assert_array_equal(layer.params[name], value)


def test_from_onnx_applies_onnxs_gru_default_linear_before_reset_0():
    source = rnnkit.GRU(2, 3, reset_after=False, seed=1)
    node = convert.to_onnx(source)[0]
    del node["linear_before_reset"]  # as an ONNX node that leaves the attribute at its default
    target = rnnkit.GRU(2, 3, reset_after=False, seed=2)
    convert.from_onnx(target, [node])
    for name, value in source.state_dict().items():
        np.testing.assert_array_equal(target.params[name], value)
    with pytest.raises(ValueError, match=r"nodes\[0\]\['linear_before_reset'\]: expected 1 for "
                                         r"GRU\(reset_after=True\), got 0 \(absent: ONNX's default 0\): make the "
                                         r"layer with reset_after=False"):
        convert.from_onnx(rnnkit.GRU(2, 3), [node])


def test_from_onnx_biases_missing_are_zeros_and_nonzero_ones_need_a_biased_layer():
    source = rnnkit.RNN(2, 3, seed=1)
    node = convert.to_onnx(source)[0]
    target = rnnkit.RNN(2, 3, seed=2)
    convert.from_onnx(target, [dict(node, B=None)])  # ONNX: B absent means zero biases
    assert not target.params["bias_ih_l0"].any() and not target.params["bias_hh_l0"].any()
    np.testing.assert_array_equal(target.params["weight_hh_l0"], source.params["weight_hh_l0"])
    unbiased = rnnkit.RNN(2, 3, bias=False)
    with pytest.raises(ValueError, match=r"nodes\[0\]\['B'\]: expected none or zeros for a layer with bias=False "
                                         r"\(it has no biases to load them into: make the layer with bias=True\)"):
        convert.from_onnx(unbiased, [node])
    convert.from_onnx(unbiased, [dict(node, B=np.zeros_like(node["B"]))])  # zeros lose nothing


@pytest.mark.parametrize("key, value, pattern", [
    ("clip", 3.0, r"\['clip'\]: the node's clip 3.0 .* does not match this LSTM's None: make the layer with clip=3.0"),
    ("input_forget", 1, r"\['input_forget'\]: .* make the layer with coupled_gates=True"),
    ("P", np.ones((1, 9)), r"\['P'\]: .* make the layer with peephole=True"),
    ("activations", ["HardSigmoid", "Tanh", "Tanh"],
     r"\['activations'\]: the node's activations \('HardSigmoid', 'Tanh', 'Tanh'\) .* make the layer with "
     r"activations=\('HardSigmoid', 'Tanh', 'Tanh'\)"),
    ("activations", ["Sigmoid", "Swish", "Tanh"], r"\['activations'\]: expected names among"),
    ("activation_alpha", [0.2], r"\['activation_alpha'\]: expected one value per activation that takes it"),
    ("direction", "sideways", r"\['direction'\]: expected 'forward', 'reverse' or 'bidirectional', got 'sideways'"),
])
def test_from_onnx_refuses_options_the_layer_does_not_have(key, value, pattern):
    layer = rnnkit.LSTM(2, 3)
    node = convert.to_onnx(layer)[0]
    with pytest.raises(ValueError, match=r"nodes\[0\]" + pattern):
        convert.from_onnx(layer, [dict(node, **{key: value})])


def test_from_onnx_accepts_the_default_attributes_spelled_out():
    source = rnnkit.LSTM(2, 3, bidirectional=True, seed=4)
    node = dict(convert.to_onnx(source)[0], activations=["sigmoid", "tanh", "tanh"] * 2, input_forget=0,
                P=np.zeros((2, 9)), clip=None)
    target = rnnkit.LSTM(2, 3, bidirectional=True, seed=5)
    convert.from_onnx(target, [node])
    for name, value in source.state_dict().items():
        np.testing.assert_array_equal(target.params[name], value)
    relu = rnnkit.RNN(2, 3, nonlinearity="relu")
    convert.from_onnx(relu, [dict(convert.to_onnx(relu)[0], activations=["Relu"])])
    with pytest.raises(ValueError, match=r"the node's activations \('Tanh',\) .* this RNN's \('Relu',\)"):
        convert.from_onnx(relu, [dict(convert.to_onnx(relu)[0], activations=["Tanh"])])
