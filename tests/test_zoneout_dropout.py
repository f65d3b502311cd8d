"""Zoneout (Krueger et al. 2016) and variational dropout (Gal & Ghahramani 2016) in the fused loops
(issue 15).

The reference below is written from the papers' equations, one sequence and one step at a time:

  zoneout       h_t = d_h * h_{t-1} + (1 - d_h) * h~_t,   c_t = d_c * c_{t-1} + (1 - d_c) * c~_t
                with h~_t, c~_t the cell's new state (an LSTM's h~_t = o * tanh(c~_t)); d a 0/1 mask
                drawn per step and unit in training, d = p (the expectation) in eval mode
  input         every layer reads x_t * m_x, one mask m_x [N, C] per sequence for all steps
  recurrent     h_{t-1} enters the recurrent products as h_{t-1} * m_h, one mask [N, P] per sequence
                (the GRU's (1 - z) n + z h_{t-1} mixes the unmasked state; the reset-before GRU's
                candidate reads r * (h_{t-1} * m_h), as Keras)
  masks scale the kept units by 1/(1-p).

The masks are the compiled module's (one dropout seed per training forward, drawn from the
layer's dropout_rng; stack.h's streams); the tests rebuild them with _core._dropout_mask.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import _core
from reference import assert_cuda_agrees, sigmoid
from test_gradients import check_all_gradients

ZONEOUT_STREAM = 2 << 40       # stack.h's kZoneoutStream (+ group)
ZONEOUT_CELL_STREAM = 3 << 40  # kZoneoutCellStream (+ group)
RECURRENT_STREAM = 4 << 40     # kRecurrentDropStream (+ group)
INPUT_STREAM = 5 << 40         # kInputDropStream (+ layer)
REF_RTOL = 1e-12
REF_ATOL = 1e-13

# name -> (layer class, constructor options, reference mode)
CELLS = {
    "rnn_tanh": ("RNN", {}, "RNN_TANH"),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}, "RNN_RELU"),
    "lstm": ("LSTM", {}, "LSTM"),
    "lstm_proj": ("LSTM", {"proj_size": 3}, "LSTM"),
    "gru": ("GRU", {}, "GRU"),
    "gru_before": ("GRU", {"reset_after": False}, "GRU_RESET_BEFORE"),
}


def make(name, **kw):
    cls, opts, _ = CELLS[name]
    return getattr(rnnkit, cls)(3, 4, dtype="float64", seed=0, **opts, **kw)


def forward_seed(rng_seed):
    """The dropout seed a layer's forward draws from np.random.default_rng(rng_seed)."""
    return int(np.random.default_rng(rng_seed).integers(0, 2**63))


def zoneout_keep(seed, stream, shape, p, training):
    """d: 1 where the unit keeps its previous value (u < p), else 0; p itself in eval mode."""
    if not training:
        return np.full(shape, p)
    return (_core._dropout_mask(seed, stream, int(np.prod(shape)), p) == 0).astype(np.float64).reshape(shape)


def multiplier(seed, stream, shape, p):
    return _core._dropout_mask(seed, stream, int(np.prod(shape)), p).reshape(shape)


def step(mode, x, h, h_rec, c, p):
    """The cell's new (h~, c~) from x_t, the state h_{t-1} (c_{t-1}) and h_rec, what enters the
    recurrent products (h_{t-1}, or h_{t-1} * m_h)."""
    if mode in ("RNN_TANH", "RNN_RELU"):
        pre = x @ p["w_ih"].T + p["b_ih"] + h_rec @ p["w_hh"].T + p["b_hh"]
        return (np.tanh(pre) if mode == "RNN_TANH" else np.maximum(pre, 0.0)), None
    if mode == "LSTM":
        i, f, g, o = np.split(x @ p["w_ih"].T + p["b_ih"] + h_rec @ p["w_hh"].T + p["b_hh"], 4)
        c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h_new = sigmoid(o) * np.tanh(c_new)
        return (h_new if p.get("w_hr") is None else h_new @ p["w_hr"].T), c_new
    W_ir, W_iz, W_in = np.split(p["w_ih"], 3)
    W_hr, W_hz, W_hn = np.split(p["w_hh"], 3)
    b_ir, b_iz, b_in = np.split(p["b_ih"], 3)
    b_hr, b_hz, b_hn = np.split(p["b_hh"], 3)
    r = sigmoid(x @ W_ir.T + b_ir + h_rec @ W_hr.T + b_hr)
    z = sigmoid(x @ W_iz.T + b_iz + h_rec @ W_hz.T + b_hz)
    if mode == "GRU":
        n = np.tanh(x @ W_in.T + b_in + r * (h_rec @ W_hn.T + b_hn))
    else:  # GRU_RESET_BEFORE
        n = np.tanh(x @ W_in.T + b_in + (r * h_rec) @ W_hn.T + b_hn)
    return (1 - z) * n + z * h, None


