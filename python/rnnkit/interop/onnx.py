"""Export of rnnkit models to ONNX, ``rnnkit.onnx.export(model, path)``, and import of recurrent
stacks from it, ``rnnkit.onnx.load(path)`` (at the end of this file).

A recurrent layer (``rnnkit.RNN``, ``LSTM``, ``GRU``) becomes one standard ONNX ``RNN``/``LSTM``/
``GRU`` node per layer, with the glue (Transpose, Reshape, Squeeze, Slice, Concat) that gives the
graph PyTorch's layouts at its edges: input ``x`` as the model takes it (``batch_first`` or not),
outputs ``y`` ``[T, N, D*H]`` and ``h_n`` (``c_n``) ``[L*D, N, H]``. An ``rnnkit.RNNNetwork`` adds
its embedding (``Gather``), output layer (``MatMul`` + ``Add``) and, for cross-entropy, ``Softmax``:
the graph computes what ``predict_proba`` (cross-entropy) or ``forward`` (MSE) returns.

The graph is float32 whatever the model's dtype: ONNX Runtime implements the recurrent operators
for float32 only, so float64 weights are rounded to float32. ``onnx`` is an optional dependency,
imported when ``export`` runs, so this module imports without it. The cells that ONNX has no
operator for (LayerNorm cells, LSTM projections) are refused. Dropout does not exist at inference
and is left out.
"""

from __future__ import annotations

import numbers
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import _validate as V
from .._cells import onnx_keywords
from .convert import _onnx_text, check_no_zoneout, from_onnx, onnx_layer_options, to_onnx
from ..layers import GRU, LSTM, RNN, _RecurrentLayer
from ..network import RNNNetwork

if TYPE_CHECKING:  # pragma: no cover - for type checkers only; onnx is optional at run time
    import onnx

#: The opset written when none is asked for: well supported by ONNX Runtime >= 1.13.
DEFAULT_OPSET = 17
#: The oldest opset the graph is valid for (Reshape's ``allowzero`` and the current
#: ``Softmax``/``Squeeze``/``Slice`` signatures).
MIN_OPSET = 14

_OP_TYPE = {"RNN_TANH": "RNN", "RNN_RELU": "RNN", "LSTM": "LSTM", "GRU": "GRU", "GRU_RESET_BEFORE": "GRU"}
_ACTIVATION = {"RNN_TANH": "Tanh", "RNN_RELU": "Relu"}
_INSTALL_HINT = 'pip install onnx (or pip install "rnnkit[onnx]")'


def export(
    model: Union[_RecurrentLayer, RNNNetwork],
    path: Union[str, "os.PathLike[str]"],
    *,
    opset: int = DEFAULT_OPSET,
    with_lengths: bool = False,
    with_initial_state: bool = False,
) -> "onnx.ModelProto":
    """Writes ``model`` to ``path`` as a checked ONNX model and returns the ``ModelProto``.

    Args:
        model: an ``rnnkit.RNN``, ``LSTM`` or ``GRU`` (any ``num_layers``, ``bidirectional``,
            ``batch_first``, ``bias``), or an ``rnnkit.RNNNetwork`` built on one of those cells.
        path: the file to write (str or ``os.PathLike``).
        opset: the ONNX opset version (``MIN_OPSET`` up to what the installed onnx knows).
        with_lengths: adds the graph input ``lengths`` (int32 ``[N]``, each in ``[1, T]``), fed to
            every layer's ``sequence_lens``: as ``lengths=`` of rnnkit's forward.
        with_initial_state: adds the graph inputs ``h0`` ``[L*D, N, H]`` (and ``c0`` for an LSTM),
            as rnnkit's ``h0``/``state``; without it the initial state is zero.

    Graph inputs: ``x`` float32 ``[T, N, C]`` (``[N, T, C]`` with batch_first) or, for a token
    network, int64 ids ``[T, N]`` (``[N, T]``); then ``lengths``, ``h0``, ``c0`` as enabled. Outputs:
    a layer's ``y`` (as its forward's), a network's ``probs`` (cross-entropy: softmax over the last
    axis) or ``predictions`` (MSE), ``[T, N, K]`` (``[N, T, K]``) for the sequence head, ``[N, K]``
    for the last head; then ``h_n`` (and ``c_n``) ``[L*D, N, H]``. T and N are symbolic.
    """
    layer = _check_model(model)
    target = _check_path(path)
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral):
        raise TypeError(f"opset: expected an integer ONNX opset version, got {type(opset).__name__} {opset!r}")
    opset = int(opset)
    with_lengths = V.check_bool("with_lengths", with_lengths)
    with_initial_state = V.check_bool("with_initial_state", with_initial_state)
    onnx = _import_onnx()
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset: expected an opset version in [{MIN_OPSET}, {newest}] (the newest this onnx "
                         f"{onnx.__version__} knows), got {opset}")

    graph = _GraphBuilder(onnx)
    if isinstance(model, RNNNetwork):
        _build_network(graph, model, with_lengths, with_initial_state)
    else:
        _build_layer(graph, layer, with_lengths, with_initial_state)
    proto = onnx.helper.make_model_gen_version(
        onnx.helper.make_graph(graph.nodes, type(model).__name__, graph.inputs, graph.outputs, graph.initializers),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        producer_name="rnnkit",
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, target)
    return proto


