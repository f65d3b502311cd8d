"""ONNX's RNN/LSTM/GRU options beyond PyTorch's (issue 14): peepholes, coupled input-forget gates,
named activations with alpha/beta, cell clip.

Random ONNX nodes (weights and attributes in ONNX's own layout) are run by three oracles: a NumPy
reference written here from the ONNX operator equations, ONNX Runtime, and, where it implements
the attribute, ONNX's reference evaluator; rnnkit runs the same node through
``rnnkit.convert.from_onnx`` into a layer made with the matching keywords. Every option's
gradients are checked against float64 finite differences; exports and imports round-trip; bad
options are refused by name.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import convert
from reference import assert_cuda_agrees, assert_torch_module_matches
from test_gradients import check_all_gradients

onnx = pytest.importorskip("onnx", reason="onnx is not installed: the ONNX oracles are skipped")

#: float64 rnnkit against the float64 NumPy reference: the same arithmetic up to summation order.
REF_RTOL = 1e-10
#: float32 rnnkit (or ONNX Runtime, float32) against the float64 reference, relative to max |y|.
FLOAT32_RTOL = 2e-5

OP_OF = {"RNN": "RNN", "LSTM": "LSTM", "GRU": "GRU"}
GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


# ---- the NumPy reference: ONNX's equations, ONNX's layout (LSTM i,o,f,c; GRU z,r,h) --------------
def _activation(name, alpha, beta):
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    return {
        "Sigmoid": sig,
        "Tanh": np.tanh,
        "Relu": lambda v: np.maximum(v, 0.0),
        "Affine": lambda v: alpha * v + beta,
        "LeakyRelu": lambda v: np.where(v < 0, alpha * v, v),
        "ThresholdedRelu": lambda v: np.where(v > alpha, v, 0.0),
        "ScaledTanh": lambda v: alpha * np.tanh(beta * v),
        "HardSigmoid": lambda v: np.clip(alpha * v + beta, 0.0, 1.0),
        "Elu": lambda v: np.where(v < 0, alpha * (np.exp(v) - 1.0), v),
        "Softsign": lambda v: v / (1.0 + np.abs(v)),
        "Softplus": lambda v: np.log1p(np.exp(v)),
    }[name]


def _functions(op, attrs, D):
    """Per direction, the activation functions (ONNX's defaults, alphas/betas consumed in order)."""
    per = {"RNN": 1, "GRU": 2, "LSTM": 3}[op]
    default = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}[op]
    names = list(attrs.get("activations", default * D))
    if len(names) == per:
        names = names * D
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    table = {n: (k, a, b) for n, k, a, b in rnnkit._core.activations()}
    fs = []
    for name in names:
        takes, da, db = table[name]
        a = (alphas.pop(0) if alphas else da) if takes >= 1 else 0.0
        b = (betas.pop(0) if betas else db) if takes >= 2 else 0.0
        fs.append(_activation(name, a, b))
    return [fs[d * per:(d + 1) * per] for d in range(D)]


