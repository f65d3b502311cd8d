"""The cells and the layer classes, in one table.

Every place that names a cell or builds a layer class reads it from here: rnnkit's NumPy layers
(``rnnkit.RNN`` ...), the PyTorch bridge's modules (``rnnkit.torch.RNN`` ...), ``RNNNetwork(cell=...)``
and ``rnnkit train --cell``. A cell has one name (``"ln_lstm"``); the compiled module's ``mode``
(PyTorch's spelling, ``"LN_LSTM"``) is that name in upper case, and the class that builds it
(``LayerNormLSTM``) is in its row.

A layer class is described once (its PyTorch-style positional parameters, its own keyword
options, its docstring) and each family builds its class from that description
(``make_layer_class``), so the two families cannot drift apart. ``StackOptions`` validates the
constructor options every stack shares, for both families.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from . import _validate as V
from .train import init as _init


@dataclass(frozen=True)
class Cell:
    """One recurrent cell: its name, and the layer class and class options that select it."""

    name: str                                  # the one spelling (RNNNetwork(cell=...), --cell)
    layer: str                                 # the class that builds it
    options: Mapping[str, Any] = field(default_factory=dict)  # its class options (nonlinearity, reset_after)

    @property
    def mode(self) -> str:
        """PyTorch's ``mode`` spelling of the cell (``"LSTM"``, ``"RNN_TANH"``): the compiled
        module's StackConfig takes it."""
        return self.name.upper()


CELLS: Dict[str, Cell] = {c.name: c for c in (
    Cell("rnn_tanh", "RNN", {"nonlinearity": "tanh"}),
    Cell("rnn_relu", "RNN", {"nonlinearity": "relu"}),
    Cell("lstm", "LSTM"),
    Cell("gru", "GRU", {"reset_after": True}),
    Cell("gru_reset_before", "GRU", {"reset_after": False}),
    Cell("ln_lstm", "LayerNormLSTM"),
    Cell("ln_gru", "LayerNormGRU"),
    Cell("indrnn", "IndRNN", {"nonlinearity": "relu"}),
    Cell("indrnn_tanh", "IndRNN", {"nonlinearity": "tanh"}),
    Cell("mingru", "MinGRU"),
    Cell("minlstm", "MinLSTM"),
)}
CELL_NAMES: Tuple[str, ...] = tuple(CELLS)

# Defaults of every constructor parameter any layer class has (PyTorch's where PyTorch has them).
DEFAULTS: Dict[str, Any] = {
    "num_layers": 1, "nonlinearity": "tanh", "bias": True, "batch_first": False, "dropout": 0.0,
    "bidirectional": False, "proj_size": 0, "reset_after": True, "forget_bias": None,
    "init": "default", "init_gain": 1.0, "precision": "float32", "direction": None,
    "activations": None, "activation_alpha": None, "activation_beta": None, "clip": None,
    "peephole": False, "coupled_gates": False, "recurrent_max_abs": None, "weight_dropout": 0.0,
    "zoneout": 0.0, "zoneout_cell": 0.0, "input_dropout": 0.0, "recurrent_dropout": 0.0,
}

#: The recurrent regularisers every layer class takes (keyword-only; README, "Recurrent regularisation").
REGULARISERS: Tuple[str, ...] = ("weight_dropout", "zoneout", "zoneout_cell", "input_dropout", "recurrent_dropout")

#: The directions (``direction=``), ONNX's names: ``bidirectional=True`` is a synonym of the last.
DIRECTIONS: Tuple[str, ...] = ("forward", "reverse", "bidirectional")

#: The GEMM precisions (``precision=``): float32, or bfloat16 operands with float32 sums.
PRECISIONS: Tuple[str, ...] = ("float32", "bfloat16")

