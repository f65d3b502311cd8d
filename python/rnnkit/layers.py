"""Recurrent layers: thin Python objects that own parameters and gradients and call ``rnnkit._core``.

The layer follows PyTorch's conventions: parameter names and shapes of ``torch.nn.RNN``'s
state_dict, input ``[T, N, C]`` (``[N, T, C]`` with ``batch_first``; ``[T, C]`` unbatched), state
``[num_layers, N, H]``, default init U(-1/sqrt(H), 1/sqrt(H)). Training follows PyTorch's habit:
``backward`` *accumulates* into ``layer.grads`` and ``zero_grad()`` clears them.

All numerics run in C++ with the GIL released; this module only validates (through
``_validate``), arranges memory (time-major, contiguous) and keeps the forward's cache for backward.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _core
from . import _validate as V


class RNN:
    """Elman recurrent layer, ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

    Args:
        input_size: C, features per step of the input.
        hidden_size: H, features of the state.
        nonlinearity: ``"tanh"`` or ``"relu"``.
        bias: whether to use ``b_ih`` and ``b_hh``.
        batch_first: inputs and outputs are ``[N, T, ...]`` instead of ``[T, N, ...]``.
        dtype: ``"float32"`` or ``"float64"``: parameters, gradients and outputs.
        seed: seeds the initialisation (None: fresh entropy from NumPy).

    Attributes:
        params: ``{"weight_ih_l0": [H, C], "weight_hh_l0": [H, H], "bias_ih_l0": [H],
            "bias_hh_l0": [H]}`` (PyTorch's state_dict names; no biases with ``bias=False``).
            Arrays may be modified in place (that is what optimizers do); replacing one requires
            an ndarray of the same dtype and shape.
        grads: the same keys; ``backward`` accumulates into them.
        training: when True (default), ``forward`` keeps what ``backward`` needs.
    """

    num_layers = 1
    bidirectional = False
    _GATES = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dtype: Any = "float32",
        seed: Optional[int] = None,
    ) -> None:
        self.input_size = V.check_size("input_size", input_size)
        self.hidden_size = V.check_size("hidden_size", hidden_size)
        self.nonlinearity = V.check_choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        self.bias = V.check_bool("bias", bias)
        self.batch_first = V.check_bool("batch_first", batch_first)
        self.dtype = V.resolve_dtype(dtype)
        self.mode = "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"
        self.training = True
        self._cache: Optional[_core.Cache] = None
        self._cache_layout: Optional[Tuple[bool, bool]] = None  # (batch_first, unbatched) of that forward
        self.params: Dict[str, np.ndarray] = {}
        self.grads: Dict[str, np.ndarray] = {}
        self.reset_parameters(V.check_seed("seed", seed))

    # ---- parameters -------------------------------------------------------------------------
    def _param_shapes(self) -> Dict[str, Tuple[int, ...]]:
        gh = self._GATES * self.hidden_size
        shapes = {
            "weight_ih_l0": (gh, self.input_size),
            "weight_hh_l0": (gh, self.hidden_size),
        }
        if self.bias:
            shapes["bias_ih_l0"] = (gh,)
            shapes["bias_hh_l0"] = (gh,)
        return shapes

    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """PyTorch's default init: every parameter U(-1/sqrt(H), 1/sqrt(H)), drawn in state_dict
        order from ``numpy.random.default_rng(seed)``; gradients are zeroed."""
        rng = np.random.default_rng(V.check_seed("seed", seed))
        bound = 1.0 / np.sqrt(self.hidden_size)
        self.params = {
            name: rng.uniform(-bound, bound, size=shape).astype(self.dtype)
            for name, shape in self._param_shapes().items()
        }
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._cache = None

    def zero_grad(self) -> None:
        """Sets every gradient to zero (in place)."""
        for g in self.grads.values():
            g.fill(0)

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of the parameters, keyed by PyTorch's names."""
        return {name: p.copy() for name, p in self.params.items()}

    def load_state_dict(self, state: Any) -> None:
        """Copies parameters in from a mapping with exactly this layer's keys and shapes (e.g.
        ``{k: v.numpy() for k, v in torch_rnn.state_dict().items()}``). Floating arrays of any
        precision are converted to the layer's dtype. Nothing is changed if any entry is wrong."""
        checked = V.check_state_dict("state_dict", state, self._param_shapes(), self.dtype)
        for name, value in checked.items():
            np.copyto(self.params[name], value)

    def _checked_params(self):
        shapes = self._param_shapes()
        p = {
            name: V.check_owned_array(f"params[{name!r}]", self.params.get(name), shape, self.dtype, writable=False)
            for name, shape in shapes.items()
        }
        return p

    def _checked_grads(self):
        return {
            name: V.check_owned_array(f"grads[{name!r}]", self.grads.get(name), shape, self.dtype, writable=True)
            for name, shape in self._param_shapes().items()
        }

    # ---- mode -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "RNN":
        self.training = V.check_bool("mode", mode)
        return self

    def eval(self) -> "RNN":
        return self.train(False)

    # ---- forward / backward -----------------------------------------------------------------
    def __call__(self, x: Any, h0: Any = None) -> Tuple[np.ndarray, np.ndarray]:
        return self.forward(x, h0)

    def forward(self, x: Any, h0: Any = None) -> Tuple[np.ndarray, np.ndarray]:
        """Runs the layer over a sequence.

        Args:
            x: ``[T, N, C]`` (``[N, T, C]`` if batch_first; ``[T, C]`` for one unbatched sequence).
            h0: ``[1, N, H]`` (``[1, H]`` unbatched), or None for zeros.

        Returns:
            ``(y, h_n)``: ``y`` is ``[T, N, H]`` (``[N, T, H]`` if batch_first, ``[T, H]``
            unbatched), the state after every step; ``h_n`` is ``[1, N, H]`` (``[1, H]``).
        """
        x = V.as_float_array("x", x, self.dtype)
        layout = "[N, T, input_size]" if self.batch_first else "[T, N, input_size]"
        V.check_rank("x", x, (2, 3), f"{layout} or [T, input_size]")
        unbatched = x.ndim == 2
        if unbatched:
            x_tm = x[:, None, :]
        elif self.batch_first:
            x_tm = np.ascontiguousarray(x.transpose(1, 0, 2))
        else:
            x_tm = x
        V.check_not_empty("x", x_tm, ("sequence length T", "batch size N"))
        T, N, C = x_tm.shape
        if C != self.input_size:
            raise ValueError(f"x: expected input_size {self.input_size} in the last dimension, got {C} (shape {V.shape_str(x.shape)})")

        h0_2d = None
        if h0 is not None:
            h0 = V.as_float_array("h0", h0, self.dtype)
            expected = (self.num_layers, self.hidden_size) if unbatched else (self.num_layers, N, self.hidden_size)
            V.check_shape("h0", h0, expected, "[num_layers, N, hidden_size]" if not unbatched else "[num_layers, hidden_size]")
            h0_2d = h0.reshape(N, self.hidden_size)

        p = self._checked_params()
        y, h_n, cache = _core.forward(
            self.mode, x_tm, h0_2d, p["weight_ih_l0"], p["weight_hh_l0"],
            p.get("bias_ih_l0"), p.get("bias_hh_l0"), self.training,
        )
        self._cache = cache
        self._cache_layout = (self.batch_first, unbatched)
        return self._output_layout(y, unbatched), self._state_layout(h_n, unbatched)

    def backward(
        self, dy: Any = None, dh_n: Any = None, *, compute_dx: bool = True
    ) -> Tuple[Optional[np.ndarray], np.ndarray]:
        """Backpropagation through time for the last training ``forward``.

        Args:
            dy: dL/dy, shaped like that forward's ``y`` (None for zeros).
            dh_n: dL/dh_n, shaped like its ``h_n`` (None for zeros).
            compute_dx: False skips the input gradient (a GEMM of its own), e.g. for a first
                layer fed raw data; ``dx`` is then None.

        Returns:
            ``(dx, dh0)`` shaped like that forward's ``x`` and ``h0`` (``[1, N, H]``).
            Parameter gradients are accumulated into ``self.grads``. Each forward can be
            backpropagated once: the cache is released afterwards.
        """
        if self._cache is None:
            raise RuntimeError(
                "backward: expected a preceding forward() in training mode (layer.training = True) "
                "that has not been backpropagated yet, got none"
            )
        compute_dx = V.check_bool("compute_dx", compute_dx)
        if dy is None and dh_n is None:
            raise ValueError("backward: expected dy, dh_n or both, got neither")
        T, N, C, H = self._cache.shape
        batch_first, unbatched = self._cache_layout
        dy_tm = None
        if dy is not None:
            dy = V.as_float_array("dy", dy, self.dtype)
            if unbatched:
                V.check_shape("dy", dy, (T, H), "(the shape of y)")
                dy_tm = dy[:, None, :]
            elif batch_first:
                V.check_shape("dy", dy, (N, T, H), "(the shape of y)")
                dy_tm = np.ascontiguousarray(dy.transpose(1, 0, 2))
            else:
                V.check_shape("dy", dy, (T, N, H), "(the shape of y)")
                dy_tm = dy
        dh_n_2d = None
        if dh_n is not None:
            dh_n = V.as_float_array("dh_n", dh_n, self.dtype)
            expected = (self.num_layers, H) if unbatched else (self.num_layers, N, H)
            V.check_shape("dh_n", dh_n, expected, "(the shape of h_n)")
            dh_n_2d = dh_n.reshape(N, H)

        g = self._checked_grads()
        dx, dh0 = _core.backward(
            self._cache, dy_tm, dh_n_2d, g["weight_ih_l0"], g["weight_hh_l0"],
            g.get("bias_ih_l0"), g.get("bias_hh_l0"), compute_dx,
        )
        self._cache = None
        self._cache_layout = None
        if dx is not None:
            if unbatched:
                dx = dx[:, 0, :]
            elif batch_first:
                dx = np.ascontiguousarray(dx.transpose(1, 0, 2))
        return dx, self._state_layout(dh0, unbatched)

    # ---- layouts ----------------------------------------------------------------------------
    def _output_layout(self, y_tm: np.ndarray, unbatched: bool) -> np.ndarray:
        if unbatched:
            return y_tm[:, 0, :]
        if self.batch_first:
            return np.ascontiguousarray(y_tm.transpose(1, 0, 2))
        return y_tm

    def _state_layout(self, h: np.ndarray, unbatched: bool) -> np.ndarray:
        if unbatched:
            return h.reshape(self.num_layers, self.hidden_size)
        return h.reshape(self.num_layers, h.shape[0], self.hidden_size)

    def __repr__(self) -> str:
        extra = []
        if self.nonlinearity != "tanh":
            extra.append(f"nonlinearity={self.nonlinearity!r}")
        if not self.bias:
            extra.append("bias=False")
        if self.batch_first:
            extra.append("batch_first=True")
        if self.dtype != np.float32:
            extra.append(f"dtype={self.dtype.name!r}")
        tail = "".join(", " + e for e in extra)
        return f"rnnkit.RNN({self.input_size}, {self.hidden_size}{tail})"