def onnx_reference(op, X, W, R, B, P, attrs):
    """Y [T, D, N, H], Y_h [D, N, H] (and Y_c) of an ONNX node with zero initial state."""
    T, N, _ = X.shape
    D, H = W.shape[0], R.shape[2]
    G = GATES[op]
    clip = attrs.get("clip")
    cl = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)  # noqa: E731
    lbr = attrs.get("linear_before_reset", 0)
    coupled = attrs.get("input_forget", 0)
    Y = np.zeros((T, D, N, H))
    Yh, Yc = np.zeros((D, N, H)), np.zeros((D, N, H))
    for d, fs in enumerate(_functions(op, attrs, D)):
        w, r = W[d], R[d]
        wb, rb = (np.zeros(G * H), np.zeros(G * H)) if B is None else (B[d, :G * H], B[d, G * H:])
        h, c = np.zeros((N, H)), np.zeros((N, H))
        steps = range(T - 1, -1, -1) if (d == 1 or attrs.get("direction") == "reverse") else range(T)
        for t in steps:
            x = X[t]
            if op == "RNN":
                h = fs[0](cl(x @ w.T + h @ r.T + wb + rb))
            elif op == "GRU":
                f, g = fs
                Wz, Wr, Wh = np.split(w, 3)
                Rz, Rr, Rh = np.split(r, 3)
                wz, wr, wh = np.split(wb, 3)
                rz, rr, rh = np.split(rb, 3)
                z = f(cl(x @ Wz.T + h @ Rz.T + wz + rz))
                rg = f(cl(x @ Wr.T + h @ Rr.T + wr + rr))
                if lbr:
                    n = g(cl(x @ Wh.T + rg * (h @ Rh.T + rh) + wh))
                else:
                    n = g(cl(x @ Wh.T + (rg * h) @ Rh.T + rh + wh))
                h = (1 - z) * n + z * h
            else:
                f, g, hf = fs
                pre = x @ w.T + h @ r.T + wb + rb
                zi, zo, zf, zc = np.split(pre, 4, axis=1)
                pi, po, pf = np.split(np.zeros(3 * H) if P is None else P[d], 3)
                i = f(cl(zi + pi * c))
                fg = 1 - i if coupled else f(cl(zf + pf * c))
                c = fg * c + i * g(cl(zc))
                o = f(cl(zo + po * c))
                h = o * hf(c)
            Y[t, d] = h
        Yh[d], Yc[d] = h, c
    return (Y, Yh, Yc) if op == "LSTM" else (Y, Yh)


# ---- the oracles ------------------------------------------------------------------------------
def _model(op, X, W, R, B, P, attrs):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(W.astype(np.float32), "W"), numpy_helper.from_array(R.astype(np.float32), "R")]
    names = ["X", "W", "R", "B" if B is not None else ""]
    if B is not None:
        inits.append(numpy_helper.from_array(B.astype(np.float32), "B"))
    if P is not None:
        inits.append(numpy_helper.from_array(P.astype(np.float32), "P"))
        names += ["", "", "", "P"]
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outs, hidden_size=R.shape[2], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(X.shape))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def ort_run(op, X, W, R, B, P, attrs):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the ONNX Runtime oracle is skipped")
    model = _model(op, X, W, R, B, P, attrs)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": X.astype(np.float32)})


def reference_evaluator_run(op, X, W, R, B, P, attrs):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(_model(op, X, W, R, B, P, attrs)).run(None, {"X": X.astype(np.float32)})