def reference_forward(layer, x, seed, training, lengths=None, h0=None, c0=None):
    """The layer's forward from the equations above: (y [T, N, D*P], h_n, c_n)."""
    mode = _mode(layer)
    state = layer.state_dict()
    T, N, _ = x.shape
    L, D, P, H = layer.num_layers, layer.num_directions, layer.state_size, layer.hidden_size
    lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
    has_c = mode == "LSTM"
    h_n, c_n = np.zeros((L * D, N, P)), (np.zeros((L * D, N, H)) if has_c else None)
    inp = x
    for layer_index in range(L):
        C = inp.shape[2]
        if training and layer.input_dropout:
            inp = inp * multiplier(seed, INPUT_STREAM + layer_index, (N, C), layer.input_dropout)[None]
        out = np.zeros((T, N, D * P))
        for d in range(D):
            g = layer_index * D + d
            sfx = f"_l{layer_index}" + ("_reverse" if d == 1 else "")
            p = {k: state.get(k + sfx) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")}
            p = {"w_ih": p["weight_ih"], "w_hh": p["weight_hh"], "b_ih": p["bias_ih"], "b_hh": p["bias_hh"],
                 "w_hr": p["weight_hr"]}
            keep_h = zoneout_keep(seed, ZONEOUT_STREAM + g, (T, N, P), layer.zoneout, training)
            keep_c = zoneout_keep(seed, ZONEOUT_CELL_STREAM + g, (T, N, H), layer.zoneout_cell, training)
            m_h = (multiplier(seed, RECURRENT_STREAM + g, (N, P), layer.recurrent_dropout)
                   if training and layer.recurrent_dropout else np.ones((N, P)))
            for n in range(N):
                h = np.zeros(P) if h0 is None else h0[g, n]
                c = (np.zeros(H) if c0 is None else c0[g, n]) if has_c else None
                steps = range(lengths[n]) if d == 0 else reversed(range(lengths[n]))
                for t in steps:
                    h_new, c_new = step(mode, inp[t, n], h, h * m_h[n], c, p)
                    h = keep_h[t, n] * h + (1 - keep_h[t, n]) * h_new
                    if has_c:
                        c = keep_c[t, n] * c + (1 - keep_c[t, n]) * c_new
                    out[t, n, d * P:(d + 1) * P] = h
                if lengths[n] == 0:
                    h, c = np.zeros(P), (np.zeros(H) if has_c else None)
                h_n[g, n] = h
                if has_c:
                    c_n[g, n] = c
        inp = out
    return inp, h_n, c_n


def _mode(layer):
    return {"RNN": "RNN_TANH" if getattr(layer, "nonlinearity", "tanh") == "tanh" else "RNN_RELU",
            "LSTM": "LSTM", "GRU": "GRU" if getattr(layer, "reset_after", True) else "GRU_RESET_BEFORE"}[type(layer).__name__]


def regularisers(name):
    """Every regulariser the cell takes, at distinct probabilities."""
    kw = {"zoneout": 0.3, "input_dropout": 0.25, "recurrent_dropout": 0.35}
    if name.startswith("lstm"):
        kw["zoneout_cell"] = 0.4
    return kw


def run(layer, x, rng_seed=11, lengths=None, hx=None):
    layer.dropout_rng = np.random.default_rng(rng_seed)
    y, s = layer(x, hx, lengths)
    if isinstance(s, tuple):
        return y, s[0], s[1]
    return y, s, None


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("kind", ["all", "zoneout", "input", "recurrent"])
def test_training_forward_matches_the_reference(name, kind, rng):
    kw = regularisers(name)
    if kind != "all":
        kw = {k: v for k, v in kw.items() if k.startswith({"zoneout": "zoneout", "input": "input",
                                                              "recurrent": "recurrent"}[kind])}
    layer = make(name, num_layers=2, bidirectional=True, **kw)
    x = rng.standard_normal((6, 3, 3))
    lengths = np.array([6, 2, 4])
    y, h_n, c_n = run(layer, x, lengths=lengths)
    y_ref, h_ref, c_ref = reference_forward(layer, x, forward_seed(11), True, lengths)
    np.testing.assert_allclose(y, y_ref, rtol=REF_RTOL, atol=REF_ATOL)
    np.testing.assert_allclose(h_n, h_ref, rtol=REF_RTOL, atol=REF_ATOL)
    if c_n is not None:
        np.testing.assert_allclose(c_n, c_ref, rtol=REF_RTOL, atol=REF_ATOL)
    plain = make(name, num_layers=2, bidirectional=True)
    plain.load_state_dict(layer.state_dict())
    assert not np.allclose(y, plain(x, None, lengths)[0]), "the regularisers change the training forward"


@pytest.mark.parametrize("name", list(CELLS))
def test_eval_mode_is_zoneouts_expectation_and_no_dropout(name, rng):
    layer = make(name, num_layers=2, **regularisers(name)).eval()
    x = rng.standard_normal((5, 2, 3))
    y, h_n, c_n = run(layer, x)
    y_ref, h_ref, _ = reference_forward(layer, x, 0, False)
    np.testing.assert_allclose(y, y_ref, rtol=REF_RTOL, atol=REF_ATOL)
    np.testing.assert_allclose(h_n, h_ref, rtol=REF_RTOL, atol=REF_ATOL)
    # The dropouts alone leave eval mode untouched.
    drop_only = make(name, num_layers=2, input_dropout=0.3, recurrent_dropout=0.3).eval()
    plain = make(name, num_layers=2).eval()
    np.testing.assert_array_equal(drop_only(x)[0], plain(x)[0])


@pytest.mark.parametrize("cls, opts", [("RNN", {}), ("LSTM", {}), ("GRU", {}), ("LayerNormLSTM", {}),
                                       ("LayerNormGRU", {}), ("IndRNN", {}), ("MinGRU", {}), ("MinLSTM", {}),
                                       ("LSTM", {"peephole": True, "clip": 2.0})])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_zoneout_of_every_cell_mixes_its_steps(cls, opts, training, rng):
    """Any cell: one layer's zoneout forward equals the mix of the same layer's plain steps."""
    has_c = cls in ("LSTM", "LayerNormLSTM")
    kw = {"zoneout": 0.3, **({"zoneout_cell": 0.5} if has_c else {})}
    layer = getattr(rnnkit, cls)(3, 4, dtype="float64", seed=1, **opts, **kw)
    plain = getattr(rnnkit, cls)(3, 4, dtype="float64", seed=1, **opts)
    plain.load_state_dict(layer.state_dict())
    layer.train(training)
    T, N = 6, 2
    x = rng.standard_normal((T, N, 3))
    y, _, _ = run(layer, x)
    seed = forward_seed(11)
    keep_h = zoneout_keep(seed, ZONEOUT_STREAM, (T, N, 4), 0.3, training)
    keep_c = zoneout_keep(seed, ZONEOUT_CELL_STREAM, (T, N, 4), 0.5, training)
    h, c = np.zeros((1, N, 4)), np.zeros((1, N, 4))
    for t in range(T):
        _, new = plain.step(x[t], (h, c) if has_c else h)
        h_new, c_new = new if has_c else (new, None)
        h = keep_h[t] * h + (1 - keep_h[t]) * h_new
        if has_c:
            c = keep_c[t] * c + (1 - keep_c[t]) * c_new
        np.testing.assert_allclose(y[t], h[0], rtol=REF_RTOL, atol=REF_ATOL)
    if training:
        assert 0 < keep_h.sum() < keep_h.size, "the masks keep some units, not all"


@pytest.mark.parametrize("name, kw", [
    ("rnn_tanh", {"zoneout": 0.4, "recurrent_dropout": 0.3, "input_dropout": 0.2}),
    ("lstm", {"zoneout": 0.3, "zoneout_cell": 0.4, "recurrent_dropout": 0.3, "input_dropout": 0.2}),
    ("lstm_proj", {"zoneout": 0.3, "zoneout_cell": 0.4, "recurrent_dropout": 0.3}),
    ("gru", {"zoneout": 0.3, "recurrent_dropout": 0.3, "input_dropout": 0.2}),
    ("gru_before", {"zoneout": 0.3, "recurrent_dropout": 0.4, "input_dropout": 0.2}),
])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_finite_differences_with_the_masks_fixed(name, kw, bidirectional, rng):
    layer = make(name, num_layers=2, bidirectional=bidirectional, **kw)

    def fix_masks():
        layer.dropout_rng = np.random.default_rng(5)

    checks = check_all_gradients(layer, rng, lengths=np.array([4, 2, 3]), before_forward=fix_masks)
    if "input_dropout" in kw:
        mask = multiplier(forward_seed(5), INPUT_STREAM, (3, 3), kw["input_dropout"])
        dx = checks["x"][1]
        assert np.all(dx[:, mask == 0] == 0), "dropped inputs get no gradient"


@pytest.mark.parametrize("cls, kw", [("IndRNN", {"zoneout": 0.4, "input_dropout": 0.3}),
                                     ("MinGRU", {"zoneout": 0.4, "input_dropout": 0.3}),
                                     ("MinLSTM", {"zoneout": 0.3}),
                                     ("LayerNormLSTM", {"zoneout": 0.3, "zoneout_cell": 0.3, "recurrent_dropout": 0.3}),
                                     ("LayerNormGRU", {"zoneout": 0.3, "recurrent_dropout": 0.3})])
def test_finite_differences_of_the_other_cells(cls, kw, rng):
    layer = getattr(rnnkit, cls)(3, 4, num_layers=2, dtype="float64", seed=2, **kw)

    def fix_masks():
        layer.dropout_rng = np.random.default_rng(7)

    check_all_gradients(layer, rng, lengths=np.array([4, 1, 3]), before_forward=fix_masks)


def test_finite_differences_in_eval_mode_expectation(rng):
    """A torch module in eval mode that wants gradients runs the training forward with zoneout's
    expectation: its gradients are the eval function's."""
    torch = pytest.importorskip("torch")
    from rnnkit import torch as rtorch

    m = rtorch.LSTM(3, 4, num_layers=2, zoneout=0.3, zoneout_cell=0.2, recurrent_dropout=0.4, input_dropout=0.3,
                    dtype=torch.float64).eval()
    x = torch.from_numpy(rng.standard_normal((5, 2, 3))).requires_grad_()
    assert torch.autograd.gradcheck(lambda inp: m(inp)[0], (x,), eps=1e-6, atol=1e-7)
    layer = rnnkit.LSTM(3, 4, num_layers=2, zoneout=0.3, zoneout_cell=0.2, dtype="float64").eval()
    layer.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})
    np.testing.assert_allclose(m(x)[0].detach().numpy(), layer(x.detach().numpy())[0], rtol=1e-12)


