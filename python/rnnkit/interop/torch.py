"""The PyTorch bridge: rnnkit's layers as ``torch.nn.Module``s that run on rnnkit's C++ core.

``rnnkit.torch.RNN``, ``LSTM``, ``GRU``, ``LayerNormLSTM`` and ``LayerNormGRU`` are drop-in
replacements for ``torch.nn.RNN`` / ``LSTM`` / ``GRU``: the same constructor arguments, parameter
names, shapes and default initialisation (drawn from torch's RNG, so ``torch.manual_seed``
reproduces a module), the same ``forward(input, hx=None)`` results, including unbatched input,
``batch_first`` and ``PackedSequence``; a ``state_dict`` loads into the torch module and back.
Forward and BPTT are the custom operators ``torch.ops.rnnkit.forward`` / ``backward``
(``torch_ops``), so autograd, optimizers, ``DistributedDataParallel``, ``torch.compile``
(``fullgraph=True``), ``torch.export``, ``torch.func`` and ``torch.save`` see an ordinary module;
tensors cross into C++ as zero-copy NumPy views.

Limits: CPU tensors only (rnnkit's CUDA backend does not run recurrent layers), float32 and
float64 only. The backward of one forward can run more than once (``retain_graph=True``,
``torch.autograd.gradcheck``): it reads the forward's reserve without modifying it. Double backward
(a derivative of the gradient) is not supported and raises.

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
    from torch.nn.utils.rnn import PackedSequence
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without torch
    raise ImportError(
        "rnnkit.torch needs PyTorch, which is not installed (rnnkit itself does not depend on it): "
        "pip install torch"
    ) from exc

import numpy as np

from . import torch_onnx as _torch_onnx
from . import torch_ops as _ops
from .. import _validate as V
from .. import cuda as _cuda
from .._cells import LAYER_CLASSES, Cell, Family, LayerClass, StackOptions, make_layer_class
from ..train import init as _init

__all__ = ["RNN", "LSTM", "GRU", "LayerNormLSTM", "LayerNormGRU", "IndRNN", "MinGRU", "MinLSTM", "safe_globals"]

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


def _cuda_usable() -> bool:
    """Whether rnnkit's CUDA backend can run on PyTorch's CUDA tensors here (a CUDA build on a GPU;
    the host emulation has no CUDA tensors to run on)."""
    return _cuda.is_available() and not _cuda.is_emulated()


def _not_cpu_error(name: str, device: torch.device) -> ValueError:
    """The error for a tensor or device rnnkit cannot compute on, saying why."""
    if device.type == "cuda":
        if _cuda.is_emulated():
            why = "this rnnkit's CUDA backend is the host emulation (RNNKIT_CUDA_EMULATE), which runs on the CPU"
        else:
            why = f"rnnkit's CUDA backend is not available: {_cuda.status()}"
        return ValueError(f"{name}: expected a CPU tensor or device ({why}; move the module and "
                          f"its inputs to the CPU), got device {str(device)!r}")
    return ValueError(f"{name}: expected a CPU or CUDA tensor or device (rnnkit's backends), "
                      f"got device {str(device)!r}")


def _check_device(name: str, device: torch.device) -> None:
    if device.type == "cpu":
        return
    if device.type == "cuda" and _cuda_usable():
        if device.index not in (None, 0):
            # The backend's memory pool, cuBLAS handles and graphs are device 0's.
            raise ValueError(f"{name}: expected a tensor or device on 'cuda:0' (rnnkit's CUDA backend runs on the "
                             f"first GPU only; select one with CUDA_VISIBLE_DEVICES), got device {str(device)!r}")
        return
    raise _not_cpu_error(name, device)


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
    _check_device("device", resolved)
    return resolved


def _resolve_dtype(dtype: Any) -> torch.dtype:
    if dtype is None:
        dtype = torch.get_default_dtype()
    if dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"dtype: expected torch.float32 or torch.float64 (rnnkit's dtypes), got {dtype!r}")
    return dtype


def _check_tensor(name: str, value: Any, dtype: torch.dtype, device: Optional[torch.device] = None) -> Tensor:
    """A tensor of the module's dtype on the module's device (rnnkit does not convert or move:
    torch.nn.RNN does not either). device: the parameters' device (None: checking a parameter)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    _check_device(name, value.device)
    if device is not None and value.device != device:
        raise ValueError(f"{name}: expected a tensor on {str(device)!r} (the device of the module's parameters; "
                         f"move it with .to({str(device)!r}) or the module with .to({str(value.device)!r})), "
                         f"got device {str(value.device)!r}")
    if value.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{name}: expected a float32 or float64 tensor (rnnkit's dtypes), got {value.dtype}")
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of the module's parameters; convert "
                        f"the input with .to({dtype}) or the module with .to({value.dtype})), got {value.dtype}")
    return value


