"""ONNX's own operator test cases for RNN, LSTM and GRU (issue 14, must-show 1).

They ship in the onnx package as onnx/backend/test/case/node/{rnn,lstm,gru}.py: each export_*
function builds one node, computes its expected outputs with ONNX's NumPy reference and hands
them to ``expect``. Here ``expect`` is replaced by a recorder, each recorded node becomes a model
(its weights as initializers) that ``rnnkit.onnx.load`` reads, and rnnkit's outputs must equal
ONNX's. Every case runs, the peephole one included (peephole=True, ONNX's P).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import rnnkit.onnx as rnnkit_onnx

onnx = pytest.importorskip("onnx", reason="onnx is not installed: its operator test cases are not run")
from onnx import helper, numpy_helper  # noqa: E402

# rnnkit (float32) against ONNX's float32 NumPy reference of the same equations.
ONNX_CASE_RTOL = 1e-5
ONNX_CASE_ATOL = 1e-6

_INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")
_CONSTANT = ("W", "R", "B", "P")


def _record(op: str):
    """Every (node, inputs, outputs, name) the module's export_* functions pass to expect."""
    module = importlib.import_module(f"onnx.backend.test.case.node.{op}")
    cases = []

    def expect(node, inputs, outputs, name, **_):
        cases.append((node, inputs, outputs, name))

    cls = next(getattr(module, n) for n in dir(module) if n.upper() == op.upper() and isinstance(getattr(module, n), type))
    saved = module.expect
    module.expect = expect
    try:
        for attr in sorted(dir(cls)):
            if attr.startswith("export"):
                getattr(cls, attr)()
    finally:
        module.expect = saved
    return cases


CASES = [case for op in ("rnn", "lstm", "gru") for case in _record(op)]


def _model(node, inputs):
    """A model of the node with its W, R, B, P as initializers and the rest as graph inputs."""
    named = dict(zip(node.input, inputs))
    inits, graph_inputs, feeds = [], [], {}
    for slot, name in zip(_INPUTS, node.input):
        if not name:
            continue
        value = named[name]
        if slot in _CONSTANT:
            inits.append(numpy_helper.from_array(value, name))
        else:
            kind = onnx.TensorProto.INT32 if value.dtype.kind in "iu" else onnx.TensorProto.FLOAT
            graph_inputs.append(helper.make_tensor_value_info(name, kind, list(value.shape)))
            feeds[slot] = value
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in node.output if o]
    graph = helper.make_graph([node], "case", graph_inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), feeds


@pytest.mark.parametrize("case", CASES, ids=[c[3] for c in CASES])
def test_onnx_operator_case(case):
    node, inputs, outputs, name = case
    model, feeds = _model(node, inputs)
    layer = rnnkit_onnx.load(model)
    layer.eval()
    layout = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "layout"), 0)
    D, H = layer.num_directions, layer.hidden_size
    x = feeds["X"]
    h0, c0 = feeds.get("initial_h"), feeds.get("initial_c")
    if layout == 1:  # ONNX's batch-major states [N, D, H]; rnnkit's are [D, N, H]
        h0 = None if h0 is None else np.ascontiguousarray(h0.transpose(1, 0, 2))
        c0 = None if c0 is None else np.ascontiguousarray(c0.transpose(1, 0, 2))
    if layer._has_cell_state and (h0 is not None or c0 is not None):
        N = x.shape[0] if layout == 1 else x.shape[1]
        zeros = np.zeros((D, N, H), np.float32)
        hx = (zeros if h0 is None else h0, zeros if c0 is None else c0)
    else:
        hx = h0
    lengths = feeds.get("sequence_lens")
    y, state = layer(x, hx, lengths=None if lengths is None else lengths.astype(np.int64))
    h_n = state[0] if layer._has_cell_state else state
    c_n = state[1] if layer._has_cell_state else None
    got = {}
    if layout == 1:
        got["Y"] = y.reshape(y.shape[0], y.shape[1], D, H)
        got["Y_h"] = h_n.transpose(1, 0, 2)
        got["Y_c"] = None if c_n is None else c_n.transpose(1, 0, 2)
    else:
        got["Y"] = y.reshape(y.shape[0], y.shape[1], D, H).transpose(0, 2, 1, 3)
        got["Y_h"], got["Y_c"] = h_n, c_n
    produced = [slot for slot, out in zip(("Y", "Y_h", "Y_c"), node.output) if out]
    assert len(produced) == len(outputs)
    for slot, want in zip(produced, outputs):
        np.testing.assert_allclose(got[slot], want, rtol=ONNX_CASE_RTOL, atol=ONNX_CASE_ATOL, err_msg=f"{name}: {slot}")


def test_every_operator_has_cases():
    names = {c[3] for c in CASES}
    assert any("rnn" in n for n in names) and any("lstm" in n for n in names) and any("gru" in n for n in names)
