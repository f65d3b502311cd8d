"""The PyTorch bridge: rnnkit's layers as ``torch.nn.Module``s that run on rnnkit's C++ core.

``rnnkit.torch.RNN``, ``LSTM``, ``GRU``, ``LayerNormLSTM`` and ``LayerNormGRU`` are drop-in
replacements for ``torch.nn.RNN`` / ``LSTM`` / ``GRU``: the same constructor arguments, parameter
names, shapes and default initialisation (drawn from torch's RNG, so ``torch.manual_seed``
reproduces a module), the same ``forward(input, hx=None)`` results, including unbatched input,
``batch_first`` and ``PackedSequence``; a ``state_dict`` loads into the torch module and back.
Forward and BPTT run in ``rnnkit._core`` through one ``torch.autograd.Function``; tensors cross as
zero-copy NumPy views, so autograd, optimizers and ``DistributedDataParallel`` see an ordinary
module.

Limits: CPU tensors only (rnnkit's CUDA backend does not run recurrent layers), float32 and
float64 only. The backward of one forward can run more than once (``retain_graph=True``,
``torch.autograd.gradcheck``): the first backward uses the forward's cache, a later one re-runs
the forward to rebuild it. Double backward (``create_graph=True``) is not supported and raises.

torch is never a dependency of rnnkit: ``import rnnkit`` does not import this module.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

if __name__ == "torch":
    # This file was found as the top-level ``torch``: its folder is on sys.path (a script run from
    # inside python/rnnkit/interop), where this module would shadow PyTorch and import itself.
    raise ImportError(
        f"{__file__} was imported as 'torch' because its directory is on sys.path, where it hides "
        "PyTorch: run scripts from outside python/rnnkit/interop and import it as rnnkit.torch"
    )

try:
    # An absolute import (this file is rnnkit/interop/torch.py): it finds the real PyTorch, not itself.
    import torch
    from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without torch
    raise ImportError(
        "rnnkit.torch needs PyTorch, which is not installed (rnnkit itself does not depend on it): "
        "pip install torch"
    ) from exc

import numpy as np

from .. import _core
from .. import _validate as V
from .. import cuda as _cuda
from .._cells import LAYER_CLASSES, Cell, Family, LayerClass, StackOptions, make_layer_class
from ..train import init as _init

__all__ = ["RNN", "LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU"]

# This family's constructor: PyTorch's own, device and dtype included.
TORCH_FAMILY = Family(
    positional=(("device", None), ("dtype", None)),
    keyword=(),
    doc="Same constructor as ``torch.nn``'s class of the same name where PyTorch has one, plus "
        "keyword-only ``init`` and ``init_gain`` (see ``rnnkit.init``); default initialisation from "
        "torch's RNG.",
)

Tensor = torch.Tensor
HiddenState = Union[Tensor, Tuple[Tensor, Tensor]]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)


def _not_cpu_error(name: str, device: torch.device) -> ValueError:
    """The error for a tensor or device rnnkit cannot compute on, saying why."""
    if device.type == "cuda":
        if _cuda.is_available():
            why = ("rnnkit's CUDA backend is built but does not run recurrent layers yet "
                   "(it has the device probe and a self-test kernel only)")
        else:
            why = f"rnnkit's CUDA backend is not available: {_cuda.status()}"
        return ValueError(f"{name}: expected a CPU tensor or device ({why}; move the module and "
                          f"its inputs to the CPU), got device {str(device)!r}")
    return ValueError(f"{name}: expected a CPU tensor or device (rnnkit computes on the CPU), "
                      f"got device {str(device)!r}")


def _resolve_device(device: Any) -> torch.device:
    if device is None:
        # torch.get_default_device() is torch >= 2.3; a new tensor lands on the default device in any version.
        resolved = torch.empty(0).device
    else:
        try:
            resolved = torch.device(device)
        except (TypeError, RuntimeError) as exc:
            raise TypeError(f"device: expected None, a torch.device or a device string, got "
                            f"{type(device).__name__} {device!r} ({exc})") from None
    if resolved.type != "cpu":
        raise _not_cpu_error("device", resolved)
    return resolved


def _resolve_dtype(dtype: Any) -> torch.dtype:
    if dtype is None:
        dtype = torch.get_default_dtype()
    if dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"dtype: expected torch.float32 or torch.float64 (rnnkit's dtypes), got {dtype!r}")
    return dtype


def _check_tensor(name: str, value: Any, dtype: torch.dtype) -> Tensor:
    """A CPU tensor of the module's dtype (rnnkit does not convert: torch.nn.RNN does not either)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.device.type != "cpu":
        raise _not_cpu_error(name, value.device)
    if value.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{name}: expected a float32 or float64 tensor (rnnkit's dtypes), got {value.dtype}")
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of the module's parameters; convert "
                        f"the input with .to({dtype}) or the module with .to({value.dtype})), got {value.dtype}")
    return value


