"""ONNX translation of the operator ``rnnkit::forward`` for ``torch.onnx.export(..., dynamo=True)``:
each layer of the stack becomes one standard ONNX ``RNN`` / ``LSTM`` / ``GRU`` node, so an exported
model runs in ONNX Runtime (or any ONNX backend) without rnnkit.

The translation is registered with torch's ONNX exporter when the exporter loads (``install``,
called by ``rnnkit.torch``), so ``torch.onnx.export(model, args, dynamo=True)`` needs nothing
more; ``translation_table()`` gives the same function for ``custom_translation_table=``. onnxscript
(which the dynamo exporter itself needs) is imported only then.

It writes what ONNX can express and refuses the rest, saying what to change: LayerNorm cells and
``proj_size`` (no ONNX operator has them), PackedSequence inputs, and dropout between layers (export
in eval mode). The weights keep PyTorch's layout in the graph; the Slice/Concat that reorder the
gates into ONNX's order (LSTM i,o,f,c; GRU z,r,h) run on initializers and fold away.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch

from .._cells import onnx_attributes

# The modes the ONNX operators express: operator, gate order (ONNX's gates from PyTorch's), extra
# attributes. The GRU's linear_before_reset=1 is PyTorch's GRU (reset applied after the recurrent
# product), 0 rnnkit's reset_after=False flavour.
_ONNX_NODE = {
    "RNN_TANH": ("RNN", [0], {"activations": ["Tanh"]}),
    "RNN_RELU": ("RNN", [0], {"activations": ["Relu"]}),
    "LSTM": ("LSTM", [0, 3, 1, 2], {}),
    "GRU": ("GRU", [1, 0, 2], {"linear_before_reset": 1}),
    "GRU_RESET_BEFORE": ("GRU", [1, 0, 2], {"linear_before_reset": 0}),
}

_EXPORTER_REGISTRY = "torch.onnx._internal.exporter._torchlib._torchlib_registry"
# The two modules import each other, so either may be the one imported first; the translation is
# registered once both are complete.
_EXPORTER_REGISTRATION = "torch.onnx._internal.exporter._registration"
_EXPORTER_MODULES = (_EXPORTER_REGISTRY, _EXPORTER_REGISTRATION)


def _refuse(what: str) -> None:
    raise ValueError(f"rnnkit.torch ONNX export: {what}")


def rnnkit_forward(x, batch_sizes, sorted_indices, h0, c0, weights, seed, mode: str, input_size: int,
                   hidden_size: int, num_layers: int, bidirectional: bool, proj_size: int, bias: bool,
                   dropout: float, precision: str, reverse: bool, cell_options: str, weight_dropout: float,
                   zoneout: float, zoneout_cell: float, input_dropout: float, recurrent_dropout: float,
                   zoneout_expected: bool, training: bool):
    """The ONNX graph of one ``rnnkit::forward`` call (traced by onnxscript). A bfloat16
    ``precision`` is how rnnkit computes the layer; the float32 ONNX node computes the same function."""
    from onnxscript import ir
    from onnxscript.onnx_opset import opset18 as op

    if mode not in _ONNX_NODE:
        _refuse(f"expected a cell ONNX has an operator for (RNN, LSTM, GRU), got mode {mode!r} "
                "(LayerNorm cells have none; use rnnkit itself to run them)")
    if proj_size:
        _refuse(f"expected proj_size=0 (ONNX's LSTM has no projection), got {proj_size}")
    if batch_sizes is not None:
        _refuse("expected a padded input, got a PackedSequence (export with a padded tensor; ONNX's "
                "sequence_lens is what rnnkit.onnx.export(with_lengths=True) writes)")
    if dropout > 0.0:
        _refuse(f"expected no dropout between layers, got dropout={dropout} in training mode "
                "(call model.eval() before exporting)")
    if zoneout > 0.0 or zoneout_cell > 0.0:
        _refuse(f"expected no zoneout, got zoneout={zoneout}, zoneout_cell={zoneout_cell} (ONNX's operators "
                "cannot express its mix of the previous and new state, which eval mode keeps)")
    if weight_dropout > 0.0 or input_dropout > 0.0 or recurrent_dropout > 0.0:
        _refuse("expected no weight, input or recurrent dropout, got them in training mode (call model.eval() "
                "before exporting: in eval mode they draw no masks)")
    kind, order, attrs = _ONNX_NODE[mode]
    D, H, G = (2 if bidirectional else 1), hidden_size, len(order)
    per_group = 4 if bias else 2
    direction = "bidirectional" if D == 2 else ("reverse" if reverse else "forward")
    if "activations" in attrs:
        attrs = {"activations": attrs["activations"] * D}
    options = onnx_attributes(cell_options, D)
    peephole = options.pop("peephole", False)
    if options.get("activations"):
        attrs.pop("activations", None)
    attrs = {**attrs, **options}
    per_group += 1 if peephole else 0

    def onnx_gates(w):
        """[G*H, ...] in PyTorch's gate order -> ONNX's order."""
        if G == 1:
            return w
        return op.Concat(*[op.Slice(w, [g * H], [(g + 1) * H], [0]) for g in order], axis=0)

    def stacked(values: List[Any]):
        values = [op.Unsqueeze(v, [0]) for v in values]
        return values[0] if len(values) == 1 else op.Concat(*values, axis=0)

    layer_in = x
    h_parts: List[Any] = []
    c_parts: List[Any] = []
    for layer in range(num_layers):
        W, R, B, Pp = [], [], [], []
        for d in range(D):
            group = weights[(layer * D + d) * per_group:(layer * D + d + 1) * per_group]
            W.append(onnx_gates(group[0]))
            R.append(onnx_gates(group[1]))
            if bias:
                B.append(op.Concat(onnx_gates(group[2]), onnx_gates(group[3]), axis=0))
            if peephole:  # weight_peephole [3, H] (i, f, o) -> ONNX's P [3H] (i, o, f)
                p = group[-1]
                Pp.append(op.Concat(*[op.Reshape(op.Slice(p, [g], [g + 1], [0]), op.Constant(value_ints=[-1]))
                                      for g in (0, 2, 1)], axis=0))
        states = [None if s is None else op.Slice(s, [layer * D], [(layer + 1) * D], [0]) for s in (h0, c0)]
        inputs = [layer_in, stacked(W), stacked(R), stacked(B) if bias else None, None, states[0]]
        if kind == "LSTM":
            lstm_inputs = [*inputs, states[1]] + ([stacked(Pp)] if peephole else [])  # ..., initial_c, P
            Y, Y_h, Y_c = op.LSTM(*lstm_inputs, hidden_size=H, direction=direction, **attrs)
            c_parts.append(Y_c)
        elif kind == "GRU":
            Y, Y_h = op.GRU(*inputs, hidden_size=H, direction=direction, **attrs)
        else:
            Y, Y_h = op.RNN(*inputs, hidden_size=H, direction=direction, **attrs)
        h_parts.append(Y_h)
        # Y [T, D, N, H] -> the next layer's input / the output [T, N, D*H]
        layer_in = op.Reshape(op.Transpose(Y, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))
    h_n = h_parts[0] if num_layers == 1 else op.Concat(*h_parts, axis=0)
    empty = op.CastLike(op.Constant(value=ir.tensor([], dtype=ir.DataType.FLOAT)), x)
    c_n = (c_parts[0] if num_layers == 1 else op.Concat(*c_parts, axis=0)) if c_parts else empty
    return layer_in, h_n, c_n, op.Identity(empty)


def translation_table() -> Dict[Any, Any]:
    """``custom_translation_table=`` for ``torch.onnx.export(..., dynamo=True)`` (not needed when
    ``install`` has registered the translation, which ``rnnkit.torch`` does)."""
    return {torch.ops.rnnkit.forward.default: rnnkit_forward}


def _exporter_ready() -> bool:
    registry = sys.modules.get(_EXPORTER_REGISTRY)
    registration = sys.modules.get(_EXPORTER_REGISTRATION)
    return (registry is not None and hasattr(registry, "onnx_impl")
            and registration is not None and hasattr(registration, "OnnxDecompMeta"))


def _register() -> bool:
    """Adds the translation to torch's exporter registry (the list its ONNX registries are built
    from at each export), once both of its modules are complete. True when it is registered."""
    if not _exporter_ready():
        return False
    registry = sys.modules[_EXPORTER_REGISTRY]
    if not getattr(registry, "_rnnkit_registered", False):
        registry.onnx_impl(torch.ops.rnnkit.forward.default, trace_only=True)(rnnkit_forward)
        registry._rnnkit_registered = True
    return True


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Registers the translation once torch's exporter has loaded its registry: importing it (and
    with it onnxscript, ~2 s) at ``import rnnkit.torch`` would slow every user who never exports.
    It watches both registry modules and tries after each has executed; it leaves sys.meta_path
    once the translation is registered."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None):
        if fullname not in _EXPORTER_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module
        finder = self

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            if _register() and finder in sys.meta_path:
                sys.meta_path.remove(finder)

        loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Registers the translation now if torch's exporter is loaded, else when it loads."""
    if _register():
        return
    if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
