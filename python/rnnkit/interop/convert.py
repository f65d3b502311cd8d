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

from typing import Dict, List, Optional, Sequence

import numpy as np

from .. import _validate as V
from .._cells import (ACTIVATION_SLOTS, DEFAULT_ACTIVATIONS, DEFAULTS, DIRECTIONS, activation_keywords,
                      activation_name, activation_table, aligned_parameters)
from ..layers import GRU, LSTM, RNN, _RecurrentLayer

# Position in rnnkit's order of each gate in the other layout's order.
_ONNX_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "GRU_RESET_BEFORE": [1, 0, 2], "RNN_TANH": [0], "RNN_RELU": [0]}
_KERAS_ORDER = {"LSTM": [0, 1, 2, 3], "GRU": [1, 0, 2], "GRU_RESET_BEFORE": [1, 0, 2], "RNN_TANH": [0], "RNN_RELU": [0]}


def _check_convertible(layer: _RecurrentLayer, what: str) -> None:
    if not isinstance(layer, (RNN, LSTM, GRU)):
        raise TypeError(f"layer: expected an rnnkit RNN, LSTM or GRU ({what} has no LayerNorm, IndRNN or minGRU/minLSTM cells), got "
                        f"{type(layer).__name__}")
    if layer.proj_size:
        raise ValueError(f"layer: expected an LSTM without proj_size ({what} has no projection), got proj_size={layer.proj_size}")
    check_no_zoneout(layer, what)


def check_no_zoneout(layer: _RecurrentLayer, what: str, argument: str = "layer") -> None:
    """Zoneout changes eval mode's function too (p * previous + (1-p) * new state), which no ONNX or
    Keras layer computes; the dropouts draw no masks in eval mode and convert as they are. `argument`:
    the caller's name for the layer, in the message."""
    if layer.zoneout or layer.zoneout_cell:
        raise ValueError(f"{argument}: expected zoneout=0 and zoneout_cell=0 ({what} cannot express zoneout, which "
                         f"eval mode keeps: p * previous + (1-p) * new state), got zoneout={layer.zoneout}, "
                         f"zoneout_cell={layer.zoneout_cell}")


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
        node.update(_onnx_option_attributes(layer))
        if layer.peephole:
            node["P"] = np.stack([_reorder(layer.params["weight_peephole" + _suffix(k, d)].reshape(-1),
                                           _PEEPHOLE_ORDER, H) for d in range(layer.num_directions)])
        out.append(node)
    return out


# ONNX's peepholes P [D, 3H] are in the order (i, o, f); rnnkit's weight_peephole [3, H] (i, f, o).
_PEEPHOLE_ORDER = [0, 2, 1]


def _onnx_option_attributes(layer: _RecurrentLayer) -> Dict[str, object]:
    """The ONNX attributes of a layer's ONNX options, only those away from ONNX's defaults:
    ``activations`` (every direction's), ``activation_alpha``/``activation_beta`` (consumed in
    order by the activations that take them, as ONNX defines), ``clip``, ``input_forget``."""
    opts = _layer_options(layer)
    cell_class = type(layer).__name__
    attrs: Dict[str, object] = {}
    if opts["activations"] != DEFAULT_ACTIVATIONS[cell_class] * layer.num_directions:
        attrs["activations"] = list(opts["activations"])
        alphas = [a for a in opts["activation_alpha"] if a is not None]
        betas = [b for b in opts["activation_beta"] if b is not None]
        if alphas:
            attrs["activation_alpha"] = alphas
        if betas:
            attrs["activation_beta"] = betas
    if opts["clip"] is not None:
        attrs["clip"] = opts["clip"]
    if opts["coupled_gates"]:
        attrs["input_forget"] = 1
    return attrs


def _layer_options(layer: _RecurrentLayer) -> Dict[str, object]:
    """A layer's ONNX options in full: every direction's activation names, alpha and beta (None
    where the function takes none), clip, peephole, coupled_gates."""
    groups = layer.activations
    functions = [f for group in (tuple(groups) * layer.num_directions if len(groups) == 1 else groups) for f in group]
    names, alphas, betas = aligned_parameters(functions)
    return {"activations": names, "activation_alpha": alphas, "activation_beta": betas,
            "clip": layer.clip, "peephole": layer.peephole, "coupled_gates": layer.coupled_gates}


