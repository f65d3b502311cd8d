"""Recurrent layers: thin Python objects that own parameters and gradients and call ``rnnkit._core``.

The layers follow PyTorch's ``torch.nn.RNN`` / ``LSTM`` / ``GRU``: constructor arguments, parameter
names and shapes (the state_dict keys), gate order, input ``[T, N, C]`` (``[N, T, C]`` with
``batch_first``; ``[T, C]`` unbatched), states ``[num_layers * num_directions, N, H]``, default init
U(-1/sqrt(H), 1/sqrt(H)). Training follows PyTorch's habit: ``backward`` *accumulates* into
``layer.grads`` and ``zero_grad()`` clears them.

All numerics run in C++ with the GIL released; this module only validates (through ``_validate``),
arranges memory (time-major, contiguous) and keeps the forward's cache for backward. The classes
themselves are built from the one table of cells and layer classes (``_cells``), as the PyTorch
bridge's are.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import _core
from . import _device as D
from . import _validate as V
from ._cells import LAYER_CLASSES, Cell, Family, LayerClass, StackOptions, make_layer_class, onnx_keywords
from ._guard import TrainingGuard
from .train import init as _init

State = Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]

# This family's constructor: PyTorch's positional parameters, then keyword-only dtype and seed.
NUMPY_FAMILY = Family(
    positional=(),
    keyword=(("dtype", "float32"), ("seed", None)),
    doc="Same constructor as PyTorch's class of the same name, plus keyword-only ``dtype`` "
        '("float32"/"float64"), ``seed``, ``init`` and ``init_gain`` (see ``rnnkit.init``).',
)



def _is_step_array(a: Any, shape: Tuple[int, ...], dtype: np.dtype) -> bool:
    """Whether `a` is a state array a step returned: exactly `shape` and `dtype`, C-contiguous."""
    return type(a) is np.ndarray and a.shape == shape and a.dtype == dtype and a.flags.c_contiguous

class _RecurrentLayer(StackOptions):
    """Shared implementation of every recurrent layer (see the classes below for the math)."""

    def _init_stack(self, spec: LayerClass, cell: Cell, options: Mapping[str, Any]) -> None:
        self._set_stack_options(spec, cell, options)
        self.dtype = V.resolve_dtype(options["dtype"])
        if self.precision == "bfloat16" and self.dtype != np.float32:
            raise ValueError(f"precision: expected 'float32' with dtype={self.dtype.name} (bfloat16 GEMMs read "
                             "float32 parameters), got 'bfloat16'")
        self._config = _core.StackConfig(*self._config_args(self.dropout))
        self._specs: List[Tuple[str, Tuple[int, ...]]] = [(n, tuple(s)) for n, s in self._config.param_specs()]
        self.training = True
        #: Where the parameters, gradients and computation live: "cpu" or "cuda" (``to()``).
        self.device = "cpu"
        #: Scan every call's inputs and results for NaN/Inf and stop at the first one (README,
        #: "Input rules"): ValueError for an input, FloatingPointError for a computed value.
        self.check_finite = False
        self._guard = TrainingGuard()
        self._cache: Optional[_core.Cache] = None
        self._cache_layout: Optional[Tuple[bool, bool]] = None
        self.params: Dict[str, np.ndarray] = {}
        self.grads: Dict[str, np.ndarray] = {}
        seed = V.check_seed("seed", options["seed"])
        init_seq, dropout_seq = np.random.SeedSequence(seed).spawn(2)
        #: The generator of dropout masks: each training forward with dropout draws one seed from
        #: it. Replace it (e.g. ``np.random.default_rng(0)``) to replay the same masks.
        self.dropout_rng = np.random.default_rng(dropout_seq)
        self._init_rng = np.random.default_rng(init_seq)
        self.reset_parameters()

    # ---- parameters -------------------------------------------------------------------------
    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """Draws fresh parameters with this layer's ``init`` scheme (see ``rnnkit.init``) and zeroes
        the gradients. With ``seed`` the draw starts from a new generator seeded with it; without,
        it continues the layer's own (seeded at construction)."""
        if seed is not None:
            self._init_rng = np.random.default_rng(V.check_seed("seed", seed))
        self.params = _init.initialise(
            self._specs, self.hidden_size, self._config.gates, self.dtype, self._init_rng,
            self._scheme, self.init_gain, self.forget_bias,
        )
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._cache = None
        self._guard.set_pending(False)
        if getattr(self, "device", "cpu") != "cpu":
            self._move_arrays(D.to_device)
        self.clamp_recurrent()

    def clamp_recurrent(self) -> None:
        """IndRNN with ``recurrent_max_abs=r``: clamps every recurrent vector u to [-r, r] (in
        place, where the parameters live). Nothing for other layers."""
        if self.recurrent_max_abs is None:
            return
        _core.clamp_arrays([p for n, p in self.params.items() if n.startswith("weight_hh")], self.recurrent_max_abs)

    def _after_optimizer_step(self) -> None:
        self.clamp_recurrent()

    # ---- device -------------------------------------------------------------------------------
    def to(self, device: Any):
        """Moves the parameters and gradients to ``device`` ("cpu" or "cuda") and computes there from
        then on; returns the layer. On "cuda", inputs may be NumPy arrays (copied to the device) or
        rnnkit device arrays, and outputs are device arrays (``rnnkit.to_numpy`` copies one to the
        host). A pending training forward is dropped."""
        device = D.check_device("device", device)
        if device == self.device:
            return self
        self._move_arrays(D.to_device if device == "cuda" else D.to_numpy)
        self.device = device
        return self

    def cuda(self):
        """``to("cuda")``."""
        return self.to("cuda")

    def cpu(self):
        """``to("cpu")``."""
        return self.to("cpu")

    def _move_arrays(self, move) -> None:
        self.params = {name: move(p) for name, p in self.params.items()}
        self.grads = {name: move(g) for name, g in self.grads.items()}
        self._cache = None
        self._cache_layout = None
        self._guard.set_pending(False)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        device = state.get("device", "cpu")
        self.__dict__.update(state)
        self.device = "cpu"  # pickled with host copies (__getstate__)
        if device != "cpu":
            self.to(device)

    def __getstate__(self) -> Dict[str, Any]:
        """For pickle and copy.deepcopy: everything but a training forward's cache, so a copy
        starts with no forward awaiting its backward (and a guard of its own)."""
        state = self.__dict__.copy()
        state["_cache"] = None
        if self.device != "cpu":  # device memory is saved as host copies and moved back on load
            state["params"] = {n: D.to_numpy(p) for n, p in self.params.items()}
            state["grads"] = {n: D.to_numpy(g) for n, g in self.grads.items()}
            state["_cache_layout"] = None
        return state

    def zero_grad(self) -> None:
        """Sets every gradient to zero (in place)."""
        if self.device != "cpu":
            for g in self.grads.values():
                g.zero_()
            return
        V.zero_arrays("grads", self.grads)

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of the parameters, keyed by PyTorch's names, in PyTorch's order (host arrays, also
        for a layer on the GPU)."""
        return D.host_state_dict(self.params, self._specs)

    def load_state_dict(self, state: Any) -> None:
        """Copies parameters in from a mapping with exactly this layer's keys and shapes, e.g.
        ``{k: v.numpy() for k, v in torch_lstm.state_dict().items()}``. Floating arrays of any
        precision are converted to the layer's dtype. Nothing changes if any entry is wrong."""
        checked = V.check_state_dict("state_dict", state, dict(self._specs), self.dtype)
        D.load_checked_params(self.params, checked, self._specs, self.dtype)

    def _param_list(self) -> List[np.ndarray]:
        if self.device != "cpu":
            return self._device_list("params", self.params)
        return [
            V.check_owned_array(f"params[{name!r}]", self.params.get(name), shape, self.dtype, writable=False)
            for name, shape in self._specs
        ]

    def _device_list(self, label: str, arrays: Dict[str, Any]) -> List[Any]:
        return D.device_list(label, arrays, self._specs, self.dtype, "layer")

    def _grad_list(self) -> List[np.ndarray]:
        if self.device != "cpu":
            return self._device_list("grads", self.grads)
        return [
            V.check_owned_array(f"grads[{name!r}]", self.grads.get(name), shape, self.dtype, writable=True)
            for name, shape in self._specs
        ]

    # ---- mode -------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        """Training mode (the default): forward keeps what backward needs, dropout is active."""
        self.training = V.check_bool("mode", mode)
        return self

    def eval(self):
        """Inference mode: forward caches nothing and applies no dropout."""
        return self.train(False)

    # ---- forward / backward -----------------------------------------------------------------
    def __call__(self, x: Any, h0: Any = None, lengths: Any = None):
        return self.forward(x, h0, lengths)

    def forward(self, x: Any, h0: Any = None, lengths: Any = None):
        """Runs the stack over a batch of sequences.

        Args:
            x: ``[T, N, C]`` (``[N, T, C]`` with batch_first; ``[T, C]`` for one unbatched sequence).
            h0: initial state ``[L*D, N, P]`` (``[L*D, P]`` unbatched) or None for zeros; for LSTM
                cells a tuple ``(h0, c0)`` with ``c0`` ``[L*D, N, H]``. L = num_layers, D = 2 if
                bidirectional else 1, P = proj_size or hidden_size.
            lengths: optional, one integer per batch element (any order), 0 <= length <= T:
                steps at and after a sequence's length are padding. Their outputs are 0, ``h_n`` is
                each sequence's state after its own last valid step, the reverse direction starts
                at each sequence's last valid step, and backward ignores them. A sequence of length
                0 has ``h_n`` (and ``c_n``) 0, as in ONNX Runtime, and no gradient reaches its
                ``h0``. The lengths are remembered for ``backward``.

        Returns:
            ``(y, h_n)``, for LSTM cells ``(y, (h_n, c_n))``. ``y`` is ``[T, N, D*P]`` (batch_first:
            ``[N, T, D*P]``; unbatched ``[T, D*P]``): the last layer's outputs, the forward
            direction's first. ``h_n``/``c_n`` are shaped like ``h0``/``c0``. On a layer moved to
            "cuda" they are device arrays (see ``to``).
        """
        if self.device != "cpu":
            return self._forward_device(x, h0, lengths)
        x = V.as_float_array("x", x, self.dtype)
        layout = "[N, T, input_size]" if self.batch_first else "[T, N, input_size]"
        V.check_rank("x", x, (2, 3), f"{layout} or [T, input_size]")
        unbatched = x.ndim == 2
        x_tm = self._to_time_major(x, self.batch_first, unbatched)
        V.check_not_empty("x", x_tm, ("sequence length T", "batch size N"))
        T, N, C = x_tm.shape
        if C != self.input_size:
            raise ValueError(
                f"x: expected input_size {self.input_size} in the last dimension, got {C} (shape {V.shape_str(x.shape)})"
            )
        h0_arr, c0_arr = self._check_state_in(h0, N, unbatched)
        lengths_arr = None
        if lengths is not None:
            if unbatched:
                raise ValueError("lengths: expected None for an unbatched [T, C] input, got lengths")
            lengths_arr = V.check_lengths("lengths", lengths, N, T, minimum=0)

        check = self.check_finite
        if check:
            for name, arr in (("x", x), ("h0", h0_arr), ("c0", c0_arr)):
                V.check_finite_input(name, arr)
            for name, p in self.params.items():
                V.check_finite_input(f"params[{name!r}]", p)
        dropout_seed = 0
        if self._draws_seed(self.training):
            dropout_seed = int(self.dropout_rng.integers(0, 2**63))
        params = self._param_list()
        if self.training:
            with self._guard.training_call("forward", forward=True):
                y, h_n, c_n, cache = _core.forward(
                    self._config, params, x_tm, h0_arr, c0_arr, lengths_arr, True, dropout_seed
                )
                self._cache = cache
                self._cache_layout = (self.batch_first, unbatched)
                self._guard.set_pending(True)
        else:
            # Inference leaves a pending training forward's cache alone (and any thread may run it).
            y, h_n, c_n, _ = _core.forward(self._config, params, x_tm, h0_arr, c0_arr, lengths_arr, False, 0)
        if check:
            self._check_finite_result("forward", "the output y", y, h_n, c_n, last=False)
        y = self._to_user_layout(y, self.batch_first, unbatched)
        h_n = self._state_out(h_n, unbatched)
        if self._has_cell_state:
            return y, (h_n, self._state_out(c_n, unbatched))
        return y, h_n

    def backward(self, dy: Any = None, dh_n: Any = None, *, compute_dx: bool = True):
        """Backpropagation through time for the last training ``forward``.

        Args:
            dy: dL/dy, shaped like that forward's ``y`` (None for zeros).
            dh_n: dL/dh_n shaped like its ``h_n`` (None for zeros); for LSTM cells a tuple
                ``(dh_n, dc_n)`` whose entries may be None (a bare array or nested list of numbers
                means ``dh_n`` only; a list of two arrays is read as the pair).
            compute_dx: False skips the input gradient (one GEMM family: a real saving for a first
                layer fed raw data); ``dx`` is then None.

        Returns:
            ``(dx, dh0)``, for LSTM cells ``(dx, (dh0, dc0))``, shaped like that forward's ``x``
            and states. Parameter gradients are **accumulated** into ``self.grads``. Padded steps
            (``lengths``) get zero gradient. Each forward can be backpropagated once.
        """
        if self._cache is None:
            raise RuntimeError(
                "backward: expected a preceding forward() in training mode (layer.training = True) "
                "that has not been backpropagated yet, got none"
            )
        compute_dx = V.check_bool("compute_dx", compute_dx)
        if self.device != "cpu":
            return self._backward_device(dy, dh_n, compute_dx)
        T, N = self._cache.shape
        batch_first, unbatched = self._cache_layout
        width = self.num_directions * self.state_size
        dy_tm = None
        if dy is not None:
            dy = V.as_float_array("dy", dy, self.dtype)
            y_shape = (T, width) if unbatched else (N, T, width) if batch_first else (T, N, width)
            V.check_shape("dy", dy, y_shape, "(the shape of y)")
            dy_tm = self._to_time_major(dy, batch_first, unbatched)
        dh_arr, dc_arr = self._check_state_grad(dh_n, N, unbatched)
        if dy_tm is None and dh_arr is None and dc_arr is None:
            raise ValueError("backward: expected dy, dh_n or both, got neither")
        check = self.check_finite
        if check:
            for name, arr in (("dy", dy_tm), ("dh_n", dh_arr), ("dc_n", dc_arr)):
                V.check_finite_input(name, arr)
        with self._guard.training_call("backward", forward=False):
            cache = self._cache
            if cache is None:  # another thread's backward took it while this one validated
                raise RuntimeError("backward: expected a preceding forward() in training mode that has "
                                   "not been backpropagated yet, got none")
            self._cache = None
            self._cache_layout = None
            self._guard.set_pending(False)
            dx, dh0, dc0 = _core.backward(cache, dy_tm, dh_arr, dc_arr, self._grad_list(), compute_dx)
        if check:
            self._check_finite_result("backward", "dx", dx, dh0, dc0, last=True)
            for name, g in self.grads.items():
                if not np.isfinite(g).all():
                    raise FloatingPointError(f"backward: the gradient grads[{name!r}] became non-finite")
        if dx is not None:
            dx = self._to_user_layout(dx, batch_first, unbatched)
        dh0 = self._state_out(dh0, unbatched)
        if self._has_cell_state:
            return dx, (dh0, self._state_out(dc0, unbatched))
        return dx, dh0

    @staticmethod
    def _check_finite_result(where: str, what: str, seq_tm: Optional[np.ndarray], h: np.ndarray,
                             c: Optional[np.ndarray], last: bool) -> None:
        """check_finite mode: FloatingPointError at the first non-finite step of a computed
        sequence (time-major), going forwards, or backwards (``last``) for gradients."""
        if seq_tm is not None:
            found = V.first_nonfinite_step(seq_tm, last=last)
            if found is not None:
                t, n = found
                order = "the first step reached going backwards" if last else "the first such step"
                raise FloatingPointError(f"{where}: {what} became non-finite at step t={t} (batch element {n}; "
                                         f"{order}) from finite inputs and parameters")
        for name, arr in (("h", h), ("c", c)):
            if arr is not None and not np.isfinite(arr).all():
                raise FloatingPointError(f"{where}: the {name} state became non-finite from finite inputs and parameters")

    # ---- streaming ----------------------------------------------------------------------------
    def step(self, x_t: Any, state: Any = None):
        """One timestep for N streams, in one C++ call with nothing allocated but the results:
        the low-latency path for streaming inference (no cache, no dropout, whatever the mode).

        Args:
            x_t: ``[N, input_size]`` (or ``[input_size]`` for one stream).
            state: ``[num_layers, N, P]`` (LSTM cells: a tuple ``(h, c)``), or None for zeros.

        Returns:
            ``(y_t, state)``: the top layer's output ``[N, P]`` (``[P]`` for a 1-D ``x_t``) and the
            new state (fresh arrays: keep the old one to branch). Unidirectional layers only.
            A step computes in float32 whatever ``precision`` is: it reads each weight once, and a
            bfloat16 copy of the weights per step would cost more than the step saves. For
            bfloat16 steps, from weights converted once, use ``stepper()``.
        """
        if self.device != "cpu":
            self._check_steppable("step")
            return self._step_device(x_t, state)
        x, h, c, single = self._step_inputs(x_t, state)
        y, h_new, c_new = _core.step(self._config, [self.params[n] for n, _ in self._specs], x, h, c)
        return self._step_out(y, h_new, c_new, single)

    def stepper(self) -> "Stepper":
        """A snapshot of this layer for streaming: ``stepper().step(x_t, state)`` is ``step()``
        computed from copies of the parameters taken now. At ``precision="bfloat16"`` every weight
        matrix is converted to bfloat16 and packed once, here, so each step reads half the bytes
        of a float32 step and computes what ``forward()`` at bfloat16 computes (``step()`` itself
        computes in float32); at float32 the copies are used as they are.

        Later changes to the layer's parameters (an optimizer step, ``load_state_dict``, writing
        into ``params``) do not reach a stepper: call its ``refresh()`` or make a new one, as a
        converted model is re-exported after training. CPU, unidirectional layers."""
        return Stepper(self)

    def _check_steppable(self, what: str) -> None:
        if self.direction != "forward":
            raise ValueError(f"{what}: expected a unidirectional forward layer (the reverse direction needs the "
                             f"future), got direction={self.direction!r}")

    def _step_inputs(self, x_t: Any, state: Any):
        """(x [N, C], h [L, N, P], c [L, N, H] or None, single) of a CPU step, checked."""
        # The streaming hot path, tested in one expression: x [N, C] of the layer's dtype and the
        # state the last step returned (a step of a small layer is a few microseconds, and this
        # check was a fifth of it). Anything else takes the general path below.
        dt = self.dtype
        if type(x_t) is np.ndarray and x_t.ndim == 2 and x_t.dtype == dt and self.direction == "forward":
            N, C = x_t.shape
            L = self.num_layers
            if self._has_cell_state:
                if type(state) is tuple and len(state) == 2:
                    h, c = state
                    if (_is_step_array(h, (L, N, self.state_size), dt) and _is_step_array(c, (L, N, self.hidden_size), dt)
                            and C == self.input_size and N and x_t.flags.c_contiguous):
                        return x_t, h, c, False
            elif (_is_step_array(state, (L, N, self.state_size), dt) and C == self.input_size and N
                    and x_t.flags.c_contiguous):
                return x_t, state, None, False
        self._check_steppable("step")
        x = x_t
        if not (type(x) is np.ndarray and x.dtype == self.dtype and x.ndim == 2 and x.flags.c_contiguous):
            x = V.as_float_array("x_t", x_t, self.dtype)
            V.check_rank("x_t", x, (1, 2), "[N, input_size] or [input_size]")
        single = x.ndim == 1
        if single:
            x = x[None, :]
        N = x.shape[0]
        if x.shape[1] != self.input_size:
            raise ValueError(f"x_t: expected input_size {self.input_size} in the last dimension, got {x.shape[1]}")
        if N == 0:
            raise ValueError("x_t: expected batch size N >= 1, got an empty batch")
        L, P, H = self.num_layers, self.state_size, self.hidden_size
        if state is None:
            h = np.zeros((L, N, P), self.dtype)
            c = np.zeros((L, N, H), self.dtype) if self._has_cell_state else None
        elif self._has_cell_state:
            # What the last step returned goes straight through; anything else is checked and named.
            if not (type(state) is tuple and len(state) == 2 and state[0] is not None and state[1] is not None):
                state = V.split_state("state", state, True, type(self).__name__, pair=("h", "c"))
            h = self._step_state("state[0]", state[0], (L, N, P))
            c = self._step_state("state[1]", state[1], (L, N, H), cell_state=True)
        else:
            if type(state) is not np.ndarray:
                state, _ = V.split_state("state", state, False, type(self).__name__, pair=("h", "c"))
            h, c = self._step_state("state", state, (L, N, P)), None
        return x, h, c, single

    def _step_out(self, y: np.ndarray, h_new: np.ndarray, c_new: Optional[np.ndarray], single: bool):
        if single:
            y = y[0]
        return y, ((h_new, c_new) if self._has_cell_state else h_new)

    def _step_state(self, name: str, value: Any, shape: Tuple[int, ...], cell_state: bool = False) -> np.ndarray:
        if type(value) is np.ndarray and value.dtype == self.dtype and value.shape == shape and value.flags.c_contiguous:
            return value  # what the last step returned: no conversion (the streaming hot path)
        arr = V.as_float_array(name, value, self.dtype)
        V.check_shape(name, arr, shape, V.state_meaning("hidden_size" if cell_state else self._state_size_name))
        return arr

    # ---- the same calls on the CUDA backend (to("cuda")) -------------------------------------
    # Host inputs are checked as on the CPU, then copied; device inputs are checked for dtype and
    # shape here and rearranged on the device (batch_first and unbatched layouts). Outputs stay on
    # the device. check_finite copies what it scans to the host.
    def _device_seq_in(self, name: str, value: Any, batch_first: bool, expected: Optional[Tuple[int, ...]] = None):
        """(time-major device array, unbatched) for x or dy (dy in its forward's layout)."""
        layout = "[N, T, input_size]" if batch_first else "[T, N, input_size]"
        value = D.read_in_place(name, value, self.dtype)
        if D.is_device_array(value):
            D.check_device_array(name, value, self.dtype, ranks=(2, 3), meaning=f"{layout} or [T, input_size]")
            if expected is not None:
                D.check_device_array(name, value, self.dtype, shape=expected, meaning="(the shape of y)")
            unbatched = value.ndim == 2
            if unbatched:
                return value.reshape((value.shape[0], 1, value.shape[1])), True
            return (value.swapaxes01() if batch_first else value), False
        arr = V.as_float_array(name, value, self.dtype)
        if expected is None:
            V.check_rank(name, arr, (2, 3), f"{layout} or [T, input_size]")
        else:
            V.check_shape(name, arr, expected, "(the shape of y)")
        unbatched = arr.ndim == 2
        return D.to_device(self._to_time_major(arr, batch_first, unbatched)), unbatched

    def _device_seq_out(self, a_tm, batch_first: bool, unbatched: bool):
        if unbatched:
            return a_tm.reshape((a_tm.shape[0], a_tm.shape[2]))
        return a_tm.swapaxes01() if batch_first else a_tm

    def _device_state_in(self, name: str, value: Any, width: int, width_name: str, N: int, unbatched: bool):
        groups = self.num_layers * self.num_directions
        value = D.read_in_place(name, value, self.dtype)
        if D.is_device_array(value):
            D.check_device_array(name, value, self.dtype, self._state_shape(width, N, unbatched),
                                 meaning=V.state_meaning(width_name, unbatched))
            return value.reshape((groups, N, width))
        return D.to_device(self._check_state_array(name, value, width, width_name, N, unbatched))

    def _device_states(self, label: str, pair: Any, N: int, unbatched: bool, grad: bool):
        if pair is None:
            return None, None
        if self._has_cell_state and (isinstance(pair, tuple) or (isinstance(pair, list) and len(pair) == 2)):
            if len(pair) != 2:
                raise TypeError(f"{label}: expected a pair (h, c), got a sequence of length {len(pair)}")
            h, c = pair
        elif isinstance(pair, tuple):
            raise TypeError(f"{label}: expected an array for {type(self).__name__}, got a tuple")
        else:
            h, c = pair, None
        hname, cname = ("dh_n", "dc_n") if grad else ("h0", "c0")
        h = None if h is None else self._device_state_in(hname, h, self.state_size, self._state_size_name, N, unbatched)
        c = None if c is None else self._device_state_in(cname, c, self.hidden_size, "hidden_size", N, unbatched)
        return h, c

    def _device_state_out(self, h, unbatched: bool):
        if h is None or not unbatched:
            return h
        return h.reshape((h.shape[0], h.shape[2]))

    def _forward_device(self, x: Any, h0: Any, lengths: Any):
        x_tm, unbatched = self._device_seq_in("x", x, self.batch_first)
        T, N, C = x_tm.shape
        if T == 0 or N == 0:
            raise ValueError(f"x: expected sequence length T >= 1 and batch size N >= 1, got shape {V.shape_str(x.shape)}")
        if C != self.input_size:
            raise ValueError(f"x: expected input_size {self.input_size} in the last dimension, got {C} "
                             f"(shape {V.shape_str(x.shape)})")
        h0_d, c0_d = self._device_states("h0", h0, N, unbatched, grad=False)
        lengths_arr = None
        if lengths is not None:
            if unbatched:
                raise ValueError("lengths: expected None for an unbatched [T, C] input, got lengths")
            lengths_arr = V.check_lengths("lengths", D.to_numpy(lengths) if D.is_device_array(lengths) else lengths, N, T,
                                          minimum=0)
        check = self.check_finite
        if check:
            for name, arr in (("x", x_tm), ("h0", h0_d), ("c0", c0_d)):
                V.check_finite_input(name, None if arr is None else arr.numpy())
            for name, p in self.params.items():
                V.check_finite_input(f"params[{name!r}]", p.numpy())
        dropout_seed = 0
        if self._draws_seed(self.training):
            dropout_seed = int(self.dropout_rng.integers(0, 2**63))
        params = self._param_list()
        if self.training:
            with self._guard.training_call("forward", forward=True):
                y, h_n, c_n, cache = _core.forward(self._config, params, x_tm, h0_d, c0_d, lengths_arr, True,
                                                   dropout_seed)
                self._cache = cache
                self._cache_layout = (self.batch_first, unbatched)
                self._guard.set_pending(True)
        else:
            y, h_n, c_n, _ = _core.forward(self._config, params, x_tm, h0_d, c0_d, lengths_arr, False, 0)
        if check:
            self._check_finite_result("forward", "the output y", y.numpy(), h_n.numpy(),
                                      None if c_n is None else c_n.numpy(), last=False)
        y = self._device_seq_out(y, self.batch_first, unbatched)
        h_n = self._device_state_out(h_n, unbatched)
        if self._has_cell_state:
            return y, (h_n, self._device_state_out(c_n, unbatched))
        return y, h_n

    def _backward_device(self, dy: Any, dh_n: Any, compute_dx: bool):
        T, N = self._cache.shape
        batch_first, unbatched = self._cache_layout
        width = self.num_directions * self.state_size
        dy_tm = None
        if dy is not None:
            y_shape = (T, width) if unbatched else (N, T, width) if batch_first else (T, N, width)
            dy_tm, _ = self._device_seq_in("dy", dy, batch_first, y_shape)
        dh_d, dc_d = self._device_states("dh_n", dh_n, N, unbatched, grad=True)
        if dy_tm is None and dh_d is None and dc_d is None:
            raise ValueError("backward: expected dy, dh_n or both, got neither")
        if self.check_finite:
            for name, arr in (("dy", dy_tm), ("dh_n", dh_d), ("dc_n", dc_d)):
                V.check_finite_input(name, None if arr is None else arr.numpy())
        with self._guard.training_call("backward", forward=False):
            cache = self._cache
            if cache is None:
                raise RuntimeError("backward: expected a preceding forward() in training mode that has "
                                   "not been backpropagated yet, got none")
            self._cache = None
            self._cache_layout = None
            self._guard.set_pending(False)
            dx, dh0, dc0 = _core.backward(cache, dy_tm, dh_d, dc_d, self._grad_list(), compute_dx)
        if self.check_finite:
            self._check_finite_result("backward", "dx", None if dx is None else dx.numpy(), dh0.numpy(),
                                      None if dc0 is None else dc0.numpy(), last=True)
            for name, g in self.grads.items():
                if not np.isfinite(g.numpy()).all():
                    raise FloatingPointError(f"backward: the gradient grads[{name!r}] became non-finite")
        if dx is not None:
            dx = self._device_seq_out(dx, batch_first, unbatched)
        dh0 = self._device_state_out(dh0, unbatched)
        if self._has_cell_state:
            return dx, (dh0, self._device_state_out(dc0, unbatched))
        return dx, dh0

    def _step_device(self, x_t: Any, state: Any):
        x = D.device_float_array("x_t", x_t, self.dtype)
        D.check_device_array("x_t", x, self.dtype, ranks=(1, 2), meaning="[N, input_size] or [input_size]")
        single = x.ndim == 1
        if single:
            x = x.reshape((1, x.shape[0]))
        N = x.shape[0]
        if x.shape[1] != self.input_size:
            raise ValueError(f"x_t: expected input_size {self.input_size} in the last dimension, got {x.shape[1]}")
        if N == 0:
            raise ValueError("x_t: expected batch size N >= 1, got an empty batch")
        L, P, H = self.num_layers, self.state_size, self.hidden_size

        def state_in(name, value, shape, width_name):
            value = D.read_in_place(name, value, self.dtype)
            if D.is_device_array(value):
                return D.check_device_array(name, value, self.dtype, shape, meaning=V.state_meaning(width_name))
            arr = V.as_float_array(name, value, self.dtype)
            V.check_shape(name, arr, shape, V.state_meaning(width_name))
            return D.to_device(arr)

        if state is None:
            h = D.to_device(np.zeros((L, N, P), self.dtype))
            c = D.to_device(np.zeros((L, N, H), self.dtype)) if self._has_cell_state else None
        elif self._has_cell_state:
            if not (isinstance(state, tuple) and len(state) == 2 and state[0] is not None and state[1] is not None):
                raise TypeError(f"state: expected a pair (h, c) for {type(self).__name__}, got {type(state).__name__}")
            h = state_in("state[0]", state[0], (L, N, P), self._state_size_name)
            c = state_in("state[1]", state[1], (L, N, H), "hidden_size")
        else:
            if isinstance(state, tuple):
                raise TypeError(f"state: expected an array for {type(self).__name__}, got a tuple")
            h, c = state_in("state", state, (L, N, P), self._state_size_name), None
        y, h_new, c_new = _core.step(self._config, self._param_list(), x, h, c)
        if single:
            y = y.reshape((P,))
        return y, ((h_new, c_new) if self._has_cell_state else h_new)

    # ---- state shapes -----------------------------------------------------------------------
    def _state_shape(self, width: int, N: int, unbatched: bool) -> Tuple[int, ...]:
        groups = self.num_layers * self.num_directions
        return (groups, width) if unbatched else (groups, N, width)

    def _check_state_array(self, name: str, value: Any, width: int, width_name: str, N: int, unbatched: bool):
        arr = V.as_float_array(name, value, self.dtype)
        V.check_shape(name, arr, self._state_shape(width, N, unbatched), V.state_meaning(width_name, unbatched))
        return arr.reshape(self.num_layers * self.num_directions, N, width)

    def _check_state_in(self, h0: Any, N: int, unbatched: bool):
        if h0 is None:
            return None, None
        h, c = V.split_state("h0", h0, self._has_cell_state, type(self).__name__)
        h = self._check_state_array("h0", h, self.state_size, self._state_size_name, N, unbatched)
        c = None if c is None else self._check_state_array("c0", c, self.hidden_size, "hidden_size", N, unbatched)
        return h, c

    def _check_state_grad(self, dh_n: Any, N: int, unbatched: bool):
        if dh_n is None:
            return None, None
        dh, dc = dh_n, None
        # A tuple, or a list of two arrays/None, is the (dh_n, dc_n) pair; a nested list of numbers is
        # an array like any other argument (dh_n only), however many layers it spans.
        is_pair = isinstance(dh_n, tuple) or (
            isinstance(dh_n, list) and len(dh_n) == 2 and all(e is None or isinstance(e, np.ndarray) for e in dh_n))
        if self._has_cell_state and is_pair:
            if len(dh_n) != 2:
                raise TypeError(f"dh_n: expected (dh_n, dc_n), got a sequence of length {len(dh_n)}")
            dh, dc = dh_n
        elif isinstance(dh_n, tuple):
            raise TypeError(f"dh_n: expected an array for {type(self).__name__}, got a tuple")
        dh_arr = None if dh is None else self._check_state_array("dh_n", dh, self.state_size, self._state_size_name, N, unbatched)
        dc_arr = None if dc is None else self._check_state_array("dc_n", dc, self.hidden_size, "hidden_size", N, unbatched)
        return dh_arr, dc_arr

    # ---- layout: the compiled core is time-major, [T, N, ...] ---------------------------------
    @staticmethod
    def _to_time_major(a: np.ndarray, batch_first: bool, unbatched: bool) -> np.ndarray:
        if unbatched:
            return a[:, None, :]
        if batch_first:
            return V.c_array(a.transpose(1, 0, 2))
        return a

    @staticmethod
    def _to_user_layout(a_tm: np.ndarray, batch_first: bool, unbatched: bool) -> np.ndarray:
        """The inverse of _to_time_major."""
        if unbatched:
            return a_tm[:, 0, :]
        if batch_first:
            return V.c_array(a_tm.transpose(1, 0, 2))
        return a_tm

    @staticmethod
    def _state_out(h: np.ndarray, unbatched: bool) -> np.ndarray:
        return h[:, 0, :] if unbatched else h

    def __repr__(self) -> str:
        args = [str(self.input_size), str(self.hidden_size)]
        if self.num_layers != 1:
            args.append(f"num_layers={self.num_layers}")
        args.extend(self._class_option_reprs())
        for flag in ("batch_first", "bidirectional"):
            if getattr(self, flag):
                args.append(f"{flag}=True")
        if self.direction == "reverse":
            args.append("direction='reverse'")
        if not self.bias:
            args.append("bias=False")
        if self.dropout:
            args.append(f"dropout={self.dropout}")
        args.extend(self._regulariser_reprs())
        if self.proj_size:
            args.append(f"proj_size={self.proj_size}")
        if self.dtype != np.float32:
            args.append(f"dtype={self.dtype.name!r}")
        if self.precision != "float32":
            args.append(f"precision={self.precision!r}")
        args.extend(f"{k}={v!r}" for k, v in onnx_keywords(self).items())
        if self.recurrent_max_abs is not None:
            args.append(f"recurrent_max_abs={self.recurrent_max_abs!r}")
        text = f"rnnkit.{type(self).__name__}({', '.join(args)})"
        return text if self.device == "cpu" else f"{text}.to({self.device!r})"