# ---- cases: (op, ONNX attributes, peepholes?, the layer's keywords) ----------------------------
CASES = {
    "lstm_peephole": ("LSTM", {}, True, dict(peephole=True)),
    "lstm_coupled": ("LSTM", {"input_forget": 1}, False, dict(coupled_gates=True)),
    "lstm_coupled_peephole": ("LSTM", {"input_forget": 1}, True, dict(coupled_gates=True, peephole=True)),
    "lstm_clip": ("LSTM", {"clip": 0.7}, False, dict(clip=0.7)),
    "lstm_activations": ("LSTM", {"activations": ["HardSigmoid", "ScaledTanh", "Softsign"],
                                  "activation_alpha": [0.3, 0.8], "activation_beta": [0.4, 1.3]}, False,
                         dict(activations=("HardSigmoid", "ScaledTanh", "Softsign"),
                              activation_alpha=(0.3, 0.8, None), activation_beta=(0.4, 1.3, None))),
    "lstm_everything_bi": ("LSTM", {"direction": "bidirectional", "clip": 1.5, "input_forget": 1,
                                    "activations": ["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Elu", "Softsign"],
                                    "activation_alpha": [0.25, 0.9], "activation_beta": [0.45]}, True,
                           dict(direction="bidirectional", clip=1.5, coupled_gates=True, peephole=True,
                                activations=("Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Elu", "Softsign"),
                                activation_alpha=(None, None, None, 0.25, 0.9, None),
                                activation_beta=(None, None, None, 0.45, None, None))),
    "lstm_reverse_peephole_clip": ("LSTM", {"direction": "reverse", "clip": 2.0}, True,
                                   dict(direction="reverse", clip=2.0, peephole=True)),
    "gru_after_activations_clip": ("GRU", {"linear_before_reset": 1, "clip": 1.2,
                                           "activations": ["HardSigmoid", "Softsign"]}, False,
                                   dict(reset_after=True, clip=1.2, activations=("HardSigmoid", "Softsign"))),
    "gru_before_activations": ("GRU", {"linear_before_reset": 0, "activations": ["Sigmoid", "LeakyRelu"],
                                       "activation_alpha": [0.2]}, False,
                               dict(reset_after=False, activations=("Sigmoid", "LeakyRelu"),
                                    activation_alpha=(None, 0.2))),
    "gru_before_clip_bi": ("GRU", {"linear_before_reset": 0, "clip": 0.8, "direction": "bidirectional"}, False,
                           dict(reset_after=False, clip=0.8, direction="bidirectional")),
}
RNN_ACTIVATIONS = {
    "Relu": ((), ()), "Tanh": ((), ()), "Sigmoid": ((), ()), "Affine": ((0.7,), (0.2,)), "LeakyRelu": ((0.1,), ()),
    "ThresholdedRelu": ((0.3,), ()), "ScaledTanh": ((1.5,), (0.6,)), "HardSigmoid": ((0.3,), (0.6,)),
    "Elu": ((0.8,), ()), "Softsign": ((), ()), "Softplus": ((), ()),
}
for _name, (_a, _b) in RNN_ACTIVATIONS.items():
    _attrs = {"activations": [_name]}
    if _a:
        _attrs["activation_alpha"] = list(_a)
    if _b:
        _attrs["activation_beta"] = list(_b)
    CASES[f"rnn_{_name}"] = ("RNN", _attrs, False, dict(
        activations=(_name,), activation_alpha=_a or None, activation_beta=_b or None))
CASES["rnn_clip_bi"] = ("RNN", {"clip": 0.5, "direction": "bidirectional"}, False,
                        dict(clip=0.5, direction="bidirectional"))


def random_node(op, attrs, peephole, rng, C=3, H=4, scale=1.0):
    D = 2 if attrs.get("direction") == "bidirectional" else 1
    G = GATES[op]
    W = rng.standard_normal((D, G * H, C)) * scale
    R = rng.standard_normal((D, G * H, H)) * scale * 0.7
    B = rng.standard_normal((D, 2 * G * H)) * 0.5
    P = rng.standard_normal((D, 3 * H)) if peephole else None
    # float32-representable, so every oracle sees the same numbers.
    f32 = lambda a: None if a is None else a.astype(np.float32).astype(np.float64)  # noqa: E731
    return f32(W), f32(R), f32(B), f32(P)


def rnnkit_layer(op, kwargs, C, H, dtype):
    kw = {k: v for k, v in kwargs.items() if v is not None}
    return getattr(rnnkit, op)(C, H, dtype=dtype, seed=0, **kw)


def load(layer, op, W, R, B, P, attrs):
    node = {"W": W, "R": R, "B": B, "hidden_size": R.shape[2], **attrs}
    if P is not None:
        node["P"] = P
    convert.from_onnx(layer, [node])


def _y_onnx(y, D):
    """rnnkit's y [T, N, D*H] in ONNX's Y layout [T, D, N, H]."""
    T, N, DH = y.shape
    return y.reshape(T, N, D, DH // D).transpose(0, 2, 1, 3)


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(1.0, float(np.max(np.abs(b)))))