def test_torch_training_mode_matches_the_layer(rng):
    torch = pytest.importorskip("torch")
    from rnnkit import torch as rtorch

    kw = dict(zoneout=0.3, recurrent_dropout=0.3, input_dropout=0.2)
    m = rtorch.GRU(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64, **kw)
    x = torch.from_numpy(rng.standard_normal((5, 2, 3)))
    y, _ = m(x)
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert "zoneout=0.3" in repr(m)


def test_step_uses_zoneouts_expectation(rng):
    layer = make("lstm", zoneout=0.3, zoneout_cell=0.4).eval()
    x = rng.standard_normal((4, 2, 3))
    y_seq = layer(x)[0]
    state = None
    for t in range(4):
        y_t, state = layer.step(x[t], state)
        np.testing.assert_allclose(y_t, y_seq[t], rtol=1e-12, atol=1e-14)


def test_seeds_reproduce_and_calls_differ(rng):
    x = rng.standard_normal((5, 2, 3))
    a, b = make("gru", zoneout=0.3, recurrent_dropout=0.3), make("gru", zoneout=0.3, recurrent_dropout=0.3)
    ya = a(x)[0]
    np.testing.assert_array_equal(ya, b(x)[0])
    assert not np.array_equal(a(x)[0], ya)


def test_thread_teams_agree(rng):
    """The masks are a function of (seed, element): the thread team's split changes nothing."""
    kw = dict(zoneout=0.3, zoneout_cell=0.3, recurrent_dropout=0.3, input_dropout=0.3)
    x = rng.standard_normal((6, 8, 3))
    results = []
    before = rnnkit.get_num_threads()
    _core._set_min_parallel_step_work(0)
    try:
        for threads in (1, 2):
            rnnkit.set_num_threads(threads)
            layer = make("lstm", num_layers=2, bidirectional=True, **kw)
            y, _, _ = run(layer, x)
            layer.backward(np.ones_like(y))
            results.append((y, {k: v.copy() for k, v in layer.grads.items()}))
    finally:
        rnnkit.set_num_threads(before)
        _core._set_min_parallel_step_work(1 << 19)
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12, atol=1e-14)
    for k in results[0][1]:
        np.testing.assert_allclose(results[0][1][k], results[1][1][k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls, kw", [
    ("LSTM", {"zoneout": 0.3, "zoneout_cell": 0.3, "recurrent_dropout": 0.3, "input_dropout": 0.3,
              "weight_dropout": 0.2}),
    ("GRU", {"reset_after": False, "zoneout": 0.3, "recurrent_dropout": 0.3, "input_dropout": 0.3}),
    ("MinGRU", {"zoneout": 0.3, "input_dropout": 0.3}),
])
def test_deterministic_mode_stays_bitwise_across_thread_counts(cls, kw, rng):
    x = rng.standard_normal((9, 40, 30)).astype(np.float32)
    dy = rng.standard_normal((9, 40, 2 * 48)).astype(np.float32)
    lengths = rng.integers(1, 10, 40)
    before = rnnkit.get_num_threads()
    rnnkit.set_deterministic(True)
    _core._set_min_parallel_step_work(0)
    results = []
    try:
        for n in (1, 2, 3):
            rnnkit.set_num_threads(n)
            layer = getattr(rnnkit, cls)(30, 48, num_layers=2, bidirectional=True, seed=3, **kw)
            layer.dropout_rng = np.random.default_rng(8)
            y, _ = layer(x, None, lengths)
            dx, _ = layer.backward(dy)
            results.append((y, dx, dict(layer.grads)))
    finally:
        rnnkit.set_deterministic(False)
        rnnkit.set_num_threads(before)
        _core._set_min_parallel_step_work(1 << 19)
    for y, dx, grads in results[1:]:
        np.testing.assert_array_equal(y, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])
        for k, g in grads.items():
            np.testing.assert_array_equal(g, results[0][2][k], err_msg=k)