def _as_numpy(t: Optional[Tensor]) -> Optional[np.ndarray]:
    """A NumPy view of a CPU tensor: no copy when it is already contiguous."""
    if t is None:
        return None
    return t.detach().contiguous().numpy()


class _Run:
    """What one forward call passes to the autograd Function besides tensors."""

    __slots__ = ("config", "lengths", "keep_cache", "dropout_seed", "has_cell_state")

    def __init__(self, config: Any, lengths: Optional[np.ndarray], keep_cache: bool, dropout_seed: int,
                 has_cell_state: bool) -> None:
        self.config = config
        self.lengths = lengths
        self.keep_cache = keep_cache
        self.dropout_seed = dropout_seed
        self.has_cell_state = has_cell_state


class _StackFunction(torch.autograd.Function):
    """rnnkit's stack forward and BPTT as one autograd node.

    Inputs: the run, ``x`` [T, N, C] time-major, ``h0``, ``c0`` (or None), then every parameter
    in ``config.param_specs()`` order. Outputs: ``y``, ``h_n`` and, for LSTM cells, ``c_n``.
    """

    @staticmethod
    def forward(ctx: Any, run: _Run, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor],
                *weights: Tensor) -> Tuple[Tensor, ...]:
        y, h_n, c_n, cache = _core.forward(
            run.config, [_as_numpy(w) for w in weights], _as_numpy(x), _as_numpy(h0), _as_numpy(c0),
            run.lengths, run.keep_cache, run.dropout_seed,
        )
        ctx.run = run
        ctx.cache = cache
        ctx.weight_shapes = [tuple(w.shape) for w in weights]
        # Kept only to rebuild the cache when a retained graph is backpropagated again; the cache
        # holds its own copies, so these are references, not copies.
        ctx.save_for_backward(x, h0, c0, *weights)
        # rnnkit takes None for an output nobody used and skips that work.
        ctx.set_materialize_grads(False)
        outputs = [torch.from_numpy(y), torch.from_numpy(h_n)]
        if run.has_cell_state:
            outputs.append(torch.from_numpy(c_n))
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, dy: Optional[Tensor], dh_n: Optional[Tensor],
                 dc_n: Optional[Tensor] = None) -> Tuple[Optional[Tensor], ...]:
        if torch.is_grad_enabled():
            # Autograd enables grad mode in backward only for create_graph=True. rnnkit's BPTT is
            # not itself differentiable: refusing beats handing back gradients that silently
            # lack their second-order terms.
            raise RuntimeError(
                "rnnkit.torch: double backward (create_graph=True, e.g. a gradient penalty or "
                "torch.autograd.gradgradcheck) is not supported: rnnkit's BPTT has no derivative "
                "of its own; use torch.nn's module for second-order gradients"
            )
        run: _Run = ctx.run
        needs = ctx.needs_input_grad
        if dy is None and dh_n is None and dc_n is None:
            return (None,) * len(needs)
        cache, ctx.cache = ctx.cache, None  # a cache is spent by one backward, even a failed one
        if cache is None:
            # A second backward through a retained graph: the same forward again (same dropout
            # seed, hence the same masks) gives a fresh cache. Unpacking the saved tensors makes
            # torch refuse if one was modified in place since the forward.
            x, h0, c0, *weights = ctx.saved_tensors
            *_, cache = _core.forward(
                run.config, [_as_numpy(w) for w in weights], _as_numpy(x), _as_numpy(h0), _as_numpy(c0),
                run.lengths, True, run.dropout_seed,
            )
        # Freshly zeroed: rnnkit accumulates into them.
        grads = [np.zeros(shape, dtype=np.dtype(cache.dtype)) for shape in ctx.weight_shapes]
        dx, dh0, dc0 = _core.backward(cache, _as_numpy(dy), _as_numpy(dh_n), _as_numpy(dc_n), grads,
                                      bool(needs[1]))
        d_weights = [torch.from_numpy(g) if needs[4 + i] else None for i, g in enumerate(grads)]
        return (
            None,
            torch.from_numpy(dx) if dx is not None and needs[1] else None,
            torch.from_numpy(dh0) if needs[2] else None,
            torch.from_numpy(dc0) if dc0 is not None and needs[3] else None,
            *d_weights,
        )


def _pack_like(y_tm: Tensor, template: PackedSequence) -> PackedSequence:
    """Packs a padded time-major output [T, N, F] (original batch order) exactly as ``template``
    is packed: same batch_sizes, sorted_indices and unsorted_indices."""
    batch_sizes = template.batch_sizes
    y_sorted = y_tm if template.sorted_indices is None else y_tm.index_select(1, template.sorted_indices)
    T, N, F = y_sorted.shape
    # Packed data is time-major over the sorted batch: at step t, the first batch_sizes[t] rows.
    valid = torch.arange(N).unsqueeze(0) < batch_sizes.unsqueeze(1)
    rows = valid.reshape(-1).nonzero().squeeze(1)
    data = y_sorted.reshape(T * N, F).index_select(0, rows)
    return PackedSequence(data, batch_sizes, template.sorted_indices, template.unsorted_indices)