@pytest.mark.parametrize("case", list(CASES))
def test_random_nodes_against_the_reference_and_onnx_runtime(case, rng):
    op, attrs, peephole, kwargs = CASES[case]
    T, N, C, H = 7, 3, 3, 4
    W, R, B, P = random_node(op, attrs, peephole, rng, C, H, scale=1.5)
    X = rng.standard_normal((T, N, C)).astype(np.float32).astype(np.float64) * 2
    ref = onnx_reference(op, X, W, R, B, P, attrs)
    D = W.shape[0]
    # The clip must bite, or it is not tested.
    if "clip" in attrs:
        assert np.any(np.abs(X[0] @ W[0].T) > attrs["clip"])

    layer64 = rnnkit_layer(op, kwargs, C, H, "float64")
    load(layer64, op, W, R, B, P, attrs)
    y, state = layer64(X)
    h = state[0] if op == "LSTM" else state
    assert _rel(_y_onnx(y, D), ref[0]) < REF_RTOL
    assert _rel(h, ref[1]) < REF_RTOL
    if op == "LSTM":
        assert _rel(state[1], ref[2]) < REF_RTOL

    layer32 = rnnkit_layer(op, kwargs, C, H, "float32")
    load(layer32, op, W, R, B, P, attrs)
    y32, _ = layer32(X.astype(np.float32))
    assert _rel(_y_onnx(y32, D), ref[0]) < FLOAT32_RTOL

    ort_out = ort_run(op, X, W, R, B, P, attrs)
    assert _rel(ort_out[0], ref[0]) < FLOAT32_RTOL, "the NumPy reference disagrees with ONNX Runtime"
    assert _rel(ort_out[1], ref[1]) < FLOAT32_RTOL


@pytest.mark.parametrize("case", ["lstm_peephole", "lstm_reverse_peephole_clip", "rnn_Tanh", "rnn_Affine"])
def test_against_onnx_reference_evaluator(case, rng):
    """ONNX's reference evaluator implements LSTM peepholes and the RNN's Tanh and Affine (no clip,
    no other activations)."""
    op, attrs, peephole, kwargs = CASES[case]
    attrs = {k: v for k, v in attrs.items() if k != "clip"}
    kwargs = {k: v for k, v in kwargs.items() if k != "clip"}
    T, N, C, H = 5, 2, 3, 4
    W, R, B, P = random_node(op, attrs, peephole, rng, C, H)
    X = rng.standard_normal((T, N, C)).astype(np.float32).astype(np.float64)
    expected = reference_evaluator_run(op, X, W, R, B, P, attrs)
    layer = rnnkit_layer(op, kwargs, C, H, "float64")
    load(layer, op, W, R, B, P, attrs)
    y, _ = layer(X)
    assert _rel(_y_onnx(y, W.shape[0]), expected[0]) < FLOAT32_RTOL


GRADIENT_CASES = ["lstm_peephole", "lstm_coupled", "lstm_coupled_peephole", "lstm_clip", "lstm_activations",
                  "lstm_everything_bi", "gru_after_activations_clip", "gru_before_activations", "gru_before_clip_bi",
                  "rnn_clip_bi", *[f"rnn_{n}" for n in RNN_ACTIVATIONS]]


@pytest.mark.parametrize("case", GRADIENT_CASES)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_finite_differences(case, num_layers, rng):
    op, attrs, peephole, kwargs = CASES[case]
    layer = rnnkit_layer(op, dict(kwargs, num_layers=num_layers), 3, 4, "float64")
    # Pre-activations spread wide enough to reach every piece of each activation and the clip.
    for name, p in layer.params.items():
        p *= 2.0 if name.startswith("weight_ih") else 1.0
    if "ThresholdedRelu" in case or "Relu" in case:
        pass  # kinks: a finite difference across one is off; the random draw keeps clear of them
    check_all_gradients(layer, rng, lengths=np.array([4, 2, 3]))


def test_peephole_gradient_is_nonzero_and_coupled_input_rows_get_none(rng):
    layer = rnnkit.LSTM(3, 4, peephole=True, coupled_gates=True, dtype="float64", seed=1)
    x = rng.standard_normal((5, 2, 3))
    y, _ = layer(x)
    layer.backward(np.ones_like(y))
    g = layer.grads["weight_peephole_l0"]
    assert np.all(g[1] == 0), "coupled gates: f = 1 - i, the forget peephole is unused"
    assert np.any(g[0] != 0) and np.any(g[2] != 0)
    assert np.all(layer.grads["weight_ih_l0"][4:8] == 0), "coupled gates: the forget gate's rows are unused"