@pytest.mark.parametrize("key", ["zoneout", "zoneout_cell", "input_dropout", "recurrent_dropout"])
@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_bad_probabilities_are_refused(key, value):
    with pytest.raises(ValueError, match=rf"{key}: expected a probability in \[0, 1"):
        rnnkit.LSTM(3, 4, **{key: value})


def test_options_a_cell_does_not_have_are_refused():
    with pytest.raises(ValueError, match=r"zoneout_cell: expected 0 for GRU \(it has no cell state"):
        rnnkit.GRU(3, 4, zoneout_cell=0.2)
    for cls in ("IndRNN", "MinGRU", "MinLSTM"):
        with pytest.raises(ValueError, match=r"recurrent_dropout: expected 0 for cell \w+ \(it has no recurrent "
                                             r"weight matrix"):
            getattr(rnnkit, cls)(3, 4, recurrent_dropout=0.2)
    with pytest.raises(ValueError, match="zoneout_cell: expected 0"):
        rnnkit.RNNNetwork(vocab_size=5, hidden_size=4, cell="gru", zoneout_cell=0.1)


def test_networks_take_them_and_keep_them_in_their_config(rng):
    net = rnnkit.RNNNetwork(vocab_size=5, hidden_size=6, cell="lstm", num_layers=2, zoneout=0.2, zoneout_cell=0.1,
                            input_dropout=0.1, recurrent_dropout=0.25, seed=0)
    again = rnnkit.RNNNetwork(**net.config())
    for key in ("zoneout", "zoneout_cell", "input_dropout", "recurrent_dropout"):
        assert getattr(again.rnn, key) == getattr(net.rnn, key) > 0
    tokens = rng.integers(0, 5, size=(8, 2))
    losses = [net.train_step(tokens[:-1], tokens[1:])[0] for _ in range(3)]
    assert np.all(np.isfinite(losses))


