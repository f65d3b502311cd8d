"""Optimizers and gradient clipping with PyTorch's update formulas.

Every optimizer works on anything with ``params`` and ``grads`` dicts of NumPy arrays (a layer,
an ``RNNNetwork``) and updates the parameters in place; each ``step()`` is one C++ call over all
parameters. The formulas are those of ``torch.optim.SGD``, ``Adam``, ``AdamW`` and ``RMSprop``
(the single-tensor CPU implementations), so a run can be compared with PyTorch step by step.

    opt = rnnkit.optim.Adam(model, lr=1e-3)
    loss, _ = model.train_step(x, y)
    norm = rnnkit.optim.clip_grad_norm(model, 1.0)   # the global norm before clipping
    opt.step()
    opt.zero_grad()
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from .. import _core
from .. import _device as D
from .. import _validate as V


def _zeros_like(a: Any):
    """A zero buffer where `a` lives (host, or the CUDA backend's memory)."""
    if D.is_device_array(a):
        return D.to_device(np.zeros(a.shape, a.dtype))
    return np.zeros_like(a)


def _arrays(model: Any) -> Tuple[List[str], Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    if not (hasattr(model, "params") and hasattr(model, "grads")):
        raise TypeError(f"model: expected an object with params and grads dicts (a layer or RNNNetwork), got {type(model).__name__}")
    names = list(model.params)
    missing = [n for n in names if n not in model.grads]
    if missing:
        raise ValueError(f"model.grads: expected an entry for every parameter, missing {missing}")
    return names, model.params, model.grads


def grad_norm(model: Any) -> float:
    """The global L2 norm of every gradient (accumulated in double)."""
    names, _, grads = _arrays(model)
    return float(np.sqrt(_core.sum_of_squares([grads[n] for n in names])))


def clip_grad_norm(model: Any, max_norm: float) -> float:
    """Scales the gradients so their global L2 norm is at most ``max_norm``, exactly as
    ``torch.nn.utils.clip_grad_norm_`` (coefficient max_norm / (norm + 1e-6), capped at 1).
    Returns the norm before clipping."""
    max_norm = V.check_positive_float("max_norm", max_norm)
    names, _, grads = _arrays(model)
    V.check_writable("grads", {n: grads[n] for n in names})
    total = grad_norm(model)
    coef = min(max_norm / (total + 1e-6), 1.0)
    _core.scale_arrays([grads[n] for n in names], coef)
    return total


def clip_grad_value(model: Any, clip_value: float) -> None:
    """Clamps every gradient element to [-clip_value, clip_value] (torch.nn.utils.clip_grad_value_)."""
    clip_value = V.check_positive_float("clip_value", clip_value)
    names, _, grads = _arrays(model)
    V.check_writable("grads", {n: grads[n] for n in names})
    _core.clamp_arrays([grads[n] for n in names], clip_value)


class Optimizer:
    """Base class: holds references to the model's parameter and gradient arrays and the
    per-parameter state buffers; subclasses define the update. The buffers live where the
    parameters do: make the optimizer after ``model.to("cuda")`` (as with PyTorch)."""

    _BUFFERS: Tuple[str, ...] = ()

    def __init__(self, model: Any, lr: float) -> None:
        self.model = model
        self._names, self._params, self._grads = _arrays(model)
        self.lr = V.check_positive_float("lr", lr)
        self.step_count = 0
        self.state: Dict[str, Dict[str, np.ndarray]] = {
            buf: {n: _zeros_like(self._params[n]) for n in self._names} for buf in self._active_buffers()
        }

    def _active_buffers(self) -> Tuple[str, ...]:
        return self._BUFFERS

    def _lists(self, *buffers: str) -> List[List[np.ndarray]]:
        return [[self.state[b][n] for n in self._names] for b in buffers]

    def zero_grad(self) -> None:
        if any(D.is_device_array(self._grads[n]) for n in self._names):
            for n in self._names:
                self._grads[n].zero_()
            return
        V.zero_arrays("grads", {n: self._grads[n] for n in self._names})

    def step(self) -> None:
        params = [self._params[n] for n in self._names]
        grads = [self._grads[n] for n in self._names]
        # The update reads the new count (Adam's bias correction); a refused update (_core checks
        # every array before writing any) leaves the count where it was, as it leaves everything else.
        self.step_count += 1
        try:
            self._update(params, grads)
        except BaseException:
            self.step_count -= 1
            raise
        # A model with a constraint on its parameters (IndRNN's recurrent_max_abs) restores it.
        after = getattr(self.model, "_after_optimizer_step", None)
        if after is not None:
            after()

    def _update(self, params: List[np.ndarray], grads: List[np.ndarray]) -> None:
        raise NotImplementedError

    def hyperparameters(self) -> Dict[str, Any]:
        raise NotImplementedError

    # ---- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """``{"step": int, "hyper": {...}, "buffers": {"<buffer>/<param>": array}}`` (host copies,
        also for a model on the GPU)."""
        return {
            "step": self.step_count,
            "hyper": self.hyperparameters(),
            "buffers": {f"{b}/{n}": D.to_numpy(a).copy() for b, arrays in self.state.items() for n, a in arrays.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what ``state_dict`` returned (same parameters and buffers, checked first)."""
        if not isinstance(state, Mapping) or not {"step", "buffers"} <= set(state):
            raise ValueError("state: expected a mapping with 'step' and 'buffers' (from Optimizer.state_dict())")
        buffers = state["buffers"]
        expected = {f"{b}/{n}": a.shape for b, arrays in self.state.items() for n, a in arrays.items()}
        checked = V.check_state_dict("state['buffers']", buffers, expected, next(iter(self._params.values())).dtype)
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"state['step']: expected a non-negative integer, got {step!r}")
        for key, value in checked.items():
            b, n = key.split("/", 1)
            if D.is_device_array(self.state[b][n]):
                self.state[b][n].copy_from_host(V.c_array(value, self.state[b][n].dtype))
            else:
                np.copyto(self.state[b][n], value)
        self.step_count = int(step)