def _node_options(node: Dict[str, object], cell_class: str, num_directions: int) -> Dict[str, object]:
    """An ONNX node's options in _layer_options' form, ONNX's defaults applied (its default
    activations, ONNX Runtime's alpha/beta for those a node leaves out, no clip, no peepholes)."""
    table = activation_table()
    per = len(ACTIVATION_SLOTS[cell_class])
    if node.get("activations") is None:
        names = list(DEFAULT_ACTIVATIONS[cell_class]) * num_directions
    else:
        names = [activation_name(_onnx_text(a), "['activations']")
                 for a in np.asarray(node["activations"], dtype=object).reshape(-1)]
        if len(names) == per and num_directions == 2:
            names = names * 2
        if len(names) != per * num_directions:
            raise ValueError(f"['activations']: expected {per * num_directions} names ({per} per direction), "
                             f"got {len(names)}")
    alphas = [float(a) for a in np.asarray(node.get("activation_alpha", []), dtype=np.float64).reshape(-1)]
    betas = [float(b) for b in np.asarray(node.get("activation_beta", []), dtype=np.float64).reshape(-1)]
    alpha_list, beta_list = [], []
    for name in names:
        takes, default_alpha, default_beta = table[name]
        alpha_list.append((alphas.pop(0) if alphas else default_alpha) if takes >= 1 else None)
        beta_list.append((betas.pop(0) if betas else default_beta) if takes >= 2 else None)
    if alphas or betas:
        key = "activation_alpha" if alphas else "activation_beta"
        raise ValueError(f"[{key!r}]: expected one value per activation that takes it ({names}), got "
                         f"{len(alphas)} alpha(s) and {len(betas)} beta(s) more")
    clip = node.get("clip")
    return {"activations": tuple(names), "activation_alpha": tuple(alpha_list), "activation_beta": tuple(beta_list),
            "clip": None if clip is None else float(np.asarray(clip).reshape(())),
            "peephole": cell_class == "LSTM" and node.get("P") is not None and bool(np.any(np.asarray(node["P"]) != 0)),
            "coupled_gates": cell_class == "LSTM" and int(np.asarray(node.get("input_forget", 0)).reshape(())) != 0}


def onnx_layer_options(node: Dict[str, object], cell_class: str, num_directions: int) -> Dict[str, object]:
    """The layer keywords that represent an ONNX node's options (activations, activation_alpha,
    activation_beta, clip, peephole, coupled_gates; RNN's Relu as nonlinearity="relu"), only
    those away from the defaults: what ``rnnkit.onnx.load`` builds a layer with."""
    opts = _node_options(node, cell_class, num_directions)
    options: Dict[str, object] = {}
    names = opts["activations"]
    if cell_class == "RNN" and set(names) == {"Relu"}:
        options["nonlinearity"] = "relu"
    elif names != DEFAULT_ACTIVATIONS[cell_class] * num_directions:
        options.update(activation_keywords(names, opts["activation_alpha"], opts["activation_beta"]))
    for key in ("clip", "peephole", "coupled_gates"):
        if opts[key] not in (None, False):
            options[key] = opts[key]
    return options


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
    cell_class = type(layer).__name__
    try:
        wanted = _node_options(node, cell_class, layer.num_directions)
    except ValueError as exc:
        raise ValueError(f"{name}{exc}") from None
    have = _layer_options(layer)
    for key, value in wanted.items():
        if key == "peephole" and have[key] and not value:
            continue  # a peephole layer takes a node without P as zeros
        if _same_option(value, have[key]):
            continue
        onnx_key = {"peephole": "P", "coupled_gates": "input_forget"}.get(key, key)
        raise ValueError(f"{name}[{onnx_key!r}]: the node's {key} {value!r} (ONNX's defaults applied) does not match "
                         f"this {cell_class}'s {have[key]!r}: make the layer with {key}={value!r}")