# ---- arguments ----------------------------------------------------------------------------------
def _check_model(model: Any) -> _RecurrentLayer:
    """The recurrent stack of ``model``, once it is known to have ONNX operators."""
    if isinstance(model, RNNNetwork):
        layer, what = model.rnn, f"RNNNetwork(cell={model.cell!r})"
    elif isinstance(model, _RecurrentLayer):
        layer, what = model, type(model).__name__
    else:
        raise TypeError("model: expected an rnnkit RNN, LSTM, GRU or RNNNetwork, got "
                        f"{type(model).__module__}.{type(model).__name__}")
    if not isinstance(layer, (RNN, LSTM, GRU)):
        raise TypeError(f"model: not exportable: {what} has no ONNX operator (ONNX has no LayerNorm, IndRNN or "
                        "minGRU/minLSTM cell); expected an RNN, LSTM or GRU cell")
    if layer.proj_size:
        raise ValueError(f"model: not exportable: an LSTM with proj_size={layer.proj_size} has no ONNX operator "
                         "(ONNX's LSTM has no projection); expected proj_size=0")
    check_no_zoneout(layer, "ONNX", argument="model")
    return layer


def _check_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike file path, got {type(path).__name__} {path!r}")
    target = os.fspath(path)
    if not isinstance(target, str):
        raise TypeError(f"path: expected a str or os.PathLike giving a str, got {type(target).__name__} {target!r}")
    if not target:
        raise ValueError("path: expected a file path, got an empty string")
    return target


def _import_onnx() -> Any:
    try:
        # Absolute: this module is rnnkit.onnx, and Python 3 resolves the name to the top level.
        import onnx
        import onnx.checker
        import onnx.defs
        import onnx.helper
        import onnx.numpy_helper
    except ImportError as exc:
        raise ImportError(f"rnnkit.onnx.export needs the onnx package: {_INSTALL_HINT}") from exc
    return onnx


# ---- graph construction -------------------------------------------------------------------------
class _GraphBuilder:
    """Nodes, initializers and graph inputs/outputs, with unique names for intermediate values."""

    def __init__(self, onnx: Any) -> None:
        self.onnx = onnx
        self.nodes: List[Any] = []
        self.initializers: List[Any] = []
        self.inputs: List[Any] = []
        self.outputs: List[Any] = []
        self._count = 0

    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, stem: str, values: Sequence[int]) -> str:
        return self.constant(self.fresh(stem), np.asarray(values, np.int64))

    def op(self, op_type: str, inputs: Sequence[str], outputs: Union[int, Sequence[str]] = 1,
           **attrs: Any) -> List[str]:
        """Adds a node; ``outputs`` is a count (fresh names) or the names to give them."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names, name=self.fresh(op_type), **attrs))
        return names

    def graph_input(self, name: str, elem_type: int, shape: Sequence[Union[int, str]]) -> str:
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def graph_output(self, name: str, elem_type: int, shape: Sequence[Union[int, str]]) -> None:
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, elem_type, list(shape)))


def _float32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _state_inputs(g: _GraphBuilder, layer: _RecurrentLayer,
                  with_initial_state: bool) -> Tuple[Optional[str], Optional[str]]:
    if not with_initial_state:
        return None, None
    f32, groups = g.onnx.TensorProto.FLOAT, layer.num_layers * layer.num_directions
    h0 = g.graph_input("h0", f32, [groups, "N", layer.hidden_size])
    c0 = g.graph_input("c0", f32, [groups, "N", layer.hidden_size]) if isinstance(layer, LSTM) else None
    return h0, c0


def _layer_rows(g: _GraphBuilder, state: Optional[str], k: int, layer: _RecurrentLayer) -> str:
    """Layer k's rows ``[D, N, H]`` of a PyTorch-layout state ``[L*D, N, H]`` ("" when absent)."""
    if state is None:
        return ""
    if layer.num_layers == 1:
        return state
    D = layer.num_directions
    return g.op("Slice", [state, g.ints("starts", [k * D]), g.ints("ends", [(k + 1) * D]), g.ints("axes", [0])])[0]