# The public classes, built from the one table (_cells.LAYER_CLASSES).
RNN = make_layer_class(LAYER_CLASSES["RNN"], _RecurrentLayer, NUMPY_FAMILY, __name__)
LSTM = make_layer_class(LAYER_CLASSES["LSTM"], _RecurrentLayer, NUMPY_FAMILY, __name__)
GRU = make_layer_class(LAYER_CLASSES["GRU"], _RecurrentLayer, NUMPY_FAMILY, __name__)
LayerNormLSTM = make_layer_class(LAYER_CLASSES["LayerNormLSTM"], _RecurrentLayer, NUMPY_FAMILY, __name__)
LayerNormGRU = make_layer_class(LAYER_CLASSES["LayerNormGRU"], _RecurrentLayer, NUMPY_FAMILY, __name__)
IndRNN = make_layer_class(LAYER_CLASSES["IndRNN"], _RecurrentLayer, NUMPY_FAMILY, __name__)
MinGRU = make_layer_class(LAYER_CLASSES["MinGRU"], _RecurrentLayer, NUMPY_FAMILY, __name__)
MinLSTM = make_layer_class(LAYER_CLASSES["MinLSTM"], _RecurrentLayer, NUMPY_FAMILY, __name__)


class _StepSnapshot:
    """What ``Stepper`` and ``network.NetworkStepper`` share: the snapshot of an owner's
    parameters (``refresh()``), packed in bfloat16 by ``_pack`` at that precision, else copied."""

    _what = "layer"

    def __init__(self, owner: Any) -> None:
        self._owner = owner
        self.refresh()

    @staticmethod
    def _precision_of(owner: Any) -> str:
        return owner.precision

    @staticmethod
    def _pack(config: Any, params: List[np.ndarray]) -> Any:
        return _core.pack_step(config, params)

    def refresh(self) -> None:
        """Takes the owner's current parameters (after training, loading, editing them)."""
        owner = self._owner
        owner._check_steppable("stepper")
        if owner.device != "cpu":
            raise ValueError(f"stepper: expected a {self._what} on the CPU (a CUDA {self._what}'s step() reads its "
                             f"weights on the device), got device={owner.device!r}")
        #: The precision the steps compute at: the owner's.
        self.precision = self._precision_of(owner)
        self._take(owner._config, [owner.params[n] for n, _ in owner._specs])

    def _take(self, config: Any, params: List[np.ndarray]) -> None:
        """The snapshot of `params` (copied; packed at bfloat16)."""
        if self.precision == "bfloat16":
            self._snapshot = self._pack(config, params)
            self._params = None
        else:
            self._snapshot = None
            self._params = [np.array(p, copy=True, order="C") for p in params]

    # Pickling and copying keep the snapshot's own parameters (not the owner's current ones) and
    # its configuration, and pack them again on loading (the packed form is a cache of them); the
    # owner travels too (its checks serve step()), but loading reads nothing of it, so an owner
    # that holds its own stepper loads as well.
    def __getstate__(self) -> Dict[str, Any]:
        copies = self._snapshot.params if self._snapshot is not None else self._params
        return {"owner": self._owner, "precision": self.precision, "config": self._owner._config,
                "params": list(copies)}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._owner = state["owner"]
        self.precision = state["precision"]
        self._take(state["config"], state["params"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._owner!r}, precision={self.precision!r})"


class Stepper(_StepSnapshot):
    """``layer.step()`` from a snapshot of the layer's parameters (``layer.stepper()``): copies
    taken when it was made (or last ``refresh()``-ed), at ``precision="bfloat16"`` converted and
    packed once so that each step reads half the bytes. Same arguments, results and checks as
    ``layer.step()``; changes to the layer's parameters after the snapshot do not reach it."""

    def step(self, x_t: Any, state: Any = None):
        """As ``layer.step(x_t, state)``, from the snapshot."""
        layer = self._owner
        x, h, c, single = layer._step_inputs(x_t, state)
        if self._snapshot is not None:
            y, h_new, c_new = _core.step_packed(self._snapshot, x, h, c)
        else:
            y, h_new, c_new = _core.step(layer._config, self._params, x, h, c)
        return layer._step_out(y, h_new, c_new, single)