#: ONNX's options beyond PyTorch's, per layer class (keyword-only; the LayerNorm cells take none).
ONNX_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "RNN": ("activations", "activation_alpha", "activation_beta", "clip"),
    "GRU": ("activations", "activation_alpha", "activation_beta", "clip"),
    "LSTM": ("activations", "activation_alpha", "activation_beta", "clip", "peephole", "coupled_gates"),
}
#: Activations per direction, as ONNX orders them.
ACTIVATION_SLOTS: Dict[str, Tuple[str, ...]] = {"RNN": ("f",), "GRU": ("f", "g"), "LSTM": ("f", "g", "h")}
#: Each class's default activations (ONNX's defaults; RNN with nonlinearity="relu": Relu).
DEFAULT_ACTIVATIONS: Dict[str, Tuple[str, ...]] = {
    "RNN": ("Tanh",), "GRU": ("Sigmoid", "Tanh"), "LSTM": ("Sigmoid", "Tanh", "Tanh")}


def activation_table() -> Dict[str, Tuple[int, float, float]]:
    """ONNX's activation functions: name -> (parameters taken: 0, 1 alpha, 2 alpha and beta;
    ONNX Runtime's default alpha, beta), from the compiled module's one table."""
    from . import _core
    return {name: (int(n), float(a), float(b)) for name, n, a, b in _core.activations()}


def activation_name(name: Any, what: str = "activations") -> str:
    """ONNX's spelling of an activation name given in any case, with or without underscores
    (``"hard_sigmoid"``, ``"HardSigmoid"``, ``"hardsigmoid"``)."""
    table = activation_table()
    if not isinstance(name, str):
        raise TypeError(f"{what}: expected names among {list(table)}, got {type(name).__name__} {name!r}")
    key = name.replace("_", "").lower()
    for onnx_name in table:
        if onnx_name.lower() == key:
            return onnx_name
    raise ValueError(f"{what}: expected names among {list(table)}, got {name!r}")


@dataclass(frozen=True)
class OnnxOptions:
    """A layer's ONNX options, validated: activations (one tuple per direction, each with its
    (name, alpha, beta)), clip, peephole, coupled_gates; ``spec`` is the compiled module's string
    form ('' when every option is the cell's default)."""

    activations: Tuple[Tuple[Tuple[str, float, float], ...], ...]
    clip: Optional[float]
    peephole: bool
    coupled_gates: bool
    spec: str


def aligned_parameters(functions: Sequence[Tuple[str, float, float]]) -> Tuple[Tuple[Any, ...], ...]:
    """(name, alpha, beta) triples as three aligned tuples: the names, the alphas and the betas,
    None where the function takes no such parameter (the constructor's form)."""
    table = activation_table()
    return (tuple(n for n, _, _ in functions),
            tuple(a if table[n][0] >= 1 else None for n, a, _ in functions),
            tuple(b if table[n][0] >= 2 else None for n, _, b in functions))


def activation_keywords(names: Sequence[str], alphas: Sequence[Optional[float]],
                        betas: Sequence[Optional[float]]) -> Dict[str, Any]:
    """The constructor keywords of aligned activations: activations=, and activation_alpha= /
    activation_beta= only where some function takes one."""
    out: Dict[str, Any] = {"activations": tuple(names)}
    if any(v is not None for v in alphas):
        out["activation_alpha"] = tuple(alphas)
    if any(v is not None for v in betas):
        out["activation_beta"] = tuple(betas)
    return out


def onnx_keywords(layer: Any) -> Dict[str, Any]:
    """A layer's ONNX options as the constructor keywords that make them (only those away from
    the defaults; lists, JSON-serialisable): what RNNNetwork.config() and rnnkit.onnx.load pass on."""
    out: Dict[str, Any] = {}
    if "act=" in layer._cell_options:
        functions = [f for group in layer.activations for f in group]
        out.update({k: list(v) for k, v in activation_keywords(*aligned_parameters(functions)).items()})
    for key in ("clip", "peephole", "coupled_gates"):
        if getattr(layer, key) not in (None, False):
            out[key] = getattr(layer, key)
    return out