def _merge_directions(g: _GraphBuilder, y: str, num_directions: int, batch_first: bool,
                      out: Optional[str] = None) -> str:
    """An ONNX ``Y`` ``[T, D, N, H]`` as PyTorch's ``[T, N, D*H]`` (``[N, T, D*H]`` batch-first)."""
    names = [out] if out is not None else 1
    if num_directions == 1 and not batch_first:
        return g.op("Squeeze", [y, g.ints("axes", [1])], names)[0]
    perm = [2, 0, 1, 3] if batch_first else [0, 2, 1, 3]
    moved = g.op("Transpose", [y], perm=perm)[0]
    return g.op("Reshape", [moved, g.ints("shape", [0, 0, -1])], names)[0]


def _build_stack(g: _GraphBuilder, layer: _RecurrentLayer, x_time_major: str, with_lengths: bool,
                 with_initial_state: bool, want_y: bool, batch_first_y: bool,
                 y_name: Optional[str] = None) -> Dict[str, Any]:
    """The recurrent stack from a time-major input; returns the names of ``y`` (when wanted, in the
    asked layout, called ``y_name`` if given), ``h_last`` (the last layer's ``Y_h`` ``[D, N, H]``)
    and the per-layer parts of ``h_n``/``c_n``."""
    lengths = g.graph_input("lengths", g.onnx.TensorProto.INT32, ["N"]) if with_lengths else ""
    h0, c0 = _state_inputs(g, layer, with_initial_state)
    op_type, D, L = _OP_TYPE[layer.mode], layer.num_directions, layer.num_layers
    attrs: Dict[str, Any] = {"hidden_size": layer.hidden_size,
                             "direction": layer.direction}
    if layer.mode in _ACTIVATION and not layer._cell_options:
        attrs["activations"] = [_ACTIVATION[layer.mode]] * D
    has_c = isinstance(layer, LSTM)
    h_parts: List[str] = []
    c_parts: List[str] = []
    x, y = x_time_major, ""
    for k, weights in enumerate(to_onnx(layer)):
        node_attrs = dict(attrs)
        if "linear_before_reset" in weights:
            node_attrs["linear_before_reset"] = int(weights["linear_before_reset"])
        for key in ("activations", "activation_alpha", "activation_beta", "clip", "input_forget"):
            if key in weights:
                node_attrs[key] = weights[key]
        W = g.constant(f"W_l{k}", _float32(weights["W"]))
        R = g.constant(f"R_l{k}", _float32(weights["R"]))
        B = "" if weights["B"] is None else g.constant(f"B_l{k}", _float32(weights["B"]))
        inputs = [x, W, R, B, lengths, _layer_rows(g, h0, k, layer)]
        if has_c:
            inputs.append(_layer_rows(g, c0, k, layer))
        if "P" in weights:
            inputs.append(g.constant(f"P_l{k}", _float32(weights["P"])))
        last = k == L - 1
        # ONNX's Y is optional: the last layer of a last-step head need not write it.
        onnx_y = "" if last and not want_y else g.fresh(f"Y_l{k}")
        outputs = [onnx_y, g.fresh(f"Y_h_l{k}")] + ([g.fresh(f"Y_c_l{k}")] if has_c else [])
        # ONNX marks a skipped optional input "" and lets trailing ones be left out altogether.
        while inputs and inputs[-1] == "":
            inputs.pop()
        g.op(op_type, inputs, outputs, **node_attrs)
        h_parts.append(outputs[1])
        if has_c:
            c_parts.append(outputs[2])
        if not last:
            x = _merge_directions(g, onnx_y, D, batch_first=False)
        elif want_y:
            y = _merge_directions(g, onnx_y, D, batch_first_y, out=y_name)
    return {"y": y, "h_last": h_parts[-1], "h_parts": h_parts, "c_parts": c_parts}


