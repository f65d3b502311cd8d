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
    """Per layer, the inputs of one ONNX RNN/LSTM/GRU node: ``{"W", "R", "B"}`` (B is None for
    bias=False) and, for GRU, ``{"linear_before_reset": 0 or 1}``."""
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
        node = {"W": np.stack(W), "R": np.stack(R), "B": np.stack(B) if layer.bias else None}
        if isinstance(layer, GRU):
            node["linear_before_reset"] = 1 if layer.reset_after else 0
        out.append(node)
    return out


def from_onnx(layer: _RecurrentLayer, nodes: Sequence[Dict[str, np.ndarray]]) -> None:
    """Loads per-layer ONNX ``{"W", "R", "B"}`` (as made by ``to_onnx``) into ``layer``."""
    _check_convertible(layer, "ONNX")
    if len(nodes) != layer.num_layers:
        raise ValueError(f"nodes: expected {layer.num_layers} (one per layer), got {len(nodes)}")
    inv, H = _inverse(_ONNX_ORDER[layer.mode]), layer.hidden_size
    state = {}
    for k, node in enumerate(nodes):
        if isinstance(layer, GRU) and "linear_before_reset" in node and int(node["linear_before_reset"]) != int(layer.reset_after):
            raise ValueError(f"nodes[{k}]['linear_before_reset']: expected {int(layer.reset_after)} for "
                             f"GRU(reset_after={layer.reset_after}), got {node['linear_before_reset']}")
        for d in range(layer.num_directions):
            sfx = _suffix(k, d)
            shape_ih = layer.params["weight_ih" + sfx].shape
            shape_hh = layer.params["weight_hh" + sfx].shape
            W = V.as_float_array(f"nodes[{k}]['W']", node["W"], layer.dtype)
            R = V.as_float_array(f"nodes[{k}]['R']", node["R"], layer.dtype)
            V.check_shape(f"nodes[{k}]['W']", W, (layer.num_directions,) + shape_ih)
            V.check_shape(f"nodes[{k}]['R']", R, (layer.num_directions,) + shape_hh)
            state["weight_ih" + sfx] = _reorder(W[d], inv, H)
            state["weight_hh" + sfx] = _reorder(R[d], inv, H)
            if layer.bias:
                B = V.as_float_array(f"nodes[{k}]['B']", node.get("B"), layer.dtype)
                V.check_shape(f"nodes[{k}]['B']", B, (layer.num_directions, 2 * shape_hh[0]))
                state["bias_ih" + sfx] = _reorder(B[d, :shape_hh[0]], inv, H)
                state["bias_hh" + sfx] = _reorder(B[d, shape_hh[0]:], inv, H)
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
