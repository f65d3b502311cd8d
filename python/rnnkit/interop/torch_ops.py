"""rnnkit's stack forward and BPTT as PyTorch custom operators: ``torch.ops.rnnkit.forward`` and
``torch.ops.rnnkit.backward``.

Registered with ``torch.library.custom_op``, each with a fake (meta) implementation that gives the
exact output shapes, and the pair joined by ``register_autograd``, so the modules of
``rnnkit.torch`` are ordinary graph nodes to every PyTorch tracer: ``torch.compile`` (no graph
break), ``torch.export``, ``torch.func`` and the dynamo ONNX exporter. torch stays optional:
nothing here is linked into ``rnnkit._core``; the operators call it through NumPy views.

What the forward keeps for its backward is one flat array, the **reserve** (cuDNN's word for the
same thing): the C++ training cache's block, handed out without a copy (``_core.Cache.reserve``).
Its layout is a function of the call's configuration and shape alone, so ``_core.backward_reserve``
rebuilds the cache's views over it. Backward only reads it, which is what makes the operators
pure: a retained graph can be backpropagated any number of times.

The stack's configuration travels as plain arguments (mode, sizes, flags), which tracers treat as
constants; the dropout seed is a tensor, so a compiled graph draws a new one each call.

Packed sequences: ``x`` is then a PackedSequence's data ``[sum(lengths), C]`` with its
``batch_sizes`` and ``sorted_indices``; the operator pads, runs and packs again inside, so a
tracer never sees the data-dependent padding. The batch size of such a call is
``sorted_indices.numel()`` or ``h0.shape[1]``; with neither (``enforce_sorted=True`` and no initial
state) it is data-dependent, an unbacked size in a traced graph.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers
from torch.nn.utils.rnn import PackedSequence, invert_permutation, pad_packed_sequence

from .. import _core

__all__ = ["stack_forward", "stack_backward", "stack_call", "needs_grad", "reserve_elems", "stack_config"]

ConfigArgs = Tuple[str, int, int, int, bool, int, bool, float, str, bool, str, float, float, float, float, float, bool]


@functools.lru_cache(maxsize=512)
def stack_config(mode: str, input_size: int, hidden_size: int, num_layers: int, bidirectional: bool,
                 proj_size: int, bias: bool, dropout: float, precision: str = "float32", reverse: bool = False,
                 cell_options: str = "", weight_dropout: float = 0.0, zoneout: float = 0.0, zoneout_cell: float = 0.0,
                 input_dropout: float = 0.0, recurrent_dropout: float = 0.0, zoneout_expected: bool = False) -> Any:
    """The ``_core.StackConfig`` of these arguments (one object per distinct configuration)."""
    return _core.StackConfig(mode, input_size, hidden_size, num_layers, bidirectional, proj_size, bias, dropout,
                             precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected)


@functools.lru_cache(maxsize=512)
def _reserve_coefficients(cfg_args: ConfigArgs, dtype: np.dtype) -> Tuple[int, int, int, int]:
    """(a, b, c, d) with reserve elements = a + b*T + c*N + d*T*N: the cache holds per-call parts
    (parameters), per-sequence parts (initial states) and per-step parts, nothing else, so four
    points fix it and a fifth checks it."""
    cfg = stack_config(*cfg_args)

    def size(T: int, N: int) -> int:
        return int(_core.reserve_size(cfg, T, N, dtype))

    s11, s21, s12, s22 = size(1, 1), size(2, 1), size(1, 2), size(2, 2)
    d = s22 - s21 - s12 + s11
    b = s21 - s11 - d
    c = s12 - s11 - d
    a = s11 - b - c - d
    if a + 7 * b + 5 * c + 35 * d != size(7, 5):  # pragma: no cover - the cache's layout changed
        raise AssertionError("rnnkit: the reserve size is not bilinear in (T, N); update _reserve_coefficients")
    return a, b, c, d


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype of one of rnnkit's torch dtypes (float32, float64)."""
    return np.dtype(np.float32 if dtype == torch.float32 else np.float64)


def reserve_elems(cfg_args: ConfigArgs, T: Any, N: Any, dtype: torch.dtype) -> Any:
    """Elements of the reserve of a training forward of x [T, N, C] (T, N may be symbolic)."""
    np_dtype = _np_dtype(dtype)
    if isinstance(T, int) and isinstance(N, int):
        return int(_core.reserve_size(stack_config(*cfg_args), T, N, np_dtype))
    a, b, c, d = _reserve_coefficients(cfg_args, np_dtype)
    return a + b * T + c * N + d * T * N