def _finish_states(g: _GraphBuilder, layer: _RecurrentLayer, stack: Dict[str, Any]) -> None:
    f32 = g.onnx.TensorProto.FLOAT
    shape = [layer.num_layers * layer.num_directions, "N", layer.hidden_size]
    for name, parts in (("h_n", stack["h_parts"]), ("c_n", stack["c_parts"])):
        if not parts:
            continue
        if len(parts) == 1:
            g.op("Identity", parts, [name])
        else:
            g.op("Concat", parts, [name], axis=0)
        g.graph_output(name, f32, shape)


def _build_layer(g: _GraphBuilder, layer: _RecurrentLayer, with_lengths: bool, with_initial_state: bool) -> None:
    f32 = g.onnx.TensorProto.FLOAT
    bf = layer.batch_first
    x = g.graph_input("x", f32, ["N", "T", layer.input_size] if bf else ["T", "N", layer.input_size])
    if bf:
        x = g.op("Transpose", [x], perm=[1, 0, 2])[0]
    stack = _build_stack(g, layer, x, with_lengths, with_initial_state, want_y=True, batch_first_y=bf, y_name="y")
    width = layer.num_directions * layer.hidden_size
    g.graph_output("y", f32, ["N", "T", width] if bf else ["T", "N", width])
    _finish_states(g, layer, stack)


def _build_network(g: _GraphBuilder, net: RNNNetwork, with_lengths: bool, with_initial_state: bool) -> None:
    f32, layer, bf = g.onnx.TensorProto.FLOAT, net.rnn, net.batch_first
    seq_dims = ["N", "T"] if bf else ["T", "N"]
    if net.vocab_size:
        ids = g.graph_input("x", g.onnx.TensorProto.INT64, seq_dims)
        if bf:  # the ids are the smallest tensor to make time-major
            ids = g.op("Transpose", [ids], perm=[1, 0])[0]
        table = g.constant("embedding.weight", _float32(net.params["embedding.weight"]))
        x = g.op("Gather", [table, ids], axis=0)[0]
    else:
        x = g.graph_input("x", f32, seq_dims + [net.input_size])
        if bf:
            x = g.op("Transpose", [x], perm=[1, 0, 2])[0]
    sequence = net.head == "sequence"
    stack = _build_stack(g, layer, x, with_lengths, with_initial_state, want_y=sequence, batch_first_y=bf)
    if sequence:
        features = stack["y"]
    else:
        # The last head reads both directions' final states side by side: [D, N, H] -> [N, D*H].
        h_last, D = stack["h_last"], layer.num_directions
        if D == 1:
            features = g.op("Squeeze", [h_last, g.ints("axes", [0])])[0]
        else:
            moved = g.op("Transpose", [h_last], perm=[1, 0, 2])[0]
            features = g.op("Reshape", [moved, g.ints("shape", [0, -1])])[0]
    weight_t = g.constant("output.weight_t", _float32(net.params["output.weight"]).T)
    bias = g.constant("output.bias", _float32(net.params["output.bias"]))
    logits = g.op("Add", [g.op("MatMul", [features, weight_t])[0], bias])[0]
    K = net.output_size
    out_shape = (seq_dims if sequence else ["N"]) + [K]
    if net.loss_kind == "cross_entropy":
        g.op("Softmax", [logits], ["probs"], axis=-1)
        g.graph_output("probs", f32, out_shape)
    else:
        g.op("Identity", [logits], ["predictions"])
        g.graph_output("predictions", f32, out_shape)
    _finish_states(g, layer, stack)


# ---- import -----------------------------------------------------------------------------------------
# The ops a recurrent stack's graph may hold besides its RNN/LSTM/GRU nodes: the layout glue that
# export and torch.onnx.export write between the layers and at the outputs, and constants.
_GLUE_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Slice", "Identity", "Constant",
                       "Shape", "Cast"})
_RNN_OPS = ("RNN", "LSTM", "GRU")
# The ops of the embedding and output layer export writes around an RNNNetwork's stack.
_NETWORK_OPS = frozenset({"Gather", "MatMul", "Add", "Softmax"})
# ONNX's inputs of the recurrent operators, by position.
_RNN_INPUTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


