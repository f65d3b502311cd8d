"""Readable NumPy references for rnnkit's kernels: the truth the C++ is tested against.

Written for clarity, not speed: one explicit loop over time, one line per equation, float64
throughout. Shapes are time-major: x [T, N, C], h0 [N, H], weights in PyTorch's layout
(w_ih [H, C], w_hh [H, H], b_ih [H], b_hh [H]).
"""

from __future__ import annotations

from typing import Dict

import numpy as np


def _activation(nonlinearity: str):
    """(act, act' written in terms of the output act(pre))."""
    if nonlinearity == "tanh":
        return np.tanh, lambda h: 1.0 - h * h
    if nonlinearity == "relu":
        return (lambda z: np.maximum(z, 0.0)), (lambda h: (h > 0).astype(h.dtype))
    raise ValueError(nonlinearity)


def elman_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) for t = 1..T.

    Returns (y [T, N, H] = h_1..h_T, h_n [N, H] = h_T).
    """
    x = np.asarray(x, np.float64)
    T, N, _ = x.shape
    H = w_hh.shape[0]
    act, _ = _activation(nonlinearity)
    b = np.zeros(H) if b_ih is None else np.asarray(b_ih, np.float64) + np.asarray(b_hh, np.float64)
    h = np.zeros((N, H)) if h0 is None else np.asarray(h0, np.float64)
    ys = []
    for t in range(T):
        pre = x[t] @ w_ih.T + h @ w_hh.T + b
        h = act(pre)
        ys.append(h)
    return np.stack(ys), h


def elman_backward(x, h0, w_ih, w_hh, b_ih, b_hh, dy, dh_n, nonlinearity="tanh") -> Dict[str, np.ndarray]:
    """Backpropagation through time for elman_forward, given dL/dy [T, N, H] and dL/dh_n [N, H].

    Returns dL/d{x, h0, w_ih, w_hh, b_ih, b_hh}.
    """
    x = np.asarray(x, np.float64)
    T, N, C = x.shape
    H = w_hh.shape[0]
    _, dact = _activation(nonlinearity)
    y, _ = elman_forward(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    h_prev_all = np.concatenate([(np.zeros((1, N, H)) if h0 is None else np.asarray(h0, np.float64)[None]), y[:-1]])

    dx = np.zeros_like(x)
    dw_ih = np.zeros_like(w_ih, dtype=np.float64)
    dw_hh = np.zeros_like(w_hh, dtype=np.float64)
    db = np.zeros(H)
    dh_next = np.zeros((N, H)) if dh_n is None else np.asarray(dh_n, np.float64).copy()
    for t in reversed(range(T)):
        dh = dh_next + (0.0 if dy is None else dy[t])
        dpre = dh * dact(y[t])              # through the activation
        dx[t] = dpre @ w_ih                 # pre = x W_ih^T + ...
        dw_ih += dpre.T @ x[t]
        dw_hh += dpre.T @ h_prev_all[t]
        db += dpre.sum(axis=0)
        dh_next = dpre @ w_hh               # into h_{t-1}
    return {"x": dx, "h0": dh_next, "w_ih": dw_ih, "w_hh": dw_hh, "b_ih": db.copy(), "b_hh": db.copy()}


def central_difference(f, arr: np.ndarray, eps: float) -> np.ndarray:
    """d f() / d arr by central differences, perturbing `arr` in place one element at a time."""
    grad = np.zeros(arr.shape, np.float64)
    flat = arr.reshape(-1)
    g = grad.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        f_plus = f()
        flat[i] = orig - eps
        f_minus = f()
        flat[i] = orig
        g[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def relative_error(actual, expected) -> float:
    """||actual - expected|| / max(||actual||, ||expected||) (0 when both are 0)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = max(np.linalg.norm(actual), np.linalg.norm(expected))
    return 0.0 if scale == 0 else float(np.linalg.norm(actual - expected) / scale)


def max_relative_diff(actual, expected) -> float:
    """max|actual - expected| / max|expected|: the elementwise error relative to the array's scale."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    diff = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    return diff if scale == 0 else diff / scale