def onnx_attributes(spec: str, num_directions: int) -> Dict[str, Any]:
    """The ONNX node attributes (activations for every direction, activation_alpha/activation_beta
    consumed in order, clip, input_forget) and ``peephole`` (whether the node takes P) of a cell
    options string as ``check_onnx_options`` writes it; {} for ''. The inverse of that writer, kept
    beside it."""
    out: Dict[str, Any] = {}
    if not spec:
        return out
    table = activation_table()
    for item in spec.split(";"):
        key, _, value = item.partition("=")
        if key == "act":
            groups = [[f.split(":") for f in g.split(",")] for g in value.split("|")]
            if len(groups) == 1:
                groups = groups * num_directions
            functions = [f for g in groups for f in g]
            out["activations"] = [f[0] for f in functions]
            alphas = [float(f[1]) if len(f) > 1 else table[f[0]][1] for f in functions if table[f[0]][0] >= 1]
            betas = [float(f[2]) if len(f) > 2 else table[f[0]][2] for f in functions if table[f[0]][0] >= 2]
            if alphas:
                out["activation_alpha"] = alphas
            if betas:
                out["activation_beta"] = betas
        elif key == "clip":
            out["clip"] = float(value)
        elif key == "coupled":
            out["input_forget"] = 1
        elif key == "peephole":
            out["peephole"] = True
    return out


def _param_list(name: str, value: Any, count: int) -> Tuple[Optional[float], ...]:
    if value is None:
        return (None,) * count
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name}: expected a sequence with one number (or None) per activation, got "
                        f"{type(value).__name__} {value!r}")
    if len(value) != count:
        raise ValueError(f"{name}: expected {count} entries (one per activation, None where unused), got {len(value)}")
    return tuple(None if v is None else V.check_float(f"{name}[{i}]", v) for i, v in enumerate(value))


def check_onnx_options(spec: "LayerClass", options: Mapping[str, Any], num_directions: int,
                       proj_size: int) -> OnnxOptions:
    """Validates a layer's ONNX options (``ONNX_OPTIONS``) against its class and directions."""
    keys = ONNX_OPTIONS.get(spec.name, ())
    slots = ACTIVATION_SLOTS.get(spec.name, ())
    acts = options.get("activations") if "activations" in keys else None
    alpha = options.get("activation_alpha") if "activation_alpha" in keys else None
    beta = options.get("activation_beta") if "activation_beta" in keys else None
    table = activation_table()
    if acts is None:
        if alpha is not None or beta is not None:
            raise ValueError("activation_alpha/activation_beta: expected None without activations= (they go with "
                             "named activations), got " + repr(alpha if alpha is not None else beta))
        default = DEFAULT_ACTIVATIONS.get(spec.name, ())
        if spec.name == "RNN" and options.get("nonlinearity") == "relu":
            default = ("Relu",)
        names: Tuple[str, ...] = default
    else:
        if isinstance(acts, str) or not hasattr(acts, "__len__"):
            raise TypeError(f"activations: expected a sequence of names ({', '.join(slots)} as ONNX orders them), "
                            f"got {type(acts).__name__} {acts!r}")
        names = tuple(activation_name(a) for a in acts)
        allowed = (len(slots), 2 * len(slots)) if num_directions == 2 else (len(slots),)
        if len(names) not in allowed:
            per = f"{len(slots)} ({', '.join(slots)})"
            want = per + (f", or {2 * len(slots)} (forward's, then reverse's)" if num_directions == 2 else "")
            raise ValueError(f"activations: expected {want} for {spec.name}, got {len(names)}")
        if spec.name == "RNN" and options.get("nonlinearity") != "tanh":
            raise ValueError("nonlinearity: expected the default 'tanh' with activations= (name the activation "
                             f"there), got {options.get('nonlinearity')!r}")
    alphas = _param_list("activation_alpha", alpha, len(names))
    betas = _param_list("activation_beta", beta, len(names))
    resolved = []
    for i, name in enumerate(names):
        takes, default_alpha, default_beta = table[name]
        if alphas[i] is not None and takes < 1:
            raise ValueError(f"activation_alpha[{i}]: expected None for {name} (it takes no alpha), got {alphas[i]}")
        if betas[i] is not None and takes < 2:
            raise ValueError(f"activation_beta[{i}]: expected None for {name} (it takes no beta), got {betas[i]}")
        resolved.append((name, default_alpha if alphas[i] is None else alphas[i],
                         default_beta if betas[i] is None else betas[i]))
    per_direction = len(slots) or 1
    groups = tuple(tuple(resolved[i:i + per_direction]) for i in range(0, len(resolved), per_direction)) if slots else ()
    clip = options.get("clip") if "clip" in keys else None
    if clip is not None:
        clip = V.check_positive_float("clip", clip)
    peephole = V.check_bool("peephole", options.get("peephole", False)) if "peephole" in keys else False
    coupled = V.check_bool("coupled_gates", options.get("coupled_gates", False)) if "coupled_gates" in keys else False
    if coupled and proj_size:
        raise ValueError(f"coupled_gates: expected False with a projection (proj_size={proj_size}), got True")
    parts = []
    if acts is not None:
        def one(name: str, a: float, b: float) -> str:
            takes = table[name][0]
            return name + "".join(f":{v!r}" for v in (a, b)[:takes])
        parts.append("act=" + "|".join(",".join(one(*f) for f in g) for g in groups))
    if clip is not None:
        parts.append(f"clip={clip!r}")
    if peephole:
        parts.append("peephole=1")
    if coupled:
        parts.append("coupled=1")
    return OnnxOptions(groups, clip, peephole, coupled, ";".join(parts))


