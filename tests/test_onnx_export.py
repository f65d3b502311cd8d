"""rnnkit.onnx.export: the exported graph, run by ONNX Runtime, computes what rnnkit computes.

Every exportable configuration (cells, stacks, directions, batch_first, lengths, initial states,
bias=False, float64 models, networks with each input kind, head and loss) is exported, loaded back
from the file and run by ONNX Runtime on one thread; its outputs are compared, padded steps
included, with rnnkit's forward in eval mode (``predict_proba`` for cross-entropy networks). The
refusals (LayerNorm cells, projections, bad arguments, onnx missing) are checked for their
messages. Skipped, with the reason shown, when onnx or onnxruntime is not installed.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed: the ONNX export tests are skipped")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the ONNX export tests are skipped")

import rnnkit  # noqa: E402
import rnnkit.onnx as rnnkit_onnx  # noqa: E402

# ONNX Runtime (float32) vs rnnkit: both absolute and relative, elementwise (np.testing.assert_allclose).
ONNX_RTOL = 1e-5
ONNX_ATOL = 1e-5

SEQ_LEN, BATCH = 7, 5
INPUT_SIZE, HIDDEN = 3, 6
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "onnx.md"


# ---- helpers ----------------------------------------------------------------------------------
def onnx_session(path: pathlib.Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's info lines are not test output
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: pathlib.Path, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    session = onnx_session(path)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def padded_lengths(batch: int, steps: int) -> np.ndarray:
    """Lengths with the full length, length 1 and values between: every sequence but the first
    two is padded somewhere."""
    lengths = np.linspace(1, steps, batch).round().astype(np.int32)
    return np.roll(lengths, 1)  # not sorted, as rnnkit allows


def state_of(outputs: Any) -> List[np.ndarray]:
    return list(outputs) if isinstance(outputs, tuple) else [outputs]


def assert_matches(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=ONNX_RTOL, atol=ONNX_ATOL, err_msg=what)


def layer_feeds(layer: Any, rng: np.random.Generator, steps: int, batch: int, with_lengths: bool,
                with_state: bool) -> Dict[str, np.ndarray]:
    shape = (batch, steps, layer.input_size) if layer.batch_first else (steps, batch, layer.input_size)
    feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
    if with_lengths:
        feeds["lengths"] = padded_lengths(batch, steps)
    if with_state:
        groups = layer.num_layers * layer.num_directions
        feeds["h0"] = rng.standard_normal((groups, batch, layer.hidden_size)).astype(np.float32)
        if isinstance(layer, rnnkit.LSTM):
            feeds["c0"] = rng.standard_normal((groups, batch, layer.hidden_size)).astype(np.float32)
    return feeds


def rnnkit_layer_outputs(layer: Any, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    state: Optional[Any] = feeds.get("h0")
    if state is not None and "c0" in feeds:
        state = (feeds["h0"], feeds["c0"])
    y, final = layer(feeds["x"], state, feeds.get("lengths"))
    names = ["h_n", "c_n"] if isinstance(layer, rnnkit.LSTM) else ["h_n"]
    return {"y": y, **dict(zip(names, state_of(final)))}


def check_layer(layer: Any, tmp_path: pathlib.Path, rng: np.random.Generator, *, with_lengths: bool,
                with_state: bool) -> None:
    layer.eval()
    path = tmp_path / "layer.onnx"
    rnnkit_onnx.export(layer, path, with_lengths=with_lengths, with_initial_state=with_state)
    # Two shapes through one file: T and N are symbolic.
    for steps, batch in ((SEQ_LEN, BATCH), (SEQ_LEN + 3, BATCH - 2)):
        feeds = layer_feeds(layer, rng, steps, batch, with_lengths, with_state)
        got, want = run_onnx(path, feeds), rnnkit_layer_outputs(layer, feeds)
        assert sorted(got) == sorted(want)
        for name in want:
            assert_matches(got[name], want[name], f"{name} (T={steps}, N={batch})")


# ---- layers -----------------------------------------------------------------------------------
CELLS = {
    "rnn_tanh": lambda **kw: rnnkit.RNN(INPUT_SIZE, HIDDEN, **kw),
    "rnn_relu": lambda **kw: rnnkit.RNN(INPUT_SIZE, HIDDEN, nonlinearity="relu", **kw),
    "lstm": lambda **kw: rnnkit.LSTM(INPUT_SIZE, HIDDEN, **kw),
    "gru": lambda **kw: rnnkit.GRU(INPUT_SIZE, HIDDEN, **kw),
    "gru_reset_before": lambda **kw: rnnkit.GRU(INPUT_SIZE, HIDDEN, reset_after=False, **kw),
}
# (layer options, with_lengths, with_initial_state)
STACKS = {
    "plain": (dict(), False, False),
    "lengths": (dict(), True, False),
    "state": (dict(), False, True),
    "bidirectional": (dict(bidirectional=True), False, False),
    "2-layers-lengths-state": (dict(num_layers=2), True, True),
    "2-bi-lengths-state": (dict(num_layers=2, bidirectional=True), True, True),
    "3-bi-batch-first-lengths": (dict(num_layers=3, bidirectional=True, batch_first=True), True, False),
    "batch-first-state": (dict(batch_first=True), False, True),
    "2-reverse-lengths-state": (dict(num_layers=2, direction="reverse"), True, True),
}


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("cell", list(CELLS))
def test_layer_matches_rnnkit_forward(cell, stack, tmp_path, rng):
    options, with_lengths, with_state = STACKS[stack]
    check_layer(CELLS[cell](seed=7, **options), tmp_path, rng, with_lengths=with_lengths, with_state=with_state)


@pytest.mark.parametrize("cell", ["rnn_relu", "lstm", "gru"])
def test_layer_without_bias_matches(cell, tmp_path, rng):
    check_layer(CELLS[cell](seed=3, bias=False, num_layers=2, bidirectional=True), tmp_path, rng,
                with_lengths=True, with_state=True)


def test_dropout_is_left_out_and_the_graph_computes_eval_mode(tmp_path, rng):
    check_layer(rnnkit.LSTM(INPUT_SIZE, HIDDEN, num_layers=2, dropout=0.5, seed=4), tmp_path, rng,
                with_lengths=True, with_state=False)


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_before"])
def test_float64_model_exports_as_float32(cell, tmp_path, rng):
    layer = CELLS[cell](seed=5, num_layers=2, bidirectional=True, dtype="float64")
    proto = rnnkit_onnx.export(layer, tmp_path / "m.onnx")
    assert {t.data_type for t in proto.graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    check_layer(layer, tmp_path, rng, with_lengths=True, with_state=True)


def test_padded_steps_are_zero_in_the_graph_too(tmp_path, rng):
    layer = rnnkit.GRU(INPUT_SIZE, HIDDEN, bidirectional=True, seed=2).eval()
    path = tmp_path / "gru.onnx"
    rnnkit_onnx.export(layer, path, with_lengths=True)
    feeds = layer_feeds(layer, rng, SEQ_LEN, BATCH, with_lengths=True, with_state=False)
    y = run_onnx(path, feeds)["y"]
    padding = np.arange(SEQ_LEN)[:, None] >= feeds["lengths"][None, :]
    assert padding.any()
    assert np.all(y[padding] == 0)
    assert np.all(np.abs(y[~padding]).max(axis=-1) > 0)


def test_graph_has_one_recurrent_node_per_layer_and_the_file_is_the_returned_model(tmp_path):
    layer = rnnkit.LSTM(INPUT_SIZE, HIDDEN, num_layers=3, bidirectional=True, seed=0)
    path = tmp_path / "lstm.onnx"
    proto = rnnkit_onnx.export(layer, str(path))
    assert isinstance(proto, onnx.ModelProto)
    assert onnx.load(str(path)).SerializeToString() == proto.SerializeToString()
    recurrent = [n for n in proto.graph.node if n.op_type == "LSTM"]
    assert len(recurrent) == 3
    for node in recurrent:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["direction"] == b"bidirectional" and attrs["hidden_size"] == HIDDEN
    assert [o.name for o in proto.graph.output] == ["y", "h_n", "c_n"]
    assert [i.name for i in proto.graph.input] == ["x"]


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_flavour_sets_linear_before_reset(reset_after, tmp_path):
    proto = rnnkit_onnx.export(rnnkit.GRU(INPUT_SIZE, HIDDEN, reset_after=reset_after, seed=0), tmp_path / "g.onnx")
    (node,) = [n for n in proto.graph.node if n.op_type == "GRU"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["linear_before_reset"] == int(reset_after)


@pytest.mark.parametrize("opset", [rnnkit_onnx.MIN_OPSET, rnnkit_onnx.DEFAULT_OPSET])
def test_opset_is_written_and_runs(opset, tmp_path, rng):
    layer = rnnkit.RNN(INPUT_SIZE, HIDDEN, num_layers=2, bidirectional=True, seed=1).eval()
    path = tmp_path / "rnn.onnx"
    proto = rnnkit_onnx.export(layer, path, opset=opset, with_lengths=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]
    feeds = layer_feeds(layer, rng, SEQ_LEN, BATCH, with_lengths=True, with_state=False)
    got, want = run_onnx(path, feeds), rnnkit_layer_outputs(layer, feeds)
    for name in want:
        assert_matches(got[name], want[name], name)


# ---- networks ---------------------------------------------------------------------------------
VOCAB, CLASSES = 11, 4
NETWORKS = {
    "tokens-lstm-sequence": dict(vocab_size=VOCAB, embedding_dim=5, cell="lstm"),
    "tokens-gru-2-bi-batch-first": dict(vocab_size=VOCAB, embedding_dim=5, cell="gru", num_layers=2,
                                        bidirectional=True, batch_first=True),
    "tokens-lstm-last-bi": dict(vocab_size=VOCAB, cell="lstm", head="last", output_size=CLASSES,
                                bidirectional=True),
    "dense-rnn-relu-2-layers": dict(input_size=INPUT_SIZE, cell="rnn_relu", num_layers=2, output_size=CLASSES),
    "tokens-gru-last-reverse": dict(vocab_size=VOCAB, cell="gru", head="last", output_size=CLASSES,
                                    direction="reverse"),
    "dense-gru-reset-before-last-bi-batch-first": dict(input_size=INPUT_SIZE, cell="gru_reset_before",
                                                       head="last", bidirectional=True, batch_first=True,
                                                       output_size=CLASSES),
    "dense-lstm-mse-sequence": dict(input_size=INPUT_SIZE, cell="lstm", loss="mse", output_size=2,
                                    num_layers=2, bidirectional=True),
    "dense-gru-mse-last": dict(input_size=INPUT_SIZE, cell="gru", loss="mse", head="last", output_size=2),
}


def network_feeds(net: Any, rng: np.random.Generator, with_lengths: bool, with_state: bool) -> Dict[str, np.ndarray]:
    dims = (BATCH, SEQ_LEN) if net.batch_first else (SEQ_LEN, BATCH)
    if net.vocab_size:
        feeds = {"x": rng.integers(0, net.vocab_size, dims)}
    else:
        feeds = {"x": rng.standard_normal(dims + (net.input_size,)).astype(np.float32)}
    if with_lengths:
        feeds["lengths"] = padded_lengths(BATCH, SEQ_LEN)
    if with_state:
        groups = net.rnn.num_layers * net.rnn.num_directions
        feeds["h0"] = rng.standard_normal((groups, BATCH, HIDDEN)).astype(np.float32)
        if net.has_cell_state:
            feeds["c0"] = rng.standard_normal((groups, BATCH, HIDDEN)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("with_lengths, with_state", [(False, False), (True, True)], ids=["plain", "lengths-state"])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_network_matches_predict_proba_or_forward(name, with_lengths, with_state, tmp_path, rng):
    net = rnnkit.RNNNetwork(hidden_size=HIDDEN, seed=11, **NETWORKS[name]).eval()
    path = tmp_path / "net.onnx"
    rnnkit_onnx.export(net, path, with_lengths=with_lengths, with_initial_state=with_state)
    feeds = network_feeds(net, rng, with_lengths, with_state)
    state: Optional[Any] = feeds.get("h0")
    if state is not None and net.has_cell_state:
        state = (feeds["h0"], feeds["c0"])
    if net.loss_kind == "cross_entropy":
        out, final = net.predict_proba(feeds["x"], state, feeds.get("lengths"))
        out_name = "probs"
    else:
        out, final = net.forward(feeds["x"], state, feeds.get("lengths"))
        out_name = "predictions"
    want = {out_name: out, **dict(zip(["h_n", "c_n"], state_of(final)))}
    got = run_onnx(path, feeds)
    assert sorted(got) == sorted(want)
    for key in want:
        assert_matches(got[key], want[key], key)


def test_network_graph_has_its_embedding_output_layer_and_softmax(tmp_path):
    net = rnnkit.RNNNetwork(vocab_size=VOCAB, hidden_size=HIDDEN, cell="gru", num_layers=2, seed=0)
    nodes = rnnkit_onnx.export(net, tmp_path / "n.onnx").graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("GRU") == 2
    assert {"Gather", "MatMul", "Add"} <= set(ops)
    producer = {out: n for n in nodes for out in n.output}
    assert producer["probs"].op_type == "Softmax"
    mse = rnnkit.RNNNetwork(input_size=INPUT_SIZE, hidden_size=HIDDEN, output_size=2, loss="mse", seed=0)
    assert "Softmax" not in [n.op_type for n in rnnkit_onnx.export(mse, tmp_path / "m.onnx").graph.node]


# ---- refusals ---------------------------------------------------------------------------------
NOT_EXPORTABLE = {
    "ln_lstm": (lambda: rnnkit.LayerNormLSTM(INPUT_SIZE, HIDDEN, seed=0), TypeError, "LayerNormLSTM"),
    "ln_gru": (lambda: rnnkit.LayerNormGRU(INPUT_SIZE, HIDDEN, seed=0), TypeError, "LayerNormGRU"),
    "net_ln_gru": (lambda: rnnkit.RNNNetwork(vocab_size=VOCAB, hidden_size=HIDDEN, cell="ln_gru", seed=0),
                   TypeError, "ln_gru"),
    "lstm_proj": (lambda: rnnkit.LSTM(INPUT_SIZE, HIDDEN, proj_size=2, seed=0), ValueError, "proj_size=2"),
    "net_lstm_proj": (lambda: rnnkit.RNNNetwork(vocab_size=VOCAB, hidden_size=HIDDEN, proj_size=3, seed=0),
                      ValueError, "proj_size=3"),
}


@pytest.mark.parametrize("name", list(NOT_EXPORTABLE))
def test_cells_without_an_onnx_operator_are_refused(name, tmp_path):
    make, exc, what = NOT_EXPORTABLE[name]
    path = tmp_path / "m.onnx"
    with pytest.raises(exc, match=rf"^model: not exportable: .*{re.escape(what)}.* has no ONNX operator"):
        rnnkit_onnx.export(make(), path)
    assert not path.exists()


@pytest.mark.parametrize(
    "model, path, kwargs, exc, pattern",
    [
        ("lstm", "m.onnx", {}, TypeError, r"^model: expected an rnnkit RNN, LSTM, GRU or RNNNetwork, got builtins\.str"),
        (None, "m.onnx", {}, TypeError, r"^model: expected .* got builtins\.NoneType"),
        ("LAYER", 42, {}, TypeError, r"^path: expected a str or os\.PathLike file path, got int 42"),
        ("LAYER", None, {}, TypeError, r"^path: expected a str or os\.PathLike"),
        ("LAYER", b"m.onnx", {}, TypeError, r"^path: expected a str or os\.PathLike file path, got bytes"),
        ("LAYER", "", {}, ValueError, r"^path: expected a file path, got an empty string"),
        ("LAYER", "m.onnx", dict(opset="17"), TypeError, r"^opset: expected an integer ONNX opset version, got str"),
        ("LAYER", "m.onnx", dict(opset=True), TypeError, r"^opset: expected an integer .* got bool"),
        ("LAYER", "m.onnx", dict(opset=9), ValueError, r"^opset: expected an opset version in \[14, \d+\] .* got 9$"),
        ("LAYER", "m.onnx", dict(opset=10_000), ValueError, r"^opset: expected an opset version in \[14, \d+\] .* got 10000$"),
        ("LAYER", "m.onnx", dict(with_lengths="yes"), TypeError, r"^with_lengths: expected True or False, got str"),
        ("LAYER", "m.onnx", dict(with_initial_state=1), TypeError, r"^with_initial_state: expected True or False, got int"),
    ],
)
def test_bad_arguments_are_refused(model, path, kwargs, exc, pattern, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if model == "LAYER":
        model = rnnkit.GRU(INPUT_SIZE, HIDDEN, seed=0)
    with pytest.raises(exc, match=pattern):
        rnnkit_onnx.export(model, path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_missing_onnx_is_a_clear_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(ImportError, match=r"needs the onnx package: pip install onnx .*rnnkit\[onnx\]"):
        rnnkit_onnx.export(rnnkit.RNN(INPUT_SIZE, HIDDEN, seed=0), tmp_path / "m.onnx")


def test_module_imports_without_onnx_and_resolves_the_top_level_package():
    # A fresh interpreter where onnx cannot be imported: rnnkit.onnx must still import.
    code = ("import sys; sys.modules['onnx'] = None; import rnnkit.onnx as m; "
            "assert callable(m.export); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    # Here, with onnx installed, the `import onnx` inside rnnkit.onnx is the real package.
    assert sys.modules["onnx"] is onnx and sys.modules["onnx"] is not rnnkit_onnx


def test_docs_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert blocks, f"{DOCS} has no python example"
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {})
    assert (tmp_path / "lstm.onnx").exists() and (tmp_path / "net.onnx").exists()
