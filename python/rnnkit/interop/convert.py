"""Weight converters between rnnkit (= PyTorch) layouts and ONNX and Keras layouts.

rnnkit stores weights exactly as PyTorch does: ``weight_ih [G*H, C]``, ``weight_hh [G*H, P]``, two
biases ``[G*H]``, gates in the order LSTM (i, f, g, o), GRU (r, z, n). Other layouts:

==============  =================================================  ===============================
layout          LSTM / GRU gate order                              shapes per layer
==============  =================================================  ===============================
ONNX operators  LSTM (i, o, f, c); GRU (z, r, h); RNN one gate     W [D, G*H, C], R [D, G*H, H],
                                                                   B [D, 2*G*H] = [Wb, Rb]
Keras           LSTM (i, f, c, o); GRU (z, r, h); SimpleRNN        kernel [C, G*H],
                                                                   recurrent_kernel [H, G*H], bias
==============  =================================================  ===============================

ONNX's GRU attribute ``linear_before_reset`` is 1 for ``GRU(reset_after=True)`` and 0 for
``reset_after=False``. Keras keeps a single bias ``[G*H]`` except for ``GRU(reset_after=True)``,
whose bias is ``[2, 3H]`` (input bias, recurrent bias): converting to Keras sums ``b_ih + b_hh``
where Keras has one bias, and converting from Keras puts it in ``b_ih`` with ``b_hh = 0`` (the
same function; ``rnnkit -> keras -> rnnkit`` keeps every output, ``keras -> rnnkit -> keras``
every array).

Functions take and fill an rnnkit layer, which knows its cell, sizes, layers and directions.
The LayerNorm cells and LSTM projections have no counterpart in these layouts and are refused.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from .. import _validate as V
from .._cells import DIRECTIONS
from ..layers import GRU, LSTM, RNN, _RecurrentLayer

# Position in rnnkit's order of each gate in the other layout's order.
_ONNX_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "GRU_RESET_BEFORE": [1, 0, 2], "RNN_TANH": [0], "RNN_RELU": [0]}
_KERAS_ORDER = {"LSTM": [0, 1, 2, 3], "GRU": [1, 0, 2], "GRU_RESET_BEFORE": [1, 0, 2], "RNN_TANH": [0], "RNN_RELU": [0]}


def _check_convertible(layer: _RecurrentLayer, what: str) -> None:
    if not isinstance(layer, (RNN, LSTM, GRU)):
        raise TypeError(f"layer: expected an rnnkit RNN, LSTM or GRU ({what} has no LayerNorm cells), got {type(layer).__name__}")
    if layer.proj_size:
        raise ValueError(f"layer: expected an LSTM without proj_size ({what} has no projection), got proj_size={layer.proj_size}")


def _reorder(blocks: np.ndarray, order: Sequence[int], H: int) -> np.ndarray:
    """Gate blocks of H rows along axis 0, rearranged: result block k = input block order[k]."""
    return np.concatenate([blocks[g * H:(g + 1) * H] for g in order], axis=0)


def _inverse(order: Sequence[int]) -> List[int]:
    inv = [0] * len(order)
    for k, g in enumerate(order):
        inv[g] = k
    return inv


def _suffix(layer_index: int, direction: int) -> str:
    return f"_l{layer_index}" + ("_reverse" if direction == 1 else "")


def _bias_pair(layer: _RecurrentLayer, sfx: str):
    gh = layer.params["weight_hh" + sfx].shape[0]
    if not layer.bias:
        return np.zeros(gh, layer.dtype), np.zeros(gh, layer.dtype)
    return layer.params["bias_ih" + sfx], layer.params["bias_hh" + sfx]


# ---- ONNX ---------------------------------------------------------------------------------------
def to_onnx(layer: _RecurrentLayer) -> List[Dict[str, np.ndarray]]:
    """Per layer, the inputs and attributes of one ONNX RNN/LSTM/GRU node: ``{"W", "R", "B"}`` (B is
    None for bias=False), ``"direction"``, ``"hidden_size"`` and, for GRU, ``"linear_before_reset"``
    (0 or 1)."""
    _check_convertible(layer, "ONNX")
    order, H = _ONNX_ORDER[layer.mode], layer.hidden_size
    out = []
    for k in range(layer.num_layers):
        W, R, B = [], [], []
        for d in range(layer.num_directions):
            sfx = _suffix(k, d)
            b_ih, b_hh = _bias_pair(layer, sfx)
            W.append(_reorder(layer.params["weight_ih" + sfx], order, H))
            R.append(_reorder(layer.params["weight_hh" + sfx], order, H))
            B.append(np.concatenate([_reorder(b_ih, order, H), _reorder(b_hh, order, H)]))
        node = {"W": np.stack(W), "R": np.stack(R), "B": np.stack(B) if layer.bias else None,
                "direction": layer.direction,
                "hidden_size": H}
        if isinstance(layer, GRU):
            node["linear_before_reset"] = 1 if layer.reset_after else 0
        out.append(node)
    return out


# The activations an ONNX node may name that are rnnkit's own cells' (ONNX's defaults): per
# direction, f (and g, h) in ONNX's order.
_ONNX_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                     "GRU_RESET_BEFORE": ["Sigmoid", "Tanh"], "RNN_TANH": ["Tanh"], "RNN_RELU": ["Relu"]}


def _onnx_text(value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _onnx_text(value.item())
    return str(value)


def _check_onnx_attributes(layer: _RecurrentLayer, k: int, node: Dict[str, np.ndarray]) -> None:
    """Refuses what an rnnkit layer cannot represent, saying what to change: ONNX's defaults apply
    where a key is absent (direction "forward", linear_before_reset 0, no clip, the default
    activations, input_forget 0, no peepholes)."""
    name = f"nodes[{k}]"
    direction = _onnx_text(node.get("direction", "forward"))
    if direction not in DIRECTIONS:
        raise ValueError(f"{name}['direction']: expected 'forward', 'reverse' or 'bidirectional', got {direction!r}")
    if direction != layer.direction:
        raise ValueError(f"{name}['direction']: expected {layer.direction!r} for this layer, got {direction!r}: make "
                         f"the layer with direction={direction!r}")
    if "hidden_size" in node and int(node["hidden_size"]) != layer.hidden_size:
        raise ValueError(f"{name}['hidden_size']: expected {layer.hidden_size} (the layer's hidden_size), "
                         f"got {int(node['hidden_size'])}")
    if isinstance(layer, GRU):
        # ONNX's default is 0 (reset before the recurrent product): rnnkit's reset_after=False.
        lbr = int(node.get("linear_before_reset", 0))
        if lbr != int(layer.reset_after):
            absent = " (absent: ONNX's default 0)" if "linear_before_reset" not in node else ""
            raise ValueError(f"{name}['linear_before_reset']: expected {int(layer.reset_after)} for "
                             f"GRU(reset_after={layer.reset_after}), got {lbr}{absent}: make the layer with "
                             f"reset_after={bool(lbr)}")
    if node.get("clip") is not None:
        raise ValueError(f"{name}['clip']: expected none (rnnkit's layers have no cell clip yet), got {node['clip']}")
    if int(node.get("input_forget", 0)) != 0:
        raise ValueError(f"{name}['input_forget']: expected 0 (rnnkit's LSTM has no coupled input-forget gate yet), "
                         f"got {int(node['input_forget'])}")
    if node.get("P") is not None and np.any(np.asarray(node["P"]) != 0):
        raise ValueError(f"{name}['P']: expected none or zeros (rnnkit's LSTM has no peepholes yet), got nonzero "
                         "peephole weights")
    if node.get("activations") is not None:
        got = [_onnx_text(a) for a in np.asarray(node["activations"], dtype=object).reshape(-1)]
        default = _ONNX_ACTIVATIONS[layer.mode] * layer.num_directions
        if [a.lower() for a in got] != [a.lower() for a in default]:
            raise ValueError(f"{name}['activations']: expected {default} (this {type(layer).__name__}'s own; rnnkit "
                             f"has no other activations yet), got {got}")
    for key in ("activation_alpha", "activation_beta"):
        if node.get(key) is not None:
            raise ValueError(f"{name}[{key!r}]: expected none (the default activations take no parameters), "
                             f"got {node[key]}")


def from_onnx(layer: _RecurrentLayer, nodes: Sequence[Dict[str, np.ndarray]]) -> None:
    """Loads per-layer ONNX nodes ``{"W", "R", "B"}`` plus any of their attributes (as made by
    ``to_onnx``, or read off an ONNX model) into ``layer``. ONNX's defaults apply to what a node
    leaves out: an absent ``B`` is zero biases, an absent ``linear_before_reset`` is 0, an absent
    ``direction`` "forward". What the layer cannot represent (a reverse-only node, another
    direction or hidden size, nonzero biases for a ``bias=False`` layer, clip, peepholes, coupled
    gates, other activations) is refused with a message saying what to change; nothing is loaded
    then."""
    _check_convertible(layer, "ONNX")
    if len(nodes) != layer.num_layers:
        raise ValueError(f"nodes: expected {layer.num_layers} (one per layer), got {len(nodes)}")
    inv, H = _inverse(_ONNX_ORDER[layer.mode]), layer.hidden_size
    state = {}
    for k, node in enumerate(nodes):
        _check_onnx_attributes(layer, k, node)
        W = V.as_float_array(f"nodes[{k}]['W']", node["W"], layer.dtype)
        R = V.as_float_array(f"nodes[{k}]['R']", node["R"], layer.dtype)
        B = None if node.get("B") is None else V.as_float_array(f"nodes[{k}]['B']", node["B"], layer.dtype)
        for d in range(layer.num_directions):
            sfx = _suffix(k, d)
            shape_ih = layer.params["weight_ih" + sfx].shape
            shape_hh = layer.params["weight_hh" + sfx].shape
            V.check_shape(f"nodes[{k}]['W']", W, (layer.num_directions,) + shape_ih)
            V.check_shape(f"nodes[{k}]['R']", R, (layer.num_directions,) + shape_hh)
            state["weight_ih" + sfx] = _reorder(W[d], inv, H)
            state["weight_hh" + sfx] = _reorder(R[d], inv, H)
            if B is not None:
                V.check_shape(f"nodes[{k}]['B']", B, (layer.num_directions, 2 * shape_hh[0]))
            if layer.bias:
                b = np.zeros(2 * shape_hh[0], layer.dtype) if B is None else B[d]
                state["bias_ih" + sfx] = _reorder(b[:shape_hh[0]], inv, H)
                state["bias_hh" + sfx] = _reorder(b[shape_hh[0]:], inv, H)
        if not layer.bias and B is not None and np.any(B != 0):
            raise ValueError(f"nodes[{k}]['B']: expected none or zeros for a layer with bias=False (it has no biases "
                             "to load them into: make the layer with bias=True), got nonzero biases")
    layer.load_state_dict(state)


# ---- Keras --------------------------------------------------------------------------------------
def to_keras(layer: _RecurrentLayer) -> List[List[np.ndarray]]:
    """Per layer and direction (rnnkit's group order: l0, l0_reverse, l1, ...), the arrays of a
    Keras SimpleRNN/LSTM/GRU layer's ``get_weights()``: ``[kernel, recurrent_kernel, bias]``
    (no bias for bias=False)."""
    _check_convertible(layer, "Keras")
    order, H = _KERAS_ORDER[layer.mode], layer.hidden_size
    out = []
    for k in range(layer.num_layers):
        for d in range(layer.num_directions):
            sfx = _suffix(k, d)
            arrays = [_reorder(layer.params["weight_ih" + sfx], order, H).T.copy(),
                      _reorder(layer.params["weight_hh" + sfx], order, H).T.copy()]
            if layer.bias:
                b_ih, b_hh = _bias_pair(layer, sfx)
                if isinstance(layer, GRU) and layer.reset_after:
                    arrays.append(np.stack([_reorder(b_ih, order, H), _reorder(b_hh, order, H)]))
                else:
                    arrays.append(_reorder(b_ih + b_hh, order, H))
            out.append(arrays)
    return out


def from_keras(layer: _RecurrentLayer, groups: Sequence[Sequence[np.ndarray]]) -> None:
    """Loads Keras ``get_weights()`` lists (one per layer and direction, as made by
    ``to_keras``) into ``layer``. A single Keras bias goes to ``bias_ih`` (``bias_hh`` = 0)."""
    _check_convertible(layer, "Keras")
    expected_groups = layer.num_layers * layer.num_directions
    if len(groups) != expected_groups:
        raise ValueError(f"groups: expected {expected_groups} (one per layer and direction), got {len(groups)}")
    inv, H = _inverse(_KERAS_ORDER[layer.mode]), layer.hidden_size
    state = {}
    for g, arrays in enumerate(groups):
        k, d = divmod(g, layer.num_directions)
        sfx = _suffix(k, d)
        n_expected = 3 if layer.bias else 2
        if len(arrays) != n_expected:
            raise ValueError(f"groups[{g}]: expected {n_expected} arrays (kernel, recurrent_kernel{', bias' if layer.bias else ''}), got {len(arrays)}")
        gh, c = layer.params["weight_ih" + sfx].shape
        kernel = V.as_float_array(f"groups[{g}][0] (kernel)", arrays[0], layer.dtype)
        recurrent = V.as_float_array(f"groups[{g}][1] (recurrent_kernel)", arrays[1], layer.dtype)
        V.check_shape(f"groups[{g}][0] (kernel)", kernel, (c, gh))
        V.check_shape(f"groups[{g}][1] (recurrent_kernel)", recurrent, (H, gh))
        state["weight_ih" + sfx] = _reorder(kernel.T, inv, H)
        state["weight_hh" + sfx] = _reorder(recurrent.T, inv, H)
        if layer.bias:
            bias = V.as_float_array(f"groups[{g}][2] (bias)", arrays[2], layer.dtype)
            if isinstance(layer, GRU) and layer.reset_after:
                V.check_shape(f"groups[{g}][2] (bias)", bias, (2, gh))
                state["bias_ih" + sfx] = _reorder(bias[0], inv, H)
                state["bias_hh" + sfx] = _reorder(bias[1], inv, H)
            else:
                V.check_shape(f"groups[{g}][2] (bias)", bias, (gh,))
                state["bias_ih" + sfx] = _reorder(bias, inv, H)
                state["bias_hh" + sfx] = np.zeros(gh, layer.dtype)
    layer.load_state_dict(state)