# ---- where a call computes: the CPU backend on CPU tensors, the CUDA backend on CUDA tensors ----
# A CUDA tensor crosses to rnnkit as a DeviceArray over its own memory (DLPack /
# __cuda_array_interface__, no copy), and rnnkit's device outputs come back through DLPack, also
# without a copy. The call runs on PyTorch's current stream of the tensor's device, and rnnkit
# waits for it before returning.
#
# Tests only: in rnnkit's host-emulation build (RNNKIT_CUDA_EMULATE) "device" memory is host
# memory, so CPU tensors can take the device path there; set by tests/test_torch_cuda.py to run all
# of this code on the CPU.
_EMULATED_DEVICE_FOR_CPU_TENSORS = False


def _on_device(t: Tensor) -> bool:
    """Whether a call with this input runs on rnnkit's CUDA backend."""
    return t.device.type == "cuda" or _EMULATED_DEVICE_FOR_CPU_TENSORS


def _numpy(t: Optional[Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().contiguous().numpy()


def _core_array(t: Optional[Tensor], device: bool) -> Any:
    """t as the array rnnkit reads: a NumPy view (CPU backend) or a DeviceArray view (CUDA backend)."""
    if t is None:
        return None
    if not device:
        return _numpy(t)
    from .._device import as_device_array

    return as_device_array(t.detach().contiguous())


def _tensor(a: Any) -> Tensor:
    """A torch tensor over one of rnnkit's outputs, without a copy."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def _stream(x: Tensor) -> Any:
    """The context a call on x runs in: PyTorch's current stream of x's device, for rnnkit too."""
    if x.device.type != "cuda":
        return contextlib.nullcontext()
    from .. import cuda as _cuda

    return _cuda.stream(torch.cuda.current_stream(x.device).cuda_stream)


def _packed(data: Tensor, batch_sizes: Tensor, sorted_indices: Optional[Tensor]) -> PackedSequence:
    unsorted = None if sorted_indices is None else invert_permutation(sorted_indices)
    return PackedSequence(data, batch_sizes, sorted_indices, unsorted)


def _pack_like(y_tm: Tensor, template: PackedSequence) -> Tensor:
    """The data of a padded time-major [T, N, F] (original batch order) packed exactly as
    ``template``: same batch_sizes and sorted_indices."""
    batch_sizes = template.batch_sizes
    y_sorted = y_tm if template.sorted_indices is None else y_tm.index_select(1, template.sorted_indices)
    T, N, F = y_sorted.shape
    # Packed data is time-major over the sorted batch: at step t, the first batch_sizes[t] rows.
    valid = torch.arange(N).unsqueeze(0) < batch_sizes.unsqueeze(1)  # batch_sizes stays on the CPU
    rows = valid.reshape(-1).nonzero().squeeze(1).to(y_sorted.device)
    return y_sorted.reshape(T * N, F).index_select(0, rows)


def _batch(sorted_indices: Optional[Tensor], h0: Optional[Tensor]) -> Any:
    """A packed call's batch size where its shapes tell it; None where it is data-dependent."""
    if sorted_indices is not None:
        return sorted_indices.shape[0]
    if h0 is not None:
        return h0.shape[1]
    return None


def _forward_run(x: Tensor, batch_sizes: Optional[Tensor], sorted_indices: Optional[Tensor], h0: Optional[Tensor],
                 c0: Optional[Tensor], weights: List[Tensor], seed: Optional[Tensor], mode: str, input_size: int,
                 hidden_size: int, num_layers: int, bidirectional: bool, proj_size: int, bias: bool,
                 dropout: float, precision: str, reverse: bool, cell_options: str, weight_dropout: float, zoneout: float, zoneout_cell: float, input_dropout: float, recurrent_dropout: float, zoneout_expected: bool, training: bool,
                 zero_reserve: bool = True) -> Tuple[Tuple[Tensor, Tensor, Tensor, Tensor], Any]:
    """A stack forward. x: [T, N, C] time-major, or packed data [sum(lengths), C] with
    batch_sizes [T] (int64, CPU) and sorted_indices [N] or None. h0 [L*D, N, P], c0 [L*D, N, H]
    (LSTM cells) or None; weights in param_specs order; seed: int64 scalar (dropout) or None.
    training: keep the reserve (and apply dropout). Returns (y [T, N, D*P] or packed [sum, D*P],
    h_n [L*D, N, P], c_n [L*D, N, H] (empty [0] without a cell state), reserve [R] (empty [0] in
    inference)). zero_reserve (not part of the operator's schema): zero the reserve first where it
    has padding (a packed batch's padded steps are not all written), so that every element of it
    is a function of the inputs, as an operator's outputs must be (opcheck compares them); rnnkit
    never reads the padding, so the eager path skips it. Returned with the outputs: the
    ``_core.Cache`` whose block the reserve views (None in inference)."""
    cfg = stack_config(mode, input_size, hidden_size, num_layers, bidirectional, proj_size, bias, dropout, precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected)
    dropout_seed = int(seed.item()) if seed is not None else 0
    template = None
    lengths = None
    if batch_sizes is None:
        x_tm = x
    else:
        template = _packed(x, batch_sizes, sorted_indices)
        x_tm, lengths_t = pad_packed_sequence(template)  # original batch order
        lengths = np.ascontiguousarray(lengths_t.cpu().numpy(), dtype=np.int64)
    dev = _on_device(x)
    with _stream(x):
        y, h_n, c_n, cache = _core.forward(cfg, [_core_array(w, dev) for w in weights], _core_array(x_tm, dev),
                                           _core_array(h0, dev), _core_array(c0, dev), lengths, training,
                                           dropout_seed, zero_cache=training and zero_reserve and lengths is not None)
    y_t = _tensor(y)
    if template is not None:
        y_t = _pack_like(y_t, template)
    c_t = _tensor(c_n) if c_n is not None else x.new_empty((0,))
    reserve = _tensor(cache.reserve()) if cache is not None else x.new_empty((0,))
    return (y_t, _tensor(h_n), c_t, reserve), cache


def _forward_op_impl(x: Tensor, batch_sizes: Optional[Tensor], sorted_indices: Optional[Tensor], h0: Optional[Tensor],
                     c0: Optional[Tensor], weights: List[Tensor], seed: Optional[Tensor], mode: str, input_size: int,
                     hidden_size: int, num_layers: int, bidirectional: bool, proj_size: int, bias: bool,
                     dropout: float, precision: str, reverse: bool, cell_options: str, weight_dropout: float, zoneout: float, zoneout_cell: float, input_dropout: float, recurrent_dropout: float, zoneout_expected: bool, training: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return _forward_run(x, batch_sizes, sorted_indices, h0, c0, weights, seed, mode, input_size, hidden_size,
                        num_layers, bidirectional, proj_size, bias, dropout, precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected, training)[0]


_forward_op_impl.__doc__ = _forward_run.__doc__
stack_forward = torch.library.custom_op("rnnkit::forward", _forward_op_impl, mutates_args=(),
                                        device_types=("cpu", "cuda"))


@stack_forward.register_fake
def _stack_forward_fake(x, batch_sizes, sorted_indices, h0, c0, weights, seed, mode, input_size, hidden_size,
                        num_layers, bidirectional, proj_size, bias, dropout, precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected, training):
    cfg_args = (mode, input_size, hidden_size, num_layers, bidirectional, proj_size, bias, dropout, precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected)
    cfg = stack_config(*cfg_args)
    D = cfg.num_directions
    P = proj_size or hidden_size
    if batch_sizes is None:
        T, N = x.shape[0], x.shape[1]
        y = x.new_empty((T, N, D * P))
    else:
        T = batch_sizes.shape[0]
        N = _batch(sorted_indices, h0)
        if N is None:
            N = torch.library.get_ctx().new_dynamic_size()
        y = x.new_empty((x.shape[0], D * P))
    h_n = x.new_empty((num_layers * D, N, P))
    c_n = x.new_empty((num_layers * D, N, hidden_size)) if cfg.has_cell_state else x.new_empty((0,))
    reserve = x.new_empty((reserve_elems(cfg_args, T, N, x.dtype),)) if training else x.new_empty((0,))
    return y, h_n, c_n, reserve


def _backward_run(reserve: Tensor, batch_sizes: Optional[Tensor], sorted_indices: Optional[Tensor],
                   seed: Optional[Tensor], dy: Optional[Tensor], dh_n: Optional[Tensor], dc_n: Optional[Tensor],
                   T: int, N: int, rows: int, mode: str, input_size: int, hidden_size: int, num_layers: int,
                   bidirectional: bool, proj_size: int, bias: bool, dropout: float, precision: str, reverse: bool, cell_options: str, weight_dropout: float, zoneout: float, zoneout_cell: float, input_dropout: float, recurrent_dropout: float, zoneout_expected: bool,
                   need_dx: bool, cache: Any = None) -> Tuple[Tensor, Tensor, Tensor, List[Tensor]]:
    """BPTT from a training forward's reserve (not modified). T, N: the forward's steps and batch;
    rows: its packed rows (x.shape[0] of a packed call; ignored otherwise). dy: like the forward's y
    (padded or packed), dh_n, dc_n: like h_n, c_n; each may be None (zeros). Returns (dx like x (empty [0]
    unless need_dx), dh0, dc0 (empty [0] without a cell state), the weights' gradients in
    param_specs order). cache (not part of the operator's schema): the forward's ``_core.Cache``,
    to be used up instead: rnnkit's own backward, which writes the gate gradients over the cached
    gates (the reserve is left holding them) and saves the [T, N, G*H] buffer the reserve's reader
    gathers them in (~6% of an LSTM training step); the eager path's first backward."""
    cfg = stack_config(mode, input_size, hidden_size, num_layers, bidirectional, proj_size, bias, dropout, precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected)
    dropout_seed = int(seed.item()) if seed is not None else 0
    lengths = None
    template = None
    if batch_sizes is not None:
        template = _packed(reserve.new_empty((0, input_size)), batch_sizes, sorted_indices)
        lengths_sorted = (torch.arange(N).unsqueeze(1) < batch_sizes.unsqueeze(0)).sum(1)
        lengths_t = (lengths_sorted if sorted_indices is None
                     else lengths_sorted[invert_permutation(sorted_indices.cpu())])
        lengths = np.ascontiguousarray(lengths_t.numpy(), dtype=np.int64)
        if dy is not None:
            dy, _ = pad_packed_sequence(_packed(dy, batch_sizes, sorted_indices), total_length=T)
    dev = _on_device(reserve)
    # rnnkit adds into the gradients: zeros, as tensors rnnkit writes in place (NumPy or device views).
    grads_t = [reserve.new_zeros(tuple(shape)) for _, shape in cfg.param_specs()]
    grads = [_core_array(g, dev) for g in grads_t]
    with _stream(reserve):
        if cache is not None:
            dx, dh0, dc0 = _core.backward(cache, _core_array(dy, dev), _core_array(dh_n, dev),
                                          _core_array(dc_n, dev), grads, need_dx)
        else:
            dx, dh0, dc0 = _core.backward_reserve(cfg, _core_array(reserve, dev), T, N, lengths, dropout_seed,
                                                  _core_array(dy, dev), _core_array(dh_n, dev),
                                                  _core_array(dc_n, dev), grads, need_dx)
    if dx is None:
        dx_t = reserve.new_empty((0,))
    else:
        dx_t = _tensor(dx)
        if template is not None:
            dx_t = _pack_like(dx_t, template)
    dc0_t = _tensor(dc0) if dc0 is not None else reserve.new_empty((0,))
    return dx_t, _tensor(dh0), dc0_t, grads_t


def _backward_impl(reserve: Tensor, batch_sizes: Optional[Tensor], sorted_indices: Optional[Tensor],
                   seed: Optional[Tensor], dy: Optional[Tensor], dh_n: Optional[Tensor], dc_n: Optional[Tensor],
                   T: int, N: int, rows: int, mode: str, input_size: int, hidden_size: int, num_layers: int,
                   bidirectional: bool, proj_size: int, bias: bool, dropout: float, precision: str, reverse: bool, cell_options: str, weight_dropout: float, zoneout: float, zoneout_cell: float, input_dropout: float, recurrent_dropout: float, zoneout_expected: bool,
                   need_dx: bool) -> Tuple[Tensor, Tensor, Tensor, List[Tensor]]:
    return _backward_run(reserve, batch_sizes, sorted_indices, seed, dy, dh_n, dc_n, T, N, rows, mode, input_size,
                         hidden_size, num_layers, bidirectional, proj_size, bias, dropout, precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected, need_dx)


_backward_impl.__doc__ = _backward_run.__doc__
stack_backward = torch.library.custom_op("rnnkit::backward", _backward_impl, mutates_args=(),
                                         device_types=("cpu", "cuda"))


@stack_backward.register_fake
def _stack_backward_fake(reserve, batch_sizes, sorted_indices, seed, dy, dh_n, dc_n, T, N, rows, mode, input_size,
                         hidden_size, num_layers, bidirectional, proj_size, bias, dropout, precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected, need_dx):
    cfg = stack_config(mode, input_size, hidden_size, num_layers, bidirectional, proj_size, bias, dropout, precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected)
    D = cfg.num_directions
    P = proj_size or hidden_size
    if not need_dx:
        dx = reserve.new_empty((0,))
    elif batch_sizes is None:
        dx = reserve.new_empty((T, N, input_size))
    else:
        dx = reserve.new_empty((rows, input_size))
    dh0 = reserve.new_empty((num_layers * D, N, P))
    dc0 = reserve.new_empty((num_layers * D, N, hidden_size)) if cfg.has_cell_state else reserve.new_empty((0,))
    return dx, dh0, dc0, [reserve.new_empty(tuple(shape)) for _, shape in cfg.param_specs()]


_CONFIG_ARGS = 17  # mode .. zoneout_expected, in both operators' signatures


class _StackBackward(torch.autograd.Function):
    """rnnkit::backward as an autograd.Function: its forward runs the operator on plain tensors
    (torch.func.grad hands an autograd.Function's forward unwrapped tensors, where the operator's
    NumPy views work), its backward refuses a second derivative. `anchors` (the forward's x, h0,
    c0 and weights) are not used: they make the gradients depend on what they are functions of, so
    that under create_graph they require grad and a second derivative reaches the refusal instead
    of silently treating them as constants (a loss linear in the outputs gives dy no graph)."""

    @staticmethod
    def forward(reserve, batch_sizes, sorted_indices, seed, dy, dh_n, dc_n, T, N, rows, cfg_args, need_dx,
                *anchors):
        backward = _backward_impl if type(reserve) is torch.Tensor else torch.ops.rnnkit.backward
        dx, dh0, dc0, grads = backward(reserve, batch_sizes, sorted_indices, seed, dy, dh_n, dc_n, T, N, rows,
                                       *cfg_args, need_dx)
        return (dx, dh0, dc0, *grads)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        _refuse_double_backward(ctx)

    @staticmethod
    def vmap(info, in_dims, *args):
        raise NotImplementedError(
            "rnnkit.torch: vmap over a gradient (torch.func.vmap(torch.func.grad(f)), per-sample gradients "
            "included) is not supported. For an ensemble take the gradient of the summed per-member loss "
            "instead, torch.func.grad(lambda p: vmap(f)(p).sum()): every member gets its own gradient, in one "
            "rnnkit call")


def _setup_context(ctx: Any, inputs: Sequence[Any], output: Sequence[Tensor]) -> None:
    x, batch_sizes, sorted_indices, h0, c0, weights, seed = inputs[:7]
    ctx.config_args = tuple(inputs[7:7 + _CONFIG_ARGS])
    ctx.training = inputs[-1]
    y, h_n, c_n, reserve = output
    ctx.T = x.shape[0] if batch_sizes is None else batch_sizes.shape[0]
    ctx.N = h_n.shape[1]
    ctx.rows = x.shape[0]
    ctx.has_c = c_n.dim() == 3
    ctx.save_for_backward(reserve, batch_sizes, sorted_indices, seed, x, h0, c0, *weights)
    # No gradient flows into the reserve (or an empty c_n), and rnnkit takes None for an output
    # nobody used: no zero tensors are made for them (a reserve-sized one each backward, otherwise).
    ctx.mark_non_differentiable(reserve)
    if not ctx.has_c:
        ctx.mark_non_differentiable(c_n)
    ctx.set_materialize_grads(False)


def _backward(ctx: Any, dy: Optional[Tensor], dh_n: Optional[Tensor], dc_n: Optional[Tensor],
              _d_reserve: Optional[Tensor]) -> Tuple[Any, ...]:
    if not ctx.training:
        raise RuntimeError(
            "rnnkit::forward: backward through a forward run with training=False (it kept no reserve); "
            "the rnnkit.torch modules pass training=True whenever a gradient is wanted")
    reserve, batch_sizes, sorted_indices, seed, *anchors = ctx.saved_tensors
    needs = ctx.needs_input_grad
    # A plain backward: no create_graph (autograd enables grad mode in backward only for that) and
    # no torch.func transform, so no autograd record of this backward is wanted.
    plain = not torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active()
    cache = getattr(ctx, "cache", None)  # eager calls only (_Stack)
    if getattr(ctx, "reserve_spent", False):
        # A retained graph backpropagated again after an eager backward used the reserve up: the
        # same forward again (the same seed, hence the same dropout masks) for a fresh one.
        x, h0, c0, *weights = anchors
        (_, _, _, reserve), cache = _forward_run(x, batch_sizes, sorted_indices, h0, c0, weights, seed,
                                                 *ctx.config_args, True, zero_reserve=False)
    dc_n = dc_n if ctx.has_c else None
    if cache is not None and plain:
        ctx.cache = None
        ctx.reserve_spent = True  # before the call: even a failed backward may have written over it
        dx, dh0, dc0, grads = _backward_run(reserve, batch_sizes, sorted_indices, seed, dy, dh_n, dc_n, ctx.T,
                                            ctx.N, ctx.rows, *ctx.config_args, bool(needs[0]), cache=cache)
    else:
        dx, dh0, dc0, *grads = _StackBackward.apply(
            reserve, batch_sizes, sorted_indices, seed, dy, dh_n, dc_n, ctx.T, ctx.N, ctx.rows, ctx.config_args,
            bool(needs[0]), *(a for a in anchors if a is not None))
    return (dx if needs[0] else None, None, None, dh0 if needs[3] else None,
            dc0 if ctx.has_c and needs[4] else None, list(grads), None) + (None,) * (_CONFIG_ARGS + 1)


stack_forward.register_autograd(_backward, setup_context=_setup_context)


def _refuse_double_backward(ctx: Any, *grads: Any) -> Tuple[Any, ...]:
    # rnnkit's BPTT has no derivative of its own: refusing beats handing back gradients that
    # silently lack their second-order terms. (Registered, rather than refusing create_graph in
    # _backward, because tracers such as AOTAutograd trace the backward with create_graph.)
    raise RuntimeError(
        "rnnkit.torch: double backward (a gradient of a gradient: create_graph=True, a gradient "
        "penalty, torch.autograd.gradgradcheck) is not supported: rnnkit's BPTT has no derivative of "
        "its own; use torch.nn's module for second-order gradients")


stack_backward.register_autograd(_refuse_double_backward)


# ---- vmap ---------------------------------------------------------------------------------------
# torch.func.vmap over rnnkit::forward, as one call of the operator:
#   - weights shared (vmap over data): the vmapped dimension joins the batch, [T, E*N, C];
#   - weights batched (an ensemble, torch.func.stack_module_state): the E members become one
#     stack of hidden size E*H whose weights are block-diagonal (member e's units are the e-th block
#     of every gate), built from the stacked weights with differentiable torch ops, so gradients
#     flow back to each member. It computes E times the FLOPs of E separate members (the zero
#     blocks), in one call with the GEMMs of one stack. LayerNorm cells normalise over the whole
#     hidden vector, which would mix the members: those run member by member.
# The reserve is the combined call's own, unbatched.

# The eager forward hands its cache to setup_context (which autograd calls right after forward,
# in the same thread) with the reserve it belongs to; anything else finds no cache for its reserve.
_handoff = threading.local()


class _Stack(torch.autograd.Function):
    """rnnkit::forward with the operators' backward, as an autograd.Function with a vmap rule: the
    form in which functorch (torch.func.vmap, grad over vmap) takes a batching rule that itself
    records autograd. The modules call this; tracers see the operators inside it.

    Eager calls (plain tensors) also keep the forward's ``_core.Cache``, and their first plain
    backward uses it up (``_backward_run(cache=...)``), which is rnnkit's own BPTT and faster than
    reading the reserve; that leaves the reserve holding gate gradients, so a second backward
    through a retained graph runs the forward again for a fresh one (``_backward``)."""

    @classmethod
    def apply(cls, *args: Any) -> Any:
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        # Function.apply without transforms, less its binding of the arguments to forward's
        # signature (inspect, ~20 us a call), which only fills in defaults: forward has none and
        # every caller passes every argument positionally.
        return super(torch.autograd.Function, cls).apply(*_unwrap_dead_wrappers(args))

    @staticmethod
    def forward(x, batch_sizes, sorted_indices, h0, c0, seed, cfg_args, training, *weights):
        # Plain tensors: the operator's implementation itself (the dispatcher's round trip would only
        # add its overhead, ~20 us a call); a tracer's tensors (fake, functional): the operator.
        if type(x) is torch.Tensor:
            outputs, cache = _forward_run(x, batch_sizes, sorted_indices, h0, c0, list(weights), seed, *cfg_args,
                                          training, zero_reserve=False)
            _handoff.pending = (outputs[3], cache)
            return outputs
        return torch.ops.rnnkit.forward(x, batch_sizes, sorted_indices, h0, c0, list(weights), seed, *cfg_args,
                                        training)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pending, _handoff.pending = getattr(_handoff, "pending", None), None
        ctx.cache = pending[1] if pending is not None and pending[0] is output[3] else None
        if torch._C._autograd._top_saved_tensors_default_hooks(False) is not None:
            # Saved-tensor hooks (torch.utils.checkpoint, offloading) manage what backward keeps;
            # a cache held beside them would keep the reserve's memory alive behind their back.
            ctx.cache = None
        x, batch_sizes, sorted_indices, h0, c0, seed, cfg_args, training, *weights = inputs
        _setup_context(ctx, (x, batch_sizes, sorted_indices, h0, c0, weights, seed, *cfg_args, training), output)

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, d_reserve):
        dx, _, _, dh0, dc0, grads, _ = _backward(ctx, dy, dh_n, dc_n, d_reserve)[:7]
        return (dx, None, None, dh0, dc0, None, None, None, *grads)

    @staticmethod
    def vmap(info, in_dims, x, batch_sizes, sorted_indices, h0, c0, seed, cfg_args, training, *weights):
        x_dim, bs_dim, si_dim, h0_dim, c0_dim, seed_dim, _, _, *w_dims = in_dims
        return _vmap_forward(info, (x_dim, bs_dim, si_dim, h0_dim, c0_dim, w_dims, seed_dim), x, batch_sizes,
                             sorted_indices, h0, c0, weights, seed, *cfg_args, training)


def needs_grad(tensors: Sequence[Optional[Tensor]]) -> bool:
    """Whether autograd may want a gradient through a call on these tensors (None allowed)."""
    return torch.is_grad_enabled() and (
        any(t is not None and t.requires_grad for t in tensors)
        # Under torch.func transforms a vmapped tensor does not tell whether an outer grad tracks it.
        or torch._C._are_functorch_transforms_active())


def stack_call(x: Tensor, batch_sizes: Optional[Tensor], sorted_indices: Optional[Tensor], h0: Optional[Tensor],
               c0: Optional[Tensor], weights: Sequence[Tensor], seed: Optional[Tensor], cfg_args: Sequence[Any],
               training: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """rnnkit::forward (same arguments, the configuration as one tuple) with autograd and vmap."""
    if torch.compiler.is_compiling():
        # Tracers (torch.compile, torch.export) take the operator itself, with its registered autograd.
        return torch.ops.rnnkit.forward(x, batch_sizes, sorted_indices, h0, c0, list(weights), seed, *cfg_args,
                                        training)
    if (not training and type(x) is torch.Tensor and not torch._C._are_functorch_transforms_active()
            and not needs_grad((x, h0, c0, *weights))):
        # Inference that nothing differentiates: no autograd node to record (~0.1 ms a call).
        return _forward_run(x, batch_sizes, sorted_indices, h0, c0, list(weights), seed, *cfg_args, training,
                            zero_reserve=False)[0]
    return _Stack.apply(x, batch_sizes, sorted_indices, h0, c0, seed, tuple(cfg_args), training, *weights)


def _moved(t: Optional[Tensor], dim: Optional[int], E: int) -> Optional[Tensor]:
    """t with its vmapped dimension first ([E, ...]); an unbatched t expanded to E."""
    if t is None:
        return None
    if dim is None:
        return t.unsqueeze(0).expand(E, *t.shape)
    return t.movedim(dim, 0)


def _combine_rows(w: Tensor, G: int) -> Tensor:
    """[E, G*H, ...] -> [G*E*H, ...]: gate-major, then member, then unit."""
    E, GH = w.shape[0], w.shape[1]
    rest = w.shape[2:]
    return w.reshape(E, G, GH // G, *rest).transpose(0, 1).reshape(G * E * (GH // G), *rest)


def _combine_matrix(w: Tensor, G: int, in_blocks: int, eye: Tensor) -> Tensor:
    """[E, G*H, B*K] -> block-diagonal [G*E*H, B*E*K] (B input blocks of width K per member: the
    directions of the layer below, or 1)."""
    E, GH, BK = w.shape
    H, K = GH // G, BK // in_blocks
    blocks = torch.einsum("egjbk,ef->gejbfk", w.reshape(E, G, H, in_blocks, K), eye)
    return blocks.reshape(G * E * H, in_blocks * E * K)


def _vmap_forward(info, in_dims, x, batch_sizes, sorted_indices, h0, c0, weights, seed, mode, input_size,
                  hidden_size, num_layers, bidirectional, proj_size, bias, dropout, precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected, training):
    E = info.batch_size
    x_dim, bs_dim, si_dim, h0_dim, c0_dim, w_dims, seed_dim = in_dims[:7]
    if bs_dim is not None or si_dim is not None or seed_dim is not None:
        raise ValueError("rnnkit::forward under vmap: batch_sizes, sorted_indices and the dropout seed must be "
                         "the same for every member (not vmapped)")
    cfg_args = (mode, input_size, hidden_size, num_layers, bidirectional, proj_size, bias, dropout, precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected)
    cfg = stack_config(*cfg_args)
    D, L, H = cfg.num_directions, num_layers, hidden_size
    P = proj_size or hidden_size
    packed = batch_sizes is not None
    if all(d is None for d in w_dims):
        if packed:
            raise ValueError("rnnkit::forward under vmap: vmapping packed data over shared weights is not "
                             "supported (pack the members' sequences into one PackedSequence instead)")
        # Shared weights: the members are more sequences of one batch.
        xs = _moved(x, x_dim, E)  # [E, T, N, C]
        _, T, N, C = xs.shape
        x_c = xs.permute(1, 0, 2, 3).reshape(T, E * N, C)

        def fold(s: Optional[Tensor], dim: Optional[int]) -> Optional[Tensor]:
            if s is None:
                return None
            s = _moved(s, dim, E)  # [E, L*D, N, width] -> [L*D, E*N, width], as x_c
            return s.transpose(0, 1).reshape(s.shape[1], E * N, s.shape[3])

        y, h_n, c_n, reserve = stack_call(x_c, None, None, fold(h0, h0_dim), fold(c0, c0_dim), list(weights),
                                          seed, cfg_args, training)
        y = y.reshape(T, E, N, D * P).transpose(0, 1)
        h_n = h_n.reshape(L * D, E, N, P).transpose(0, 1)
        if cfg.has_cell_state:
            c_n = c_n.reshape(L * D, E, N, H).transpose(0, 1)
        return (y, h_n, c_n, reserve), (0, 0, 0 if cfg.has_cell_state else None, None)
    if mode in ("LN_LSTM", "LN_GRU"):
        outs = []
        xs, h0s, c0s = _moved(x, x_dim, E), _moved(h0, h0_dim, E), _moved(c0, c0_dim, E)
        ws = [_moved(w, d, E) for w, d in zip(weights, w_dims)]
        for e in range(E):
            outs.append(stack_call(xs[e], batch_sizes, sorted_indices, None if h0s is None else h0s[e],
                                   None if c0s is None else c0s[e], [w[e] for w in ws], seed, cfg_args, training))
        y, h_n, c_n, _ = (torch.stack(parts) for parts in zip(*outs))
        return (y, h_n, c_n, outs[0][3]), (0, 0, 0, None)
    # An ensemble: one stack of E*H units with block-diagonal weights.
    G = cfg.gates
    eye = torch.eye(E, dtype=x.dtype)
    combined = []
    for (name, _), w, d in zip(cfg.param_specs(), weights, w_dims):
        w = _moved(w, d, E)
        layer = int(name.split("_l")[-1].split("_")[0])
        if name.startswith("weight_ih"):
            if layer == 0 and x_dim is None:
                combined.append(_combine_rows(w, G))  # every member reads the same x
            else:
                combined.append(_combine_matrix(w, G, 1 if layer == 0 else D, eye))
        elif name.startswith("weight_hh"):
            combined.append(_combine_matrix(w, G, 1, eye))
        elif name.startswith("weight_hr"):
            combined.append(_combine_matrix(w, 1, 1, eye))
        elif name.startswith("weight_peephole"):  # [E, 3, H] -> [3, E*H]
            combined.append(_combine_rows(w.reshape(E, -1), 3).reshape(3, -1))
        else:  # biases
            combined.append(_combine_rows(w, G))
    C_c = input_size if x_dim is None else E * input_size
    if x_dim is None:
        x_c = x
    elif packed:
        xs = _moved(x, x_dim, E)  # [E, rows, C]
        x_c = xs.permute(1, 0, 2).reshape(xs.shape[1], C_c)
    else:
        xs = _moved(x, x_dim, E)
        x_c = xs.permute(1, 2, 0, 3).reshape(xs.shape[1], xs.shape[2], C_c)

    def state(s, dim, width):
        if s is None:
            return None
        s = _moved(s, dim, E)  # [E, L*D, N, width]
        return s.permute(1, 2, 0, 3).reshape(s.shape[1], s.shape[2], E * width)

    cfg_c = (mode, C_c, E * H, L, bidirectional, E * proj_size if proj_size else 0, bias, dropout, precision, reverse, cell_options, weight_dropout, zoneout, zoneout_cell, input_dropout, recurrent_dropout, zoneout_expected)
    y, h_n, c_n, reserve = stack_call(x_c.contiguous(), batch_sizes, sorted_indices, state(h0, h0_dim, P),
                                      state(c0, c0_dim, H), combined, seed, cfg_c, training)
    if packed:
        rows = y.shape[0]
        y = y.reshape(rows, D, E, P).permute(2, 0, 1, 3).reshape(E, rows, D * P)
    else:
        T, N = y.shape[0], y.shape[1]
        y = y.reshape(T, N, D, E, P).permute(3, 0, 1, 2, 4).reshape(E, T, N, D * P)
    h_n = h_n.reshape(L * D, h_n.shape[1], E, P).permute(2, 0, 1, 3)
    if cfg.has_cell_state:
        c_n = c_n.reshape(L * D, c_n.shape[1], E, H).permute(2, 0, 1, 3)
    return (y, h_n, c_n, reserve), (0, 0, 0 if cfg.has_cell_state else None, None)