@dataclass(frozen=True)
class LayerClass:
    """One public layer class, as both families build it.

    ``positional``: the parameters after ``input_size, hidden_size``, in PyTorch's order;
    ``keyword``: the class's own keyword-only options; ``doc``: the cell math and parameters.
    """

    name: str
    positional: Tuple[str, ...]
    keyword: Tuple[str, ...]
    doc: str
    defaults: Mapping[str, Any] = field(default_factory=dict)  # this class's own, over DEFAULTS

    def default(self, name: str) -> Any:
        return self.defaults.get(name, DEFAULTS[name])

    @property
    def cells(self) -> Tuple[Cell, ...]:
        return tuple(c for c in CELLS.values() if c.layer == self.name)

    @property
    def has_cell_state(self) -> bool:
        return self.name in ("LSTM", "LayerNormLSTM")

    def check_options(self, options: Mapping[str, Any]) -> Dict[str, Any]:
        """The class options that select the cell, validated (choices from the cells' rows)."""
        checked: Dict[str, Any] = {}
        for key in self.cells[0].options:
            choices = tuple(dict.fromkeys(c.options[key] for c in self.cells))
            value = options[key]
            if isinstance(choices[0], bool):
                checked[key] = V.check_bool(key, value)
            else:
                checked[key] = V.check_choice(key, value, choices)
        return checked

    def cell(self, options: Mapping[str, Any]) -> Cell:
        """The cell these (checked) class options select."""
        return next(c for c in self.cells if all(options[k] == v for k, v in c.options.items()))

    def signature(self, family: "Family") -> inspect.Signature:
        P = inspect.Parameter
        params = [P("self", P.POSITIONAL_OR_KEYWORD)]
        params += [P(n, P.POSITIONAL_OR_KEYWORD) for n in ("input_size", "hidden_size")]
        params += [P(n, P.POSITIONAL_OR_KEYWORD, default=self.default(n)) for n in self.positional]
        params += [P(n, P.POSITIONAL_OR_KEYWORD, default=d) for n, d in family.positional]
        keyword = [(n, d) for n, d in family.keyword] + [(n, self.default(n)) for n in ("init", "init_gain", "precision", "direction", *REGULARISERS,
                                                                   *self.keyword)]
        params += [P(n, P.KEYWORD_ONLY, default=d) for n, d in keyword]
        return inspect.Signature(params)

    def nondefault_options(self, options: Mapping[str, Any]) -> Tuple[str, ...]:
        """``key=value`` for each cell-selecting option away from its default (for reprs)."""
        return tuple(f"{k}={options[k]!r}" for k in self.cells[0].options if options[k] != self.default(k))