class SGD(Optimizer):
    """torch.optim.SGD: momentum (with dampening), Nesterov, L2 weight decay."""

    def __init__(self, model: Any, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        self.momentum = V.check_float("momentum", momentum)
        self.dampening = V.check_float("dampening", dampening)
        self.weight_decay = V.check_float("weight_decay", weight_decay)
        self.nesterov = V.check_bool("nesterov", nesterov)
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(f"momentum, weight_decay: expected >= 0, got {self.momentum}, {self.weight_decay}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: expected momentum > 0 and dampening == 0 (as PyTorch requires)")
        super().__init__(model, lr)

    def _active_buffers(self):
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def _update(self, params, grads):
        bufs = self._lists("momentum_buffer")[0] if self.momentum != 0 else None
        _core.sgd_step(params, grads, bufs, self.lr, self.momentum, self.dampening, self.weight_decay,
                       self.nesterov, self.step_count == 1)

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov}


class Adam(Optimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient)."""

    _BUFFERS = ("exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, model: Any, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise TypeError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas = (V.check_float("betas[0]", betas[0]), V.check_float("betas[1]", betas[1]))
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas: expected values in [0, 1), got {self.betas}")
        self.eps = V.check_positive_float("eps", eps)
        self.weight_decay = V.check_float("weight_decay", weight_decay)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: expected >= 0, got {self.weight_decay}")
        super().__init__(model, lr)

    def _update(self, params, grads):
        m, v = self._lists("exp_avg", "exp_avg_sq")
        _core.adam_step(params, grads, m, v, self.lr, self.betas[0], self.betas[1], self.eps,
                        self.weight_decay, self._decoupled, self.step_count)

    def hyperparameters(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay (param *= 1 - lr * weight_decay), default 0.01."""

    _decoupled = True

    def __init__(self, model: Any, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(model, lr, betas, eps, weight_decay)


class RMSprop(Optimizer):
    """torch.optim.RMSprop: smoothing ``alpha``, optional momentum and centering."""

    def __init__(self, model: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False) -> None:
        self.alpha = V.check_float("alpha", alpha)
        self.eps = V.check_positive_float("eps", eps)
        self.weight_decay = V.check_float("weight_decay", weight_decay)
        self.momentum = V.check_float("momentum", momentum)
        self.centered = V.check_bool("centered", centered)
        if not 0.0 <= self.alpha <= 1.0 or self.momentum < 0 or self.weight_decay < 0:
            raise ValueError(f"alpha, momentum, weight_decay: expected alpha in [0, 1] and the others >= 0, "
                             f"got {self.alpha}, {self.momentum}, {self.weight_decay}")
        super().__init__(model, lr)

    def _active_buffers(self):
        return ("square_avg",) + (("momentum_buffer",) if self.momentum > 0 else ()) + (("grad_avg",) if self.centered else ())

    def _update(self, params, grads):
        (sq,) = self._lists("square_avg")
        mb = self._lists("momentum_buffer")[0] if self.momentum > 0 else None
        ga = self._lists("grad_avg")[0] if self.centered else None
        _core.rmsprop_step(params, grads, sq, mb, ga, self.lr, self.alpha, self.eps, self.weight_decay,
                           self.momentum, self.centered)

    def hyperparameters(self):
        return {"lr": self.lr, "alpha": self.alpha, "eps": self.eps, "weight_decay": self.weight_decay,
                "momentum": self.momentum, "centered": self.centered}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}