def test_default_options_run_the_default_cells():
    """Naming the defaults is the default: the fast cells run (no general cell)."""
    for layer in (rnnkit.LSTM(3, 4, activations=("sigmoid", "tanh", "tanh")), rnnkit.GRU(3, 4),
                  rnnkit.RNN(3, 4, activations=("Tanh",))):
        assert not layer._config.general and layer._config.cell_options == ""
    assert rnnkit.LSTM(3, 4, clip=3.0)._config.general


@pytest.mark.parametrize("case", ["lstm_everything_bi", "gru_after_activations_clip", "rnn_Elu", "lstm_reverse_peephole_clip"])
def test_export_runs_in_onnx_runtime_and_loads_back(case, rng, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    op, attrs, peephole, kwargs = CASES[case]
    layer = rnnkit_layer(op, dict(kwargs, num_layers=2), 3, 4, "float32")
    x = rng.standard_normal((6, 2, 3)).astype(np.float32)
    y, _ = layer(x)
    path = tmp_path / "m.onnx"
    rnnkit.onnx.export(layer, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert len(sess.get_inputs()) == 1
    feeds = {sess.get_inputs()[0].name: x}
    np.testing.assert_allclose(sess.run(None, feeds)[0], y, rtol=1e-5, atol=1e-6)
    back = rnnkit.onnx.load(str(path))
    for key in ("peephole", "coupled_gates", "direction"):
        assert getattr(back, key) == getattr(layer, key), key
    # ONNX keeps float attributes in float32.
    f32 = lambda groups: [[(n, np.float32(a), np.float32(b)) for n, a, b in g] for g in groups]  # noqa: E731
    assert f32(back.activations) == f32(layer.activations)
    assert (back.clip is None) == (layer.clip is None) and np.float32(back.clip or 0) == np.float32(layer.clip or 0)
    np.testing.assert_allclose(back(x)[0], y, rtol=1e-6, atol=1e-7)


def test_torch_modules_take_the_options(rng):
    torch = pytest.importorskip("torch")
    from rnnkit import torch as rtorch

    options = dict(peephole=True, clip=1.0, activations=("HardSigmoid", "Tanh", "Softsign"))
    m = rtorch.LSTM(3, 4, dtype=torch.float64, **options)
    assert "weight_peephole_l0" in dict(m.named_parameters())
    assert_torch_module_matches(m, rnnkit.LSTM(3, 4, dtype="float64", **options), rng)


@pytest.mark.parametrize("kwargs, match", [
    (dict(cls="LSTM", activations=("Sigmoid", "Tanh")), "activations: expected 3"),
    (dict(cls="LSTM", activations=("Sigmoid", "Tanh", "Swish")), "activations: expected names among"),
    (dict(cls="GRU", activations=("Sigmoid", "Tanh"), activation_alpha=(0.1, None)), r"activation_alpha\[0\]: expected None for Sigmoid"),
    (dict(cls="RNN", activations=("Relu",), activation_beta=(0.5,)), r"activation_beta\[0\]: expected None for Relu"),
    (dict(cls="RNN", activations=("Affine",), activation_alpha=(0.5, 1.0)), "activation_alpha: expected 1 entries"),
    (dict(cls="RNN", activation_alpha=(0.5,)), "expected None without activations"),
    (dict(cls="RNN", clip=0.0), "clip: expected a positive number"),
    (dict(cls="LSTM", clip=-1.0), "clip: expected a positive number"),
    (dict(cls="LSTM", coupled_gates=True, proj_size=2), "coupled_gates: expected False with a projection"),
    (dict(cls="RNN", nonlinearity="relu", activations=("Tanh",)), "nonlinearity: expected the default 'tanh'"),
    (dict(cls="LSTM", activations=("Sigmoid", "Tanh", "Tanh") * 2), "activations: expected 3 .f, g, h. for LSTM, got 6"),
])
def test_bad_options_are_refused_by_name(kwargs, match):
    kwargs = dict(kwargs)
    cls = getattr(rnnkit, kwargs.pop("cls"))
    with pytest.raises(ValueError, match=match):
        cls(3, 4, **kwargs)


@pytest.mark.parametrize("cls, key", [("GRU", "peephole"), ("RNN", "coupled_gates"), ("LayerNormLSTM", "clip"),
                                      ("LayerNormGRU", "activations")])
def test_options_a_cell_does_not_have_are_type_errors(cls, key):
    with pytest.raises(TypeError, match=key):
        getattr(rnnkit, cls)(3, 4, **{key: True})


def test_from_onnx_refuses_mismatched_options(rng):
    W, R, B, P = random_node("LSTM", {}, True, rng)
    layer = rnnkit.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"\['P'\].*make the layer with peephole=True"):
        load(layer, "LSTM", W, R, B, P, {})
    with pytest.raises(ValueError, match=r"\['clip'\].*make the layer with clip=2.0"):
        load(layer, "LSTM", W, R, B, None, {"clip": 2.0})
    with pytest.raises(ValueError, match=r"\['input_forget'\].*coupled_gates=True"):
        load(layer, "LSTM", W, R, B, None, {"input_forget": 1})
    with pytest.raises(ValueError, match=r"\['activations'\].*make the layer with activations="):
        load(layer, "LSTM", W, R, B, None, {"activations": ["HardSigmoid", "Tanh", "Tanh"]})
    with pytest.raises(ValueError, match=r"\['activation_alpha'\]"):
        load(rnnkit.LSTM(3, 4, activations=("HardSigmoid", "Tanh", "Tanh")), "LSTM", W, R, B, None,
             {"activations": ["HardSigmoid", "Tanh", "Tanh"], "activation_alpha": [0.5]})
    # ONNX's defaults for alpha/beta apply when a node gives none.
    load(rnnkit.LSTM(3, 4, activations=("HardSigmoid", "Tanh", "Tanh")), "LSTM", W, R, B, None,
         {"activations": ["HardSigmoid", "Tanh", "Tanh"]})


def test_pickle_keeps_the_options():
    import pickle

    layer = rnnkit.GRU(3, 4, clip=2.5, activations=("HardSigmoid", "Elu"), activation_alpha=(0.1, 0.3))
    back = pickle.loads(pickle.dumps(layer))
    assert back._config.cell_options == layer._config.cell_options != ""
    x = np.ones((2, 1, 3), np.float32)
    np.testing.assert_array_equal(back(x)[0], layer(x)[0])


@pytest.mark.cuda
@pytest.mark.skipif(not rnnkit.cuda.is_available(), reason="no CUDA backend here (a GPU or the emulation build)")
@pytest.mark.parametrize("case", ["lstm_everything_bi", "lstm_clip", "gru_after_activations_clip", "gru_before_activations",
                                  "rnn_Softplus"])
def test_the_cuda_backend_agrees(case, rng):
    op, attrs, peephole, kwargs = CASES[case]
    assert_cuda_agrees(lambda: rnnkit_layer(op, dict(kwargs, num_layers=2), 3, 4, "float64"), rng)


# ---- Keras' activation / recurrent_activation ---------------------------------------------------
def _keras_lstm(arrays, x, act, rec):
    """Keras' LSTM (gates i, f, c, o; return_sequences=True), its activations given."""
    kernel, recurrent, bias = arrays
    h = np.zeros((x.shape[1], recurrent.shape[0]))
    c = np.zeros_like(h)
    ys = []
    for xt in x:
        i, f, cc, o = np.split(xt @ kernel + h @ recurrent + bias, 4, axis=-1)
        c = rec(f) * c + rec(i) * act(cc)
        h = rec(o) * act(c)
        ys.append(h)
    return np.stack(ys)


def _keras_gru(arrays, x, act, rec):
    """Keras' GRU, reset_after=True (gates z, r, h; bias [2, 3H])."""
    kernel, recurrent, bias = arrays
    h = np.zeros((x.shape[1], recurrent.shape[0]))
    ys = []
    for xt in x:
        xz, xr, xh = np.split(xt @ kernel + bias[0], 3, axis=-1)
        rz, rr, rh = np.split(h @ recurrent + bias[1], 3, axis=-1)
        z, r = rec(xz + rz), rec(xr + rr)
        h = z * h + (1 - z) * act(xh + r * rh)
        ys.append(h)
    return np.stack(ys)


KERAS_HARD_SIGMOID = {3: lambda v: np.minimum(np.maximum(v + 3.0, 0.0), 6.0) / 6.0,  # relu6(x + 3) / 6
                      2: lambda v: np.clip(0.2 * v + 0.5, 0.0, 1.0)}


@pytest.mark.parametrize("version", [3, 2])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_keras_hard_sigmoid_layers_import_exactly(cell, version, rng):
    config = {"activation": "tanh", "recurrent_activation": "hard_sigmoid", "use_bias": True}
    options = convert.keras_layer_options(config, cell, keras_version=version)
    assert options["activations"][0] == "HardSigmoid"
    source = getattr(rnnkit, cell)(3, 4, dtype="float64", seed=2, **options)
    for p in source.params.values():
        p *= 3.0  # pre-activations beyond the hard sigmoid's corners
    arrays = convert.to_keras(source)[0]
    assert convert.keras_activation_config(source, keras_version=version) == {
        "activation": "tanh", "recurrent_activation": "hard_sigmoid"}
    target = getattr(rnnkit, cell)(3, 4, dtype="float64", seed=3, **options)
    convert.from_keras(target, [arrays], config=config, keras_version=version)
    x = rng.standard_normal((6, 2, 3))
    keras = (_keras_lstm if cell == "LSTM" else _keras_gru)(arrays, x, np.tanh, KERAS_HARD_SIGMOID[version])
    np.testing.assert_allclose(target(x)[0], keras, rtol=1e-12, atol=1e-14)
    # The layer without the option is refused, saying what to make.
    with pytest.raises(ValueError, match=r"config: the Keras layer's activations \('HardSigmoid'.*make the layer with"):
        convert.from_keras(getattr(rnnkit, cell)(3, 4, dtype="float64"), [arrays], config=config, keras_version=version)


def test_keras_refusals():
    with pytest.raises(ValueError, match=r"config\['activation'\]: expected one of .* got 'gelu'"):
        convert.keras_layer_options({"activation": "gelu"}, "LSTM")
    with pytest.raises(ValueError, match="Keras' layers have no peephole"):
        convert.to_keras(rnnkit.LSTM(3, 4, peephole=True))
    with pytest.raises(ValueError, match="no Keras 3 activation"):
        convert.keras_activation_config(rnnkit.RNN(3, 4, activations=("ScaledTanh",)))
    with pytest.raises(ValueError, match="keras_version: expected 2"):
        convert.keras_layer_options({}, "GRU", keras_version=1)


def test_networks_take_the_options_and_keep_them(rng, tmp_path):
    net = rnnkit.RNNNetwork(vocab_size=7, hidden_size=5, cell="lstm", peephole=True, clip=2.0, seed=0,
                            activations=["HardSigmoid", "Tanh", "Softsign"], activation_alpha=[0.3, None, None])
    assert net.rnn.peephole and net.rnn.clip == 2.0 and "rnn.weight_peephole_l0" in net.state_dict()
    again = rnnkit.RNNNetwork(**net.config())
    again.load_state_dict(net.state_dict())
    tokens = rng.integers(0, 7, size=(6, 2))
    net.eval()
    again.eval()
    np.testing.assert_array_equal(again(tokens)[0], net(tokens)[0])
    path = tmp_path / "net.onnx"
    rnnkit.onnx.export(net, str(path))
    back = rnnkit.onnx.load(str(path))
    assert back.rnn.peephole and back.rnn.activations[0][0][0] == "HardSigmoid"
    back.eval()
    np.testing.assert_allclose(back(tokens)[0], net(tokens)[0], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"peephole: expected False for cell 'gru' \(it has no peephole\), got True"):
        rnnkit.RNNNetwork(vocab_size=7, cell="gru", peephole=True)
    with pytest.raises(ValueError, match=r"clip: expected None for cell 'ln_lstm'"):
        rnnkit.RNNNetwork(vocab_size=7, cell="ln_lstm", clip=1.0)