class _GraphReader:
    """One ONNX graph, indexed for load: its constants (initializers and Constant nodes), which
    node makes each value, and walks back through layout glue."""

    def __init__(self, onnx: Any, graph: Any) -> None:
        self.onnx, self.graph = onnx, graph
        self.values: Dict[str, np.ndarray] = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        self.produced_by: Dict[str, int] = {}
        for i, node in enumerate(graph.node):
            for out in node.output:
                self.produced_by[out] = i
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        self.values[node.output[0]] = onnx.numpy_helper.to_array(a.t)

    def describe(self, i: int) -> str:
        node = self.graph.node[i]
        return f"node {i} ({node.op_type}{' ' + repr(node.name) if node.name else ''})"

    def walk(self, name: str) -> Tuple[List[int], Optional[int], str]:
        """Back from value `name` through glue only: (the glue nodes passed, the first node that is
        not glue (None: a graph input), the name of its output the walk reached)."""
        passed: List[int] = []
        while name in self.produced_by:
            i = self.produced_by[name]
            node = self.graph.node[i]
            data = [x for x in node.input if x and x not in self.values]
            if node.op_type not in _GLUE_OPS or len(data) != 1:
                return passed, (i if node.op_type != "Constant" else None), name
            passed.append(i)
            name = data[0]
        return passed, None, name

    def source(self, name: str) -> Tuple[Optional[int], str]:
        """(the first node that is not glue that `name` derives from, the name of its output)."""
        _, i, reached = self.walk(name)
        return i, reached

    def swaps_first_axes(self, name: str) -> bool:
        """Whether the glue from a graph input to `name` (through an embedding's Gather too)
        swaps the first two axes an odd number of times: a batch-first model written with layout=0
        nodes (both exporters do so)."""
        swaps = 0
        while True:
            passed, i, _ = self.walk(name)
            for j in passed:
                node = self.graph.node[j]
                if node.op_type == "Transpose":
                    perm = next((list(self.onnx.helper.get_attribute_value(a)) for a in node.attribute
                                 if a.name == "perm"), [])
                    swaps += perm[:2] == [1, 0]
            if i is None or self.graph.node[i].op_type != "Gather":
                return swaps % 2 == 1
            name = self.graph.node[i].input[1]  # the ids the embedding gathers