_LN_DEF = ("``LN(v; ln) = ln_weight * (v - mean(v)) / sqrt(var(v) + 1e-5) + ln_bias`` over the whole "
           "row (biased variance, as torch.nn.LayerNorm)")

LAYER_CLASSES: Dict[str, LayerClass] = {c.name: c for c in (
    LayerClass(
        "RNN", ("num_layers", "nonlinearity", "bias", "batch_first", "dropout", "bidirectional"), ONNX_OPTIONS["RNN"],
        """Elman RNN: ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``, act = tanh or relu.

        Parameters per layer ``k`` (``_reverse`` for the second direction): ``weight_ih_l{k} [H, C_k]``,
        ``weight_hh_l{k} [H, H]``, ``bias_ih_l{k} [H]``, ``bias_hh_l{k} [H]``. ``init="identity"``
        with ``nonlinearity="relu"`` is the IRNN recipe.
        """),
    LayerClass(
        "LSTM", ("num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size"),
        ("forget_bias",) + ONNX_OPTIONS["LSTM"],
        """Long short-term memory, PyTorch's gate order (i, f, g, o)::

            i, f, o = sigmoid(.), g = tanh(.)  of  x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
            c_t = f * c_{t-1} + i * g
            h_t = o * tanh(c_t)            (with proj_size: h_t = (o * tanh(c_t)) W_hr^T)

        Parameters per layer: ``weight_ih_l{k} [4H, C_k]``, ``weight_hh_l{k} [4H, P]``,
        ``bias_ih_l{k}``, ``bias_hh_l{k} [4H]``, and ``weight_hr_l{k} [P, H]`` with a projection.
        ``forget_bias`` sets the forget gate's total bias (1.0 is the usual choice). The state is
        a tuple ``(h, c)``.
        """),
    LayerClass(
        "GRU", ("num_layers", "bias", "batch_first", "dropout", "bidirectional"), ("reset_after",) + ONNX_OPTIONS["GRU"],
        """Gated recurrent unit, gate order (r, z, n)::

            r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr),  z likewise
            reset_after=True  (PyTorch, cuDNN; ONNX linear_before_reset=1):
                n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
            reset_after=False (the original GRU; ONNX linear_before_reset=0):
                n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn)
            h_t = (1 - z) * n + z * h_{t-1}

        Parameters as ``torch.nn.GRU``: ``weight_ih_l{k} [3H, C_k]``, ``weight_hh_l{k} [3H, H]``,
        ``bias_ih_l{k}``, ``bias_hh_l{k} [3H]``.
        """),
    LayerClass(
        "LayerNormLSTM", ("num_layers", "bias", "batch_first", "dropout", "bidirectional"), ("forget_bias",),
        f"""LSTM with layer normalisation inside the cell (Ba, Kiros & Hinton 2016)::

            [i, f, g, o] = LN(x_t W_ih^T; ln_ih) + LN(h_{{t-1}} W_hh^T; ln_hh) + b_ih + b_hh
            c_t = sigmoid(f) * c_{{t-1}} + sigmoid(i) * tanh(g)
            h_t = sigmoid(o) * tanh(LN(c_t; ln_c))

        where {_LN_DEF}: all 4H gate pre-activations for ln_ih/ln_hh, the H cell values for ln_c.
        Parameters: those of ``LSTM`` (no projection) plus, per layer, ``ln_ih_weight_l{{k}}``,
        ``ln_ih_bias_l{{k}}``, ``ln_hh_weight_l{{k}}``, ``ln_hh_bias_l{{k}}`` [4H] and
        ``ln_c_weight_l{{k}}``, ``ln_c_bias_l{{k}}`` [H] (gains start at 1, biases at 0; rnnkit's names,
        PyTorch has no such cell).
        """),
    LayerClass(
        "LayerNormGRU", ("num_layers", "bias", "batch_first", "dropout", "bidirectional"), (),
        f"""GRU (reset_after flavour) with layer normalisation inside the cell::

            ax = LN(x_t W_ih^T; ln_ih) + b_ih,   ah = LN(h_{{t-1}} W_hh^T; ln_hh) + b_hh
            r = sigmoid(ax_r + ah_r),  z = sigmoid(ax_z + ah_z),  n = tanh(ax_n + r * ah_n)
            h_t = (1 - z) * n + z * h_{{t-1}}

        where {_LN_DEF}, over all 3H values of a row. Parameters: those of ``GRU`` plus
        ``ln_ih_weight_l{{k}}``, ``ln_ih_bias_l{{k}}``, ``ln_hh_weight_l{{k}}``, ``ln_hh_bias_l{{k}}`` [3H].
        """),
    LayerClass(
        "IndRNN", ("num_layers", "nonlinearity", "bias", "batch_first", "dropout", "bidirectional"),
        ("recurrent_max_abs",),
        """Independently recurrent network (Li et al. 2018, "IndRNN")::

            h_t = act(x_t W_ih^T + b_ih + b_hh + u * h_{t-1}),   act = relu (the paper's) or tanh

        with one recurrent weight per unit: ``u`` is the parameter ``weight_hh_l{k} [H]`` (a vector,
        not PyTorch's ``[H, H]``), initialised uniformly in [0, 1). Other parameters as ``RNN``.
        ``recurrent_max_abs=r`` keeps ``|u| <= r`` (the paper's constraint, which bounds how fast a
        unit's memory can grow): it is applied at initialisation and after every
        ``rnnkit.optim`` step (``clamp_recurrent()`` does it by hand: after a torch optimizer's step
        for the ``rnnkit.torch`` module). No recurrent GEMM runs: the
        cell applies ``u`` itself, so a step costs O(N*H) after the input projection.
        """, {"nonlinearity": "relu"}),
    LayerClass(
        "MinGRU", ("num_layers", "bias", "batch_first", "dropout", "bidirectional"), (),
        """minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): the gates read x_t only::

            z = sigmoid(x_t W_z^T + b_z),   h~ = g(x_t W_h^T + b_h)
            h_t = (1 - z) * h_{t-1} + z * h~,   g(v) = v + 1/2 (v >= 0), sigmoid(v) (v < 0)

        (g: the paper's positive candidate, which its log-space parallel form needs). Parameters
        per layer: ``weight_ih_l{k} [2H, C_k]`` (rows z, then h~) and ``bias_ih_l{k} [2H]``: no
        recurrent weight, so the only GEMM is the input projection over all T*N rows and each step
        is elementwise.
        """),
    LayerClass(
        "MinLSTM", ("num_layers", "bias", "batch_first", "dropout", "bidirectional"), (),
        """minLSTM (Feng et al. 2024): the gates read x_t only::

            f, i = sigmoid(x_t W_f^T + b_f), sigmoid(x_t W_i^T + b_i),   h~ = g(x_t W_h^T + b_h)
            h_t = (f * h_{t-1} + i * h~) / (f + i)

        (the paper's normalised gates f' = f/(f+i), i' = i/(f+i); g as in ``MinGRU``). Parameters:
        ``weight_ih_l{k} [3H, C_k]`` (rows f, i, h~) and ``bias_ih_l{k} [3H]``. No cell state: the
        state is h alone.
        """),
)}