def _run_stack(x: Tensor, batch_sizes: Optional[Tensor], sorted_indices: Optional[Tensor], h0: Optional[Tensor],
               c0: Optional[Tensor], weights: List[Tensor], seed: Optional[Tensor], config_args: Tuple[Any, ...],
               training: bool, has_cell_state: bool) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """One call of the operator rnnkit::forward (torch_ops, with its vmap rule): (y, h_n, c_n or None)."""
    y, h_n, c_n, _reserve = _ops.stack_call(x, batch_sizes, sorted_indices, h0, c0, weights, seed, config_args,
                                            training)
    return y, h_n, (c_n if has_cell_state else None)


def _as_float32(value: Any) -> Any:
    """A bfloat16 tensor (or PackedSequence, or tuple of them) as float32, anything else as it is:
    what an autocast region hands a float32 module."""
    if isinstance(value, PackedSequence):
        if value.data.dtype != torch.bfloat16:
            return value
        return PackedSequence(value.data.float(), value.batch_sizes, value.sorted_indices, value.unsorted_indices)
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, tuple):
        return tuple(_as_float32(v) for v in value)
    return value


class _RNNBase(torch.nn.Module, StackOptions):
    """Shared implementation of the bridge modules (see the classes below for each cell)."""

    def _init_stack(self, spec: LayerClass, cell: Cell, options: Mapping[str, Any]) -> None:
        torch.nn.Module.__init__(self)
        self._set_stack_options(spec, cell, options)
        device = _resolve_device(options["device"])
        dtype = _resolve_dtype(options["dtype"])
        # The module keeps no compiled object: it pickles as plain Python, and tracers see constants.
        config = _ops.stack_config(*self._config_args(self.dropout))
        self._specs: List[Tuple[str, Tuple[int, ...]]] = [(n, tuple(s)) for n, s in config.param_specs()]
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
                    elif name.startswith("weight_hh") and p.dim() == 1:
                        p.uniform_(0.0, 1.0)  # IndRNN's u, as rnnkit.init draws it
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
            arrays = _init.initialise(self._specs, self.hidden_size, _ops.stack_config(*self._config_args(self.dropout)).gates, np.dtype(np.float64),
                                      np.random.default_rng(seed), self._scheme, self.init_gain, self.forget_bias)
            for name, _ in self._specs:
                self._parameters[name].copy_(torch.from_numpy(arrays[name]))
        self.clamp_recurrent()

    def clamp_recurrent(self) -> None:
        """IndRNN with ``recurrent_max_abs=r``: clamps every recurrent vector u to [-r, r] in place.
        Call it after the optimizer's ``step()`` (torch's optimizers do not know the constraint)."""
        if self.recurrent_max_abs is None:
            return
        with torch.no_grad():
            for name, p in self._parameters.items():
                if name.startswith("weight_hh"):
                    p.clamp_(-self.recurrent_max_abs, self.recurrent_max_abs)

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

        Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (``"cuda"`` for CUDA tensors) a float32
        module runs rnnkit's ``precision="bfloat16"`` path (bfloat16 inputs are taken as float32);
        outputs stay float32. Autocast to float16 leaves the module in float32.
        """
        weights = [self._parameters[name] for name, _ in self._specs]
        dtype, device = weights[0].dtype, weights[0].device
        autocast_bf16 = (device.type in ("cpu", "cuda") and dtype == torch.float32
                         and torch.is_autocast_enabled(device.type)
                         and torch.get_autocast_dtype(device.type) == torch.bfloat16)
        if autocast_bf16:
            input, hx = _as_float32(input), _as_float32(hx)
        for (name, _), w in zip(self._specs, weights):
            _check_tensor(name, w, dtype, device)

        packed = isinstance(input, PackedSequence)
        unbatched = False
        batch_sizes: Optional[Tensor] = None
        sorted_indices: Optional[Tensor] = None
        if packed:
            x_in = _check_tensor("input.data", input.data, dtype, device)
            if x_in.dim() != 2:
                raise ValueError(f"input.data: expected a 2-D packed tensor [sum(lengths), input_size], "
                                 f"got {x_in.dim()}-D with shape {V.shape_str(x_in.shape)}")
            C = x_in.shape[1]
            batch_sizes, sorted_indices = input.batch_sizes, input.sorted_indices
            empty = x_in.shape[0] == 0
        else:
            x = _check_tensor("input", input, dtype, device)
            if x.dim() not in (2, 3):
                layout = "[N, T, input_size]" if self.batch_first else "[T, N, input_size]"
                raise ValueError(f"input: expected a 3-D tensor {layout} or a 2-D [T, input_size] "
                                 f"(unbatched), got {x.dim()}-D with shape {V.shape_str(x.shape)}")
            unbatched = x.dim() == 2
            if unbatched:
                x_in = x.unsqueeze(1)
            elif self.batch_first:
                x_in = x.transpose(0, 1)
            else:
                x_in = x
            C = x_in.shape[2]
            empty = x_in.shape[0] == 0 or x_in.shape[1] == 0
        if C != self.input_size:
            raise ValueError(f"input: expected input_size {self.input_size} in the last dimension, got {C} "
                             f"(shape {V.shape_str(input.data.shape if packed else input.shape)})")
        if empty:
            raise ValueError(f"input: expected a sequence length and batch size >= 1, got an empty tensor "
                             f"of shape {V.shape_str(input.data.shape if packed else input.shape)}")
        x_in = x_in.contiguous()
        N = None if packed else x_in.shape[1]
        if packed and sorted_indices is not None:
            N = sorted_indices.shape[0]
        h0, c0 = self._check_hx(hx, N, unbatched, dtype, device)

        apply_dropout = self.training and self.dropout > 0 and self.num_layers > 1
        needs_grad = _ops.needs_grad((x_in, h0, c0, *weights))
        draws = self._draws_seed(self.training)
        seed = torch.randint(0, 2**62, (), dtype=torch.int64) if draws else None
        # rnnkit masks in its training forward, which a module in eval mode may run for its
        # gradients: eval mode asks for no masks of any kind (and zoneout's expectation).
        cfg = self._config_args(self.dropout if apply_dropout else 0.0, "bfloat16" if autocast_bf16 else None,
                                eval_mode=not self.training)
        y, h_n, c_n = _run_stack(
            x_in, batch_sizes, sorted_indices, h0, c0, weights, seed, cfg,
            # rnnkit applies dropout only in its training forward, which also keeps the reserve.
            needs_grad or draws, self._has_cell_state)

        if packed:
            output: Union[Tensor, PackedSequence] = PackedSequence(y, input.batch_sizes, input.sorted_indices,
                                                                   input.unsorted_indices)
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

    def _check_hx(self, hx: Any, N: Optional[int], unbatched: bool, dtype: torch.dtype,
                  device: torch.device) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        if hx is None:
            return None, None
        h, c = V.split_state("hx", hx, self._has_cell_state, type(self).__name__, kind=("a tensor", "tensors"))
        if N is None and isinstance(h, torch.Tensor) and h.dim() == 3:
            N = h.shape[1]  # a packed batch sorted by the caller: hx says how many sequences
        h = self._check_state("hx[0]" if c is not None else "hx", h, N, self.state_size, self._state_size_name,
                              unbatched, dtype, device)
        c = None if c is None else self._check_state("hx[1]", c, N, self.hidden_size, "hidden_size", unbatched,
                                                     dtype, device)
        return h, c

    def _check_state(self, name: str, value: Any, N: int, width: int, width_name: str, unbatched: bool,
                     dtype: torch.dtype, device: torch.device) -> Tensor:
        t = _check_tensor(name, value, dtype, device)
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
        parts.extend(self._regulariser_reprs())
        if self.bidirectional:
            parts.append("bidirectional=True")
        if self.direction == "reverse":
            parts.append("direction='reverse'")
        if self.init != "default":
            parts.append(f"init={self.init!r}, init_gain={self.init_gain}")
        if self.forget_bias is not None:
            parts.append(f"forget_bias={self.forget_bias}")
        if self.precision != "float32":
            parts.append(f"precision={self.precision!r}")
        return ", ".join(parts)


# torch.onnx.export(..., dynamo=True) writes ONNX RNN/LSTM/GRU nodes for rnnkit's operator.
_torch_onnx.install()

# The public modules, built from the one table (_cells.LAYER_CLASSES), like rnnkit's own layers.
RNN = make_layer_class(LAYER_CLASSES["RNN"], _RNNBase, TORCH_FAMILY, __name__)
LSTM = make_layer_class(LAYER_CLASSES["LSTM"], _RNNBase, TORCH_FAMILY, __name__)
GRU = make_layer_class(LAYER_CLASSES["GRU"], _RNNBase, TORCH_FAMILY, __name__)
LayerNormLSTM = make_layer_class(LAYER_CLASSES["LayerNormLSTM"], _RNNBase, TORCH_FAMILY, __name__)
LayerNormGRU = make_layer_class(LAYER_CLASSES["LayerNormGRU"], _RNNBase, TORCH_FAMILY, __name__)
IndRNN = make_layer_class(LAYER_CLASSES["IndRNN"], _RNNBase, TORCH_FAMILY, __name__)
MinGRU = make_layer_class(LAYER_CLASSES["MinGRU"], _RNNBase, TORCH_FAMILY, __name__)
MinLSTM = make_layer_class(LAYER_CLASSES["MinLSTM"], _RNNBase, TORCH_FAMILY, __name__)


def safe_globals() -> List[type]:
    """The classes ``torch.load(..., weights_only=True)`` must be allowed to rebuild a pickled
    rnnkit.torch module (``torch.save(model)``): ``torch.serialization.add_safe_globals(
    rnnkit.torch.safe_globals())``, or ``with torch.serialization.safe_globals(...)``. A module
    pickles as plain Python values and tensors: these classes are all it adds."""
    return [RNN, LSTM, GRU, LayerNormLSTM, LayerNormGRU, IndRNN, MinGRU, MinLSTM]