def _same_option(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same_option(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.float32(a) == np.float32(b))  # ONNX keeps attributes as float32
    return a == b


def from_onnx(layer: _RecurrentLayer, nodes: Sequence[Dict[str, np.ndarray]]) -> None:
    """Loads per-layer ONNX nodes ``{"W", "R", "B"}`` plus any of their attributes (as made by
    ``to_onnx``, or read off an ONNX model) into ``layer``. ONNX's defaults apply to what a node
    leaves out: an absent ``B`` is zero biases, an absent ``linear_before_reset`` is 0, an absent
    ``direction`` "forward", an absent ``P`` zero peepholes. A node whose options the layer does not
    have (another direction or hidden size, nonzero biases for a ``bias=False`` layer, another
    clip, peepholes, coupled gates or activations) is refused with a message saying what to
    change; nothing is loaded then."""
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
        if layer.peephole:
            Pn = np.zeros((layer.num_directions, 3 * H), layer.dtype) if node.get("P") is None else \
                V.as_float_array(f"nodes[{k}]['P']", node["P"], layer.dtype)
            V.check_shape(f"nodes[{k}]['P']", Pn, (layer.num_directions, 3 * H))
            for d in range(layer.num_directions):
                state["weight_peephole" + _suffix(k, d)] = _reorder(Pn[d], _inverse(_PEEPHOLE_ORDER), H).reshape(3, H)
        if not layer.bias and B is not None and np.any(B != 0):
            raise ValueError(f"nodes[{k}]['B']: expected none or zeros for a layer with bias=False (it has no biases "
                             "to load them into: make the layer with bias=True), got nonzero biases")
    layer.load_state_dict(state)


# ---- Keras --------------------------------------------------------------------------------------
def _keras_activation_table(keras_version: int) -> Dict[str, tuple]:
    """Keras' activation names -> ONNX's (name, alpha, beta). ``hard_sigmoid`` and ``leaky_relu``
    changed in Keras 3: relu6(x + 3) / 6 = clip(x/6 + 1/2) and slope 0.2, where tf.keras 2 had
    clip(0.2 x + 1/2) and slope 0.3."""
    if keras_version not in (2, 3):
        raise ValueError(f"keras_version: expected 2 (tf.keras) or 3, got {keras_version!r}")
    v3 = keras_version == 3
    return {"tanh": ("Tanh", 0.0, 0.0), "sigmoid": ("Sigmoid", 0.0, 0.0), "relu": ("Relu", 0.0, 0.0),
            "linear": ("Affine", 1.0, 0.0), "softsign": ("Softsign", 0.0, 0.0), "softplus": ("Softplus", 0.0, 0.0),
            "elu": ("Elu", 1.0, 0.0), "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0 if v3 else 0.2, 0.5),
            "leaky_relu": ("LeakyRelu", 0.2 if v3 else 0.3, 0.0)}


# Keras' activation slots in ONNX's order per cell: (f, g, h) LSTM, (f, g) GRU, (f) SimpleRNN.
_KERAS_SLOTS = {"LSTM": ("recurrent_activation", "activation", "activation"),
                "GRU": ("recurrent_activation", "activation"), "RNN": ("activation",)}
_KERAS_DEFAULTS = {"activation": "tanh", "recurrent_activation": "sigmoid"}


def keras_layer_options(config: Dict[str, object], cell: str, keras_version: int = 3) -> Dict[str, object]:
    """The rnnkit keywords of a Keras SimpleRNN/LSTM/GRU layer's ``get_config()`` (its
    ``activation``, ``recurrent_activation``, ``use_bias``, GRU ``reset_after``): ``rnnkit.LSTM(C,
    H, **keras_layer_options(cfg, "LSTM"))`` computes what the Keras layer does, its weights then
    loaded with ``from_keras``. ``cell``: "RNN" (SimpleRNN), "LSTM" or "GRU"; ``keras_version``: 3, or
    2 for tf.keras (their ``hard_sigmoid`` differ). An activation ONNX's set cannot express is
    refused, naming it."""
    cell = "RNN" if cell == "SimpleRNN" else cell
    if cell not in _KERAS_SLOTS:
        raise ValueError(f"cell: expected 'RNN' (SimpleRNN), 'LSTM' or 'GRU', got {cell!r}")
    table = _keras_activation_table(keras_version)
    functions = []
    for key in _KERAS_SLOTS[cell]:
        name = config.get(key, _KERAS_DEFAULTS[key])
        if not isinstance(name, str) or name not in table:
            raise ValueError(f"config[{key!r}]: expected one of {sorted(table)} (Keras activations ONNX's set has), "
                             f"got {name!r}")
        functions.append(table[name])
    options: Dict[str, object] = {"bias": bool(config.get("use_bias", True))}
    if cell == "GRU":
        options["reset_after"] = bool(config.get("reset_after", True))
    options.update(_activation_keywords_off_default(functions, cell))
    return options


def _activation_keywords_off_default(functions, cell: str) -> Dict[str, object]:
    """activation_keywords of one direction's (name, alpha, beta) functions, {} when they are the
    cell's default ones."""
    names, alphas, betas = aligned_parameters(functions)
    return {} if names == DEFAULT_ACTIVATIONS[cell] else activation_keywords(names, alphas, betas)


def keras_activation_config(layer: _RecurrentLayer, keras_version: int = 3) -> Dict[str, str]:
    """The Keras ``activation``/``recurrent_activation`` config of a layer's activations (the
    inverse of ``keras_layer_options``); refused when Keras has no such activation or the two
    directions differ."""
    _check_keras_options(layer)
    cell = type(layer).__name__
    table = _keras_activation_table(keras_version)
    (functions,) = layer.activations[:1]
    config: Dict[str, str] = {}
    for key, (name, alpha, beta) in zip(_KERAS_SLOTS[cell], functions):
        takes = activation_table()[name][0]
        match = [k for k, (n, a, b) in table.items()
                 if n == name and (takes < 1 or np.isclose(a, alpha)) and (takes < 2 or np.isclose(b, beta))]
        if not match:
            raise ValueError(f"layer: its {name}(alpha={alpha}, beta={beta}) has no Keras {keras_version} activation")
        if key in config and config[key] != match[0]:
            raise ValueError(f"layer: Keras has one {key} for g and h, this layer has {config[key]!r} and {match[0]!r}")
        config[key] = match[0]
    return config


def _check_keras_options(layer: _RecurrentLayer) -> None:
    """Refuses ONNX options Keras' layers do not have."""
    for key in ("clip", "peephole", "coupled_gates"):
        if getattr(layer, key) not in (None, False):
            raise ValueError(f"layer: expected {key}={DEFAULTS[key]!r} (Keras' layers have no {key}), got "
                             f"{getattr(layer, key)!r}")
    if len(layer.activations) > 1 and layer.activations[0] != layer.activations[1]:
        raise ValueError("layer: expected one set of activations for both directions (Keras' Bidirectional wraps "
                         "one layer), got two")


def to_keras(layer: _RecurrentLayer) -> List[List[np.ndarray]]:
    """Per layer and direction (rnnkit's group order: l0, l0_reverse, l1, ...), the arrays of a
    Keras SimpleRNN/LSTM/GRU layer's ``get_weights()``: ``[kernel, recurrent_kernel, bias]``
    (no bias for bias=False)."""
    _check_convertible(layer, "Keras")
    _check_keras_options(layer)
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


def from_keras(layer: _RecurrentLayer, groups: Sequence[Sequence[np.ndarray]],
               config: Optional[Dict[str, object]] = None, keras_version: int = 3) -> None:
    """Loads Keras ``get_weights()`` lists (one per layer and direction, as made by
    ``to_keras``) into ``layer``. A single Keras bias goes to ``bias_ih`` (``bias_hh`` = 0). With
    the Keras layer's ``get_config()`` as ``config``, its activations (and ``use_bias``,
    ``reset_after``) are checked against the layer's first: a mismatch is refused, saying what to
    make the layer with (``keras_layer_options`` gives every keyword)."""
    _check_convertible(layer, "Keras")
    _check_keras_options(layer)
    if config is not None:
        cell = type(layer).__name__
        wanted = keras_layer_options(config, cell, keras_version)
        have: Dict[str, object] = {"bias": layer.bias}
        if cell == "GRU":
            have["reset_after"] = layer.reset_after
        have.update(_activation_keywords_off_default(layer.activations[0], cell))
        for key in ("activations", "activation_alpha", "activation_beta", "bias", "reset_after"):
            if not _same_option(wanted.get(key), have.get(key)):
                raise ValueError(f"config: the Keras layer's {key} {wanted.get(key, DEFAULTS[key])!r} does not match "
                                 f"this {cell}'s {have.get(key, DEFAULTS[key])!r}: make the layer with "
                                 f"{key}={wanted.get(key, DEFAULTS[key])!r} (keras_layer_options gives them all)")
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