@dataclass(frozen=True)
class Family:
    """What one family of classes adds to every class: its own positional parameters (after
    PyTorch's), its keyword-only options, and a paragraph for the docstrings."""

    positional: Tuple[Tuple[str, Any], ...]
    keyword: Tuple[Tuple[str, Any], ...]
    doc: str


def make_layer_class(spec: LayerClass, base: type, family: Family, module: str) -> type:
    """The class ``spec.name`` of a family: ``base`` does the work; its ``_init_stack(spec, cell,
    options)`` receives the bound, defaulted constructor arguments."""
    sig = spec.signature(family)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{spec.name}(): {exc}") from None
        bound.apply_defaults()
        options = dict(bound.arguments)
        del options["self"]
        options.update(spec.check_options(options))
        self._init_stack(spec, spec.cell(options), options)

    __init__.__signature__ = sig  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{spec.name}.__init__"
    doc = inspect.cleandoc(spec.doc) + "\n\n" + family.doc
    return type(spec.name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": module,
                                     "__qualname__": spec.name, "_layer_class": spec})


class StackOptions:
    """The constructor options every recurrent stack shares -- rnnkit's layers and the PyTorch
    bridge's modules -- validated in one place, with the sizes derived from them."""

    _has_cell_state = False

    def _set_stack_options(self, spec: LayerClass, cell: Cell, options: Mapping[str, Any]) -> None:
        self.cell = cell.name
        self.mode = cell.mode
        self._has_cell_state = spec.has_cell_state
        for key in spec.cells[0].options:  # nonlinearity, reset_after: attributes, as in PyTorch
            setattr(self, key, options[key])
        self.input_size = V.check_size("input_size", options["input_size"])
        self.hidden_size = V.check_size("hidden_size", options["hidden_size"])
        self.num_layers = V.check_size("num_layers", options["num_layers"])
        self.bias = V.check_bool("bias", options["bias"])
        self.batch_first = V.check_bool("batch_first", options["batch_first"])
        self.dropout = V.check_probability("dropout", options["dropout"])
        bidirectional = V.check_bool("bidirectional", options["bidirectional"])
        direction = options.get("direction")
        if direction is None:
            direction = "bidirectional" if bidirectional else "forward"
        direction = V.check_choice("direction", direction, DIRECTIONS)
        if bidirectional and direction != "bidirectional":
            raise ValueError(f"direction: expected 'bidirectional' (or None) with bidirectional=True, got {direction!r}")
        #: "forward", "reverse" (one direction, t = T-1 ... 0) or "bidirectional".
        self.direction = direction
        self.bidirectional = direction == "bidirectional"
        self.proj_size = V.check_non_negative("proj_size", options.get("proj_size", 0))
        if self.proj_size and self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size: expected less than hidden_size ({self.hidden_size}), got {self.proj_size}")
        self.init = options["init"]
        self._scheme = _init.parse_scheme(self.init)
        self.init_gain = V.check_positive_float("init_gain", options["init_gain"])
        #: "float32", or "bfloat16": every GEMM rounds its operands to bfloat16 and sums in float32;
        #: parameters, gradients, states and the cell math stay float32.
        self.precision = V.check_choice("precision", options["precision"], PRECISIONS)
        #: ONNX's options (``ONNX_OPTIONS``): each direction's activations as (name, alpha, beta)
        #: tuples, clip (None: none), peephole, coupled_gates.
        onnx_options = check_onnx_options(spec, options, self.num_directions, self.proj_size)
        self.activations = onnx_options.activations
        self.clip = onnx_options.clip
        self.peephole = onnx_options.peephole
        self.coupled_gates = onnx_options.coupled_gates
        self._cell_options = onnx_options.spec  # plain values only: a module pickles under weights_only
        p: Dict[str, float] = {}
        for key in REGULARISERS:
            p[key] = V.check_probability(key, options.get(key, 0.0))
            if p[key] >= 1.0:
                raise ValueError(f"{key}: expected a probability in [0, 1), got {p[key]}")
        # The masks come from ``dropout_rng`` (one seed per training forward); eval mode draws none.
        #: DropConnect on the recurrent weights (AWD-LSTM's weight drop): in training, one mask on
        #: W_hh per forward call, the kept weights scaled by 1/(1-p).
        self.weight_dropout = p["weight_dropout"]
        #: Zoneout of h (of an LSTM's c): in training each unit keeps its previous value with
        #: probability p, a new mask every step; in eval mode p * previous + (1-p) * new.
        self.zoneout = p["zoneout"]
        self.zoneout_cell = p["zoneout_cell"]
        #: Variational dropout: one mask per sequence for all steps, on every layer's input and on
        #: h_{t-1} where it enters W_hh; training only.
        self.input_dropout = p["input_dropout"]
        self.recurrent_dropout = p["recurrent_dropout"]
        if self.zoneout_cell > 0 and not spec.has_cell_state:
            raise ValueError(f"zoneout_cell: expected 0 for {spec.name} (it has no cell state; zoneout= is h's), "
                             f"got {self.zoneout_cell}")
        rma = options.get("recurrent_max_abs")
        #: IndRNN: the bound on |u| kept after every update (None: none).
        self.recurrent_max_abs = None if rma is None else V.check_positive_float("recurrent_max_abs", rma)
        forget_bias = options.get("forget_bias")
        self.forget_bias = None if forget_bias is None else V.check_float("forget_bias", forget_bias)
        if self.forget_bias is not None and not self.bias:
            raise ValueError("forget_bias: expected None when bias=False (there is no bias to set), got "
                             f"{self.forget_bias}")
        if self.dropout > 0 and self.num_layers == 1:
            # PyTorch's warning, word for word; it points at the user's constructor call.
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                f"expects num_layers greater than 1, but got dropout={self.dropout} and num_layers=1",
                UserWarning, stacklevel=4,
            )

    def _config_args(self, dropout: float, precision: Optional[str] = None, eval_mode: bool = False) -> Tuple[Any, ...]:
        """The compiled module's StackConfig arguments, in order, with this dropout between layers
        (a call may run without its layer's) and precision (None: the layer's; autocast may ask
        another). eval_mode: for a training forward of a module in eval mode (gradients wanted):
        no masks of any kind, zoneout's expectation."""
        drops = (0.0, 0.0, 0.0) if eval_mode else (self.weight_dropout, self.input_dropout, self.recurrent_dropout)
        return (self.mode, self.input_size, self.hidden_size, self.num_layers, self.bidirectional,
                self.proj_size, self.bias, dropout, precision or self.precision, self.direction == "reverse",
                self._cell_options, drops[0], self.zoneout, self.zoneout_cell, drops[1], drops[2], eval_mode)

    def _draws_seed(self, training: bool) -> bool:
        """Whether a forward needs a dropout seed: dropout between layers or any regulariser, training."""
        return training and ((self.dropout > 0 and self.num_layers > 1) or any(getattr(self, k) > 0 for k in REGULARISERS))

    def _regulariser_reprs(self) -> Tuple[str, ...]:
        """``key=value`` for each regulariser in use (for reprs)."""
        return tuple(f"{k}={getattr(self, k)}" for k in REGULARISERS if getattr(self, k) > 0)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_size(self) -> int:
        """Width of h: proj_size when projecting, else hidden_size."""
        return self.proj_size or self.hidden_size

    @property
    def _state_size_name(self) -> str:
        """The option that sets state_size, for messages."""
        return "proj_size" if self.proj_size else "hidden_size"

    def _class_option_reprs(self) -> Tuple[str, ...]:
        spec: LayerClass = type(self)._layer_class  # type: ignore[attr-defined]
        return spec.nondefault_options({k: getattr(self, k) for k in spec.cells[0].options})