def load(model: Union[str, "os.PathLike[str]", "onnx.ModelProto"], *,
         dtype: Any = "float32") -> Union[_RecurrentLayer, RNNNetwork]:
    """The rnnkit layer (or network) an ONNX model computes: ``rnnkit.onnx.load(path)``.

    The graph must be a stack of ``RNN``/``LSTM``/``GRU`` nodes of one kind, each reading the one
    before it (through the Transpose/Reshape/Squeeze/Concat layout glue that ``rnnkit.onnx.export``
    and ``torch.onnx.export`` of a ``torch.nn.LSTM``/``GRU`` write), with the weights as
    initializers or constants and the initial state a graph input, absent, or zeros. Returns an
    ``rnnkit.RNN``, ``LSTM`` or ``GRU`` with every layer's weights (``dtype``: the layer's), its
    direction, cell flavour (GRU ``linear_before_reset``, the RNN's ``Tanh``/``Relu``) and
    ``batch_first`` (``layout=1``, or a transpose of the first two axes before the first node).
    Anything else is refused with a message naming the first node it cannot map. The first node's
    ONNX options (activations with their alpha/beta, clip, peepholes ``P``, ``input_forget``) make
    the layer's; a later node that differs is refused by ``rnnkit.convert.from_onnx`` with what to
    change.

    Around the stack, the graph ``export`` writes for an ``RNNNetwork`` is read back as one: a
    ``Gather`` from a constant table before the first node (the embedding: token input), and after
    the last a ``MatMul`` by a constant ``[F, K]`` plus an ``Add`` of a constant ``[K]`` (the output
    layer), reading the last node's ``Y`` (head "sequence") or ``Y_h`` (head "last"), with a
    ``Softmax`` (loss "cross_entropy") or without (loss "mse").
    """
    onnx = _import_onnx()
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        proto = onnx.load(_check_path(model))
    g = _GraphReader(onnx, proto.graph)
    graph, values, describe = g.graph, g.values, g.describe

    rnn = [i for i, node in enumerate(graph.node) if node.op_type in _RNN_OPS]
    if not rnn:
        first = next((i for i, node in enumerate(graph.node) if node.op_type not in _GLUE_OPS), None)
        at = describe(first) if first is not None else "the graph"
        raise ValueError(f"model: {at} cannot be mapped: the graph has no RNN, LSTM or GRU node (torch.onnx.export "
                         "writes torch.nn.RNN unrolled, one MatMul/Add/Tanh per step, which has none)")
    for i, node in enumerate(graph.node):
        if node.op_type not in _RNN_OPS and node.op_type not in _GLUE_OPS and node.op_type not in _NETWORK_OPS:
            raise ValueError(f"model: {describe(i)} cannot be mapped: rnnkit.onnx.load reads a stack of RNN/LSTM/GRU "
                             "nodes, their layout glue (Transpose, Reshape, Squeeze, Unsqueeze, Concat, Slice) and "
                             "the embedding and output layer export writes around them (Gather, MatMul, Add, Softmax)")
    kinds = {graph.node[i].op_type for i in rnn}
    if len(kinds) > 1:
        raise ValueError(f"model: {describe(rnn[1])} cannot be mapped: expected one kind of recurrent node for the "
                         f"whole stack, got {sorted(kinds)}")

    nodes: List[Dict[str, Any]] = []
    layout = 0
    for k, i in enumerate(rnn):
        node = graph.node[i]
        inputs = dict(zip(_RNN_INPUTS, list(node.input) + [""] * (len(_RNN_INPUTS) - len(node.input))))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if k == 0:
            layout = int(attrs.get("layout", 0))
        elif int(attrs.get("layout", 0)) != layout:
            raise ValueError(f"model: {describe(i)} cannot be mapped: expected every node's layout to be {layout}")
        feeds = g.source(inputs["X"])[0]
        expected = None if k == 0 else rnn[k - 1]
        if k == 0 and feeds is not None and graph.node[feeds].op_type == "Gather":
            expected = feeds  # the embedding of a token network (read by _network_around)
        if feeds != expected:
            got = "a graph input" if feeds is None else describe(feeds)
            want = "a graph input" if expected is None else f"the output of {describe(expected)}"
            raise ValueError(f"model: {describe(i)} cannot be mapped: its X should come from {want}, got {got}")
        entry: Dict[str, Any] = {}
        for key in ("W", "R", "B", "P"):
            name = inputs[key]
            if not name:
                continue
            if name not in values:
                raise ValueError(f"model: {describe(i)} cannot be mapped: its {key} input {name!r} is not a constant "
                                 "(rnnkit's layers hold their weights)")
            entry[key] = values[name]
        for key in ("initial_h", "initial_c"):
            name = inputs[key]
            if name and name in values and np.any(values[name]):
                raise ValueError(f"model: {describe(i)} cannot be mapped: its {key} is a nonzero constant (a layer's "
                                 "initial state is an argument of each call: make it a graph input)")
        for key, value in attrs.items():
            if key == "activations":
                entry[key] = [_onnx_text(v) for v in value]
            elif key != "layout":
                entry[key] = value.decode() if isinstance(value, bytes) else value
        nodes.append(entry)

    first, kind = nodes[0], kinds.pop()
    if "W" not in first or "R" not in first:
        raise ValueError(f"model: {describe(rnn[0])} cannot be mapped: expected W and R inputs")
    C, H = first["W"].shape[2], first["R"].shape[2]  # W [D, G*H, C], R [D, G*H, H]
    batch_first = layout == 1 or g.swaps_first_axes(dict(zip(_RNN_INPUTS, graph.node[rnn[0]].input))["X"])
    options: Dict[str, Any] = dict(num_layers=len(nodes), bias="B" in first, batch_first=batch_first, dtype=dtype)
    direction = _onnx_text(first.get("direction", "forward"))
    if direction in ("reverse", "bidirectional"):  # anything else: a forward layer, whose from_onnx says what
        options["direction"] = direction
    if kind == "RNN":
        cls: type = RNN
    elif kind == "GRU":
        options["reset_after"] = bool(int(first.get("linear_before_reset", 0)))
        cls = GRU
    else:
        cls = LSTM
    try:
        options.update(onnx_layer_options(first, kind, 2 if direction == "bidirectional" else 1))
    except ValueError as exc:
        raise ValueError(f"model: {describe(rnn[0])} cannot be mapped: {exc}") from None
    layer = cls(int(C), int(H), **options)
    from_onnx(layer, nodes)
    around = [i for i, node in enumerate(graph.node) if node.op_type in _NETWORK_OPS]
    if not around:
        return layer
    return _network_around(g, layer, rnn, around, dtype)