class _RNNBase(torch.nn.Module, StackOptions):
    """Shared implementation of the bridge modules (see the classes below for each cell)."""

    def _init_stack(self, spec: LayerClass, cell: Cell, options: Mapping[str, Any]) -> None:
        torch.nn.Module.__init__(self)
        self._set_stack_options(spec, cell, options)
        device = _resolve_device(options["device"])
        dtype = _resolve_dtype(options["dtype"])
        self._config = _core.StackConfig(*self._config_args(), self.dropout)
        # Eval mode (and dropout=0) runs this one: same parameters, no masks.
        self._config_no_dropout = _core.StackConfig(*self._config_args(), 0.0)
        self._specs: List[Tuple[str, Tuple[int, ...]]] = [(n, tuple(s)) for n, s in self._config.param_specs()]
        for name, shape in self._specs:
            self.register_parameter(name, torch.nn.Parameter(torch.empty(shape, dtype=dtype, device=device)))
        self.reset_parameters()

    # ---- parameters -------------------------------------------------------------------------
    @property
    def _flat_weights_names(self) -> List[str]:
        return [name for name, _ in self._specs]

    @property
    def all_weights(self) -> List[List[torch.nn.Parameter]]:
        """The parameters grouped per layer and direction, as ``torch.nn.LSTM.all_weights``."""
        groups: Dict[str, List[torch.nn.Parameter]] = {}
        for name, _ in self._specs:
            suffix = name[name.rindex("_l"):]
            groups.setdefault(suffix, []).append(self._parameters[name])
        return list(groups.values())

    def reset_parameters(self) -> None:
        """Draws fresh parameters from torch's RNG. ``init="default"`` is torch's init exactly
        (every weight and bias U(-1/sqrt(H), 1/sqrt(H)), drawn in state_dict order, so a seed gives
        the same weights as ``torch.nn.LSTM``); LayerNorm gains start at 1 and biases at 0; other
        schemes are ``rnnkit.init``'s, drawn by a NumPy generator seeded from torch's RNG."""
        with torch.no_grad():
            if self._scheme == ("default",):
                bound = 1.0 / math.sqrt(self.hidden_size)
                for name, _ in self._specs:
                    p = self._parameters[name]
                    if name.startswith("ln_"):
                        p.fill_(1.0 if "_weight_" in name else 0.0)
                    else:
                        p.uniform_(-bound, bound)
                if self.forget_bias is not None:
                    H = self.hidden_size
                    for name, _ in self._specs:
                        if name.startswith("bias_ih"):
                            self._parameters[name][H:2 * H] = self.forget_bias
                        elif name.startswith("bias_hh"):
                            self._parameters[name][H:2 * H] = 0.0
                return
            seed = int(torch.randint(0, 2**63 - 1, ()).item())
            arrays = _init.initialise(self._specs, self.hidden_size, self._config.gates, np.dtype(np.float64),
                                      np.random.default_rng(seed), self._scheme, self.init_gain, self.forget_bias)
            for name, _ in self._specs:
                self._parameters[name].copy_(torch.from_numpy(arrays[name]))

    def flatten_parameters(self) -> None:
        """Does nothing: rnnkit reads the parameters where they are (kept for drop-in use)."""

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[HiddenState] = None):
        """As ``torch.nn.RNN/LSTM/GRU.forward``.

        Args:
            input: ``[T, N, input_size]`` (``[N, T, input_size]`` with batch_first), ``[T,
                input_size]`` for one unbatched sequence, or a ``PackedSequence``.
            hx: ``h0`` ``[L*D, N, P]`` (``[L*D, P]`` unbatched) or None for zeros; LSTM cells take a
                tuple ``(h0, c0)`` with ``c0`` ``[L*D, N, H]``. With a PackedSequence, in the
                batch's original order.

        Returns:
            ``(output, h_n)``, for LSTM cells ``(output, (h_n, c_n))``: the output in the input's
            layout (a PackedSequence for a PackedSequence) and the final states shaped like hx.
        """
        weights = [self._parameters[name] for name, _ in self._specs]
        dtype = weights[0].dtype
        for (name, _), w in zip(self._specs, weights):
            _check_tensor(name, w, dtype)

        packed = isinstance(input, PackedSequence)
        lengths: Optional[np.ndarray] = None
        unbatched = False
        if packed:
            _check_tensor("input.data", input.data, dtype)
            if input.data.dim() != 2:
                raise ValueError(f"input.data: expected a 2-D packed tensor [sum(lengths), input_size], "
                                 f"got {input.data.dim()}-D with shape {V.shape_str(input.data.shape)}")
            x_tm, lengths_t = pad_packed_sequence(input)  # original batch order
            lengths = np.ascontiguousarray(lengths_t.numpy(), dtype=np.int64)
        else:
            x = _check_tensor("input", input, dtype)
            if x.dim() not in (2, 3):
                layout = "[N, T, input_size]" if self.batch_first else "[T, N, input_size]"
                raise ValueError(f"input: expected a 3-D tensor {layout} or a 2-D [T, input_size] "
                                 f"(unbatched), got {x.dim()}-D with shape {V.shape_str(x.shape)}")
            unbatched = x.dim() == 2
            if unbatched:
                x_tm = x.unsqueeze(1)
            elif self.batch_first:
                x_tm = x.transpose(0, 1)
            else:
                x_tm = x
        T, N, C = x_tm.shape
        if C != self.input_size:
            raise ValueError(f"input: expected input_size {self.input_size} in the last dimension, got {C} "
                             f"(shape {V.shape_str(input.data.shape if packed else input.shape)})")
        if T == 0 or N == 0:
            raise ValueError(f"input: expected a sequence length and batch size >= 1, got an empty tensor "
                             f"of shape {V.shape_str(input.data.shape if packed else input.shape)}")
        x_tm = x_tm.contiguous()
        h0, c0 = self._check_hx(hx, N, unbatched, dtype)

        apply_dropout = self.training and self.dropout > 0 and self.num_layers > 1
        tensors = [x_tm, h0, c0, *weights]
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        dropout_seed = int(torch.randint(0, 2**63 - 1, ()).item()) if apply_dropout else 0
        run = _Run(self._config if apply_dropout else self._config_no_dropout, lengths,
                   # rnnkit applies dropout only in its training forward, which also keeps the cache.
                   needs_grad or apply_dropout, dropout_seed, self._has_cell_state)
        outputs = _StackFunction.apply(run, x_tm, h0, c0, *weights)
        y, h_n = outputs[0], outputs[1]
        c_n = outputs[2] if self._has_cell_state else None

        if packed:
            output: Union[Tensor, PackedSequence] = _pack_like(y, input)
        elif unbatched:
            output = y.squeeze(1)
        elif self.batch_first:
            output = y.transpose(0, 1)
        else:
            output = y
        if unbatched:
            h_n = h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        if self._has_cell_state:
            return output, (h_n, c_n)
        return output, h_n

    def _check_hx(self, hx: Any, N: int, unbatched: bool, dtype: torch.dtype) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        if hx is None:
            return None, None
        h, c = V.split_state("hx", hx, self._has_cell_state, type(self).__name__, kind=("a tensor", "tensors"))
        h = self._check_state("hx[0]" if c is not None else "hx", h, N, self.state_size, self._state_size_name,
                              unbatched, dtype)
        c = None if c is None else self._check_state("hx[1]", c, N, self.hidden_size, "hidden_size", unbatched, dtype)
        return h, c

    def _check_state(self, name: str, value: Any, N: int, width: int, width_name: str, unbatched: bool,
                     dtype: torch.dtype) -> Tensor:
        t = _check_tensor(name, value, dtype)
        L = self.num_layers * self.num_directions
        V.check_shape(name, t, (L, width) if unbatched else (L, N, width), V.state_meaning(width_name, unbatched))
        return (t.unsqueeze(1) if unbatched else t).contiguous()

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if self.proj_size:
            parts.append(f"proj_size={self.proj_size}")
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        parts.extend(self._class_option_reprs())
        if not self.bias:
            parts.append("bias=False")
        if self.batch_first:
            parts.append("batch_first=True")
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        if self.bidirectional:
            parts.append("bidirectional=True")
        if self.init != "default":
            parts.append(f"init={self.init!r}, init_gain={self.init_gain}")
        if self.forget_bias is not None:
            parts.append(f"forget_bias={self.forget_bias}")
        return ", ".join(parts)


# The public modules, built from the one table (_cells.LAYER_CLASSES), like rnnkit's own layers.
RNN = make_layer_class(LAYER_CLASSES["RNN"], _RNNBase, TORCH_FAMILY, __name__)
LSTM = make_layer_class(LAYER_CLASSES["LSTM"], _RNNBase, TORCH_FAMILY, __name__)
GRU = make_layer_class(LAYER_CLASSES["GRU"], _RNNBase, TORCH_FAMILY, __name__)
LayerNormLSTM = make_layer_class(LAYER_CLASSES["LayerNormLSTM"], _RNNBase, TORCH_FAMILY, __name__)
LayerNormGRU = make_layer_class(LAYER_CLASSES["LayerNormGRU"], _RNNBase, TORCH_FAMILY, __name__)