def test_onnx_export_refuses_zoneout_and_keeps_the_dropouts():
    from rnnkit.interop import convert

    with pytest.raises(ValueError, match="cannot express zoneout"):
        convert.to_onnx(rnnkit.GRU(3, 4, zoneout=0.2))
    nodes = convert.to_onnx(rnnkit.GRU(3, 4, recurrent_dropout=0.2, input_dropout=0.1))
    assert len(nodes) == 1  # eval mode draws no masks: the weights are the function
    pytest.importorskip("onnx")
    from rnnkit import onnx as rnnkit_onnx

    with pytest.raises(ValueError, match="ONNX cannot express zoneout"):
        rnnkit_onnx.export(rnnkit.LSTM(3, 4, zoneout_cell=0.3), "unused.onnx")


def test_cli_trains_with_them(tmp_path):
    import subprocess
    import sys

    def cli(*flags):
        return subprocess.run([sys.executable, "-m", "rnnkit", "train", "--steps", "5", *flags], capture_output=True,
                              text=True, timeout=300)

    done = cli("--cell", "lstm", "--zoneout", "0.1", "--zoneout-cell", "0.2", "--recurrent-dropout", "0.2",
               "--input-dropout", "0.1", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    from rnnkit.train.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(str(tmp_path / "run" / "checkpoint.npz")))
    assert (model.rnn.zoneout, model.rnn.zoneout_cell, model.rnn.recurrent_dropout, model.rnn.input_dropout) == (
        0.1, 0.2, 0.2, 0.1)
    bad = cli("--cell", "gru", "--zoneout-cell", "0.2", "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "zoneout_cell" in bad.stderr.replace("-", "_")


@pytest.mark.cuda
@pytest.mark.skipif(not rnnkit.cuda.is_available(), reason="no CUDA backend here (a GPU or the emulation build)")
@pytest.mark.parametrize("name", list(CELLS))
def test_the_cuda_backend_agrees(name, rng):
    assert_cuda_agrees(lambda: make(name, num_layers=2, bidirectional=True, **regularisers(name)), rng)


@pytest.mark.cuda
@pytest.mark.skipif(not rnnkit.cuda.is_available(), reason="no CUDA backend here (a GPU or the emulation build)")
@pytest.mark.parametrize("cls", ["LayerNormLSTM", "IndRNN", "MinGRU"])
def test_the_cuda_backend_agrees_for_the_other_cells(cls, rng):
    kw = {"zoneout": 0.3, "input_dropout": 0.2, **({"zoneout_cell": 0.4} if cls == "LayerNormLSTM" else {})}
    assert_cuda_agrees(lambda: getattr(rnnkit, cls)(3, 4, num_layers=2, dtype="float64", seed=4, **kw), rng)


@pytest.mark.cuda
@pytest.mark.skipif(not rnnkit.cuda.is_available(), reason="no CUDA backend here (a GPU or the emulation build)")
def test_cuda_eval_mode_is_the_expectation(rng):
    layer = make("lstm", zoneout=0.3, zoneout_cell=0.2, recurrent_dropout=0.3).eval()
    dev = make("lstm", zoneout=0.3, zoneout_cell=0.2, recurrent_dropout=0.3).to("cuda").eval()
    x = rng.standard_normal((5, 2, 3))
    np.testing.assert_allclose(rnnkit.to_numpy(dev(x)[0]), layer(x)[0], rtol=1e-12, atol=1e-14)


def _zoneout_reserve_case(seed=3):
    cfg = _core.StackConfig("LSTM", 3, 5, 2, True, 0, True, 0.0, zoneout=0.3, zoneout_cell=0.2)
    rng = np.random.default_rng(seed)
    params = [0.5 * rng.standard_normal(shape) for _, shape in cfg.param_specs()]
    x = rng.standard_normal((6, 3, 3))
    return cfg, params, x, np.array([6, 2, 4])


def test_a_reserve_keeps_zoneouts_draws_for_any_number_of_backwards():
    """The training forward keeps zoneout's draws in its cache (backward reads them instead of
    drawing again): backward_reserve from the reserve alone gives the cache's gradients, twice."""
    cfg, params, x, lengths = _zoneout_reserve_case()
    _, h_n, _, cache = _core.forward(cfg, params, x, None, None, lengths, True, 9, zero_cache=True)
    reserve = cache.reserve().copy()  # a view of the cache, which backward below uses up
    dh_n = np.random.default_rng(1).standard_normal(h_n.shape)
    want = [np.zeros_like(p) for p in params]
    dx_want, _, _ = _core.backward(cache, None, dh_n, None, want, True)
    for _ in range(2):
        grads = [np.zeros_like(p) for p in params]
        dx, _, _ = _core.backward_reserve(cfg, reserve, x.shape[0], x.shape[1], lengths, 9, None, dh_n, None, grads,
                                          True)
        np.testing.assert_array_equal(dx, dx_want)
        for g, w in zip(grads, want):
            np.testing.assert_array_equal(g, w)


@pytest.mark.cuda
@pytest.mark.skipif(not rnnkit.cuda.is_available(), reason="no CUDA backend here (a GPU or the emulation build)")
def test_the_cuda_reserve_keeps_the_same_draws_at_the_same_offsets():
    cfg, params, x, lengths = _zoneout_reserve_case()
    _, _, _, cache = _core.forward(cfg, params, x, None, None, lengths, True, 9, zero_cache=True)
    _, _, _, cached = _core.forward(cfg, [_core.to_device(p) for p in params], _core.to_device(x), None, None,
                                    lengths, True, 9, zero_cache=True)
    got, want = cached.reserve().numpy(), cache.reserve()
    # The draws are bytes of 0 and 1: read as float64 they are tiny (or 0), so they are compared
    # bit for bit; the states and gates to float64 rounding.
    tiny = np.abs(want) < 1e-250
    assert np.count_nonzero(want[tiny]) > 0, "no zoneout draws found in the reserve"
    np.testing.assert_array_equal(got[tiny].view(np.uint64), want[tiny].view(np.uint64))
    np.testing.assert_allclose(got[~tiny], want[~tiny], rtol=1e-12, atol=1e-14)


# precision="bfloat16" rounds the GEMMs' operands only; the regularisers are elementwise on float32
# values, the same masks: the bf16 layer against the float64 one with the same weights and masks,
# norm-wise (test_bf16.py's tolerance for a 2-layer bidirectional stack).
BF16_VS_F64_RTOL = 1e-2


@pytest.mark.parametrize("name", ["lstm", "gru_before"])
def test_bfloat16_layers_take_them(name, rng):
    from reference import relative_error

    kw = regularisers(name)
    exact = make(name, num_layers=2, bidirectional=True, **kw)
    fast = getattr(rnnkit, CELLS[name][0])(3, 4, dtype="float32", precision="bfloat16", num_layers=2,
                                          bidirectional=True, **CELLS[name][1], **kw)
    fast.load_state_dict({k: v.astype(np.float32) for k, v in exact.state_dict().items()})
    x = rng.standard_normal((6, 3, 3))
    dy = rng.standard_normal((6, 3, 8))
    y64, _, _ = run(exact, x)
    y16, _, _ = run(fast, x.astype(np.float32))
    assert relative_error(y16, y64) < BF16_VS_F64_RTOL
    exact.backward(dy)
    fast.backward(dy.astype(np.float32))
    for k in exact.grads:
        assert relative_error(fast.grads[k], exact.grads[k]) < BF16_VS_F64_RTOL, k