def _network_around(g: _GraphReader, layer: _RecurrentLayer, rnn: List[int], around: List[int],
                    dtype: Any) -> RNNNetwork:
    """The RNNNetwork whose embedding and output layer are the Gather/MatMul/Add/Softmax nodes
    `around` the stack `layer` read from the RNN nodes `rnn` (the layout export writes)."""
    graph, values, describe, source = g.graph, g.values, g.describe, g.source

    def only(op: str, required: bool) -> Optional[int]:
        found = [i for i in around if graph.node[i].op_type == op]
        if len(found) > 1 or (required and not found):
            at = describe(found[1]) if len(found) > 1 else f"the graph ({op} missing)"
            raise ValueError(f"model: {at} cannot be mapped: a network has one {op} ({'required' if required else 'or none'})")
        return found[0] if found else None

    def constant(i: int, pos: int, ndim: int) -> np.ndarray:
        name = graph.node[i].input[pos] if pos < len(graph.node[i].input) else ""
        if name not in values or values[name].ndim != ndim:
            raise ValueError(f"model: {describe(i)} cannot be mapped: expected its input {pos} to be a {ndim}-D constant")
        return values[name]

    gather, matmul, add, softmax = only("Gather", False), only("MatMul", True), only("Add", True), only("Softmax", False)
    last, D, H = rnn[-1], layer.num_directions, layer.hidden_size
    table = None
    if gather is not None:
        table = constant(gather, 0, 2)
        if source(graph.node[rnn[0]].input[0])[0] != gather:
            raise ValueError(f"model: {describe(gather)} cannot be mapped: expected it to feed the first recurrent node")
    feeds, via = source(graph.node[matmul].input[0])
    if feeds != last or via not in graph.node[last].output[:2] or not via:
        raise ValueError(f"model: {describe(matmul)} cannot be mapped: expected it to read the last recurrent node's "
                         "Y (head 'sequence') or Y_h (head 'last')")
    head = "sequence" if via == graph.node[last].output[0] else "last"
    weight_t = constant(matmul, 1, 2)
    if weight_t.shape[0] != D * H:
        raise ValueError(f"model: {describe(matmul)} cannot be mapped: expected {D * H} input features (the stack's "
                         f"D*H), got {weight_t.shape[0]}")
    mm_out = graph.node[matmul].output[0]
    add_node = graph.node[add]
    if mm_out not in add_node.input:
        raise ValueError(f"model: {describe(add)} cannot be mapped: expected it to add the output layer's bias to the "
                         f"MatMul's output")
    bias_name = next(x for x in add_node.input if x != mm_out)
    bias = values.get(bias_name)
    if bias is None or bias.shape != (weight_t.shape[1],):
        raise ValueError(f"model: {describe(add)} cannot be mapped: expected a constant bias [{weight_t.shape[1]}]")
    if softmax is not None and source(graph.node[softmax].input[0])[0] != add:
        raise ValueError(f"model: {describe(softmax)} cannot be mapped: expected it to read the output layer")
    if not layer.bias:
        raise ValueError("model: an RNNNetwork's recurrent layers have biases: the graph's nodes have no B")
    kwargs: Dict[str, Any] = dict(hidden_size=H, output_size=int(weight_t.shape[1]), cell=layer.cell,
                                  num_layers=layer.num_layers, direction=layer.direction, head=head,
                                  loss="cross_entropy" if softmax is not None else "mse",
                                  batch_first=layer.batch_first, dtype=dtype, **onnx_keywords(layer))
    if table is not None:
        kwargs.update(vocab_size=int(table.shape[0]), embedding_dim=int(table.shape[1]))
    else:
        kwargs.update(input_size=layer.input_size)
    net = RNNNetwork(**kwargs)
    state = {f"rnn.{k}": v for k, v in layer.state_dict().items()}
    state["output.weight"] = np.ascontiguousarray(weight_t.T)
    state["output.bias"] = bias
    if table is not None:
        state["embedding.weight"] = table
    net.load_state_dict(state)
    return net
