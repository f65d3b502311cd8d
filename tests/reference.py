"""Readable NumPy references for rnnkit's kernels: the truth the C++ is tested against.

Written for clarity, not speed: explicit loops over time (and, for the stack, over each sequence
on its own), one line per equation, float64 throughout. Shapes are time-major: x [T, N, C],
weights in PyTorch's layout and gate order (LSTM i, f, g, o; GRU r, z, n).

Variable lengths are implemented here the direct way -- each sequence runs over its own valid
steps only, forward t = 0..L-1 and reverse t = L-1..0, outputs past L are zero -- independently
of rnnkit's masked-batch implementation.
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


# ---- every cell, one step, one sequence or a batch -------------------------------------------------
def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def layer_norm(v, weight, bias, eps=1e-5):
    """torch.nn.LayerNorm over the last axis (biased variance)."""
    mu = v.mean(axis=-1, keepdims=True)
    var = ((v - mu) ** 2).mean(axis=-1, keepdims=True)
    return weight * (v - mu) / np.sqrt(var + eps) + bias


def _gru_reset_after(gx, gh, h):
    """GRU update from the input-side (gx) and recurrent-side (gh) pre-activations, r, z, n order."""
    xr, xz, xn = np.split(gx, 3, axis=-1)
    hr, hz, hn = np.split(gh, 3, axis=-1)
    r = sigmoid(xr + hr)
    z = sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def matmul(a, w):
    """a @ w.T: every product of a cell step (cell_step's mm)."""
    return a @ w.T


def round_bf16(a):
    """a rounded to the nearest bfloat16 (ties to even), as float64: the top 16 bits of float32."""
    u = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


def bf16_matmul(a, w):
    """a @ w.T as precision="bfloat16" computes it: both operands rounded to bfloat16, exact sums."""
    return round_bf16(a) @ round_bf16(w).T


def cell_step(mode, x, h, c, p, mm=None):
    """One step of one cell. x [.., C], h [.., P], c [.., H] (LSTM cells) -> (h_new, c_new).

    p holds w_ih, w_hh, b_ih, b_hh (zeros without bias), optionally w_hr, and the LayerNorm
    parameters ln_ih_weight ... ln_c_bias of the LayerNorm cells. mm(a, w) is every product
    a @ w.T of the step (default: exactly that; bf16_matmul for precision="bfloat16").
    """
    mm = matmul if mm is None else mm
    if mode in ("RNN_TANH", "RNN_RELU"):
        pre = mm(x, p["w_ih"]) + p["b_ih"] + mm(h, p["w_hh"]) + p["b_hh"]
        return (np.tanh(pre) if mode == "RNN_TANH" else np.maximum(pre, 0.0)), None
    if mode == "LSTM":
        gates = mm(x, p["w_ih"]) + p["b_ih"] + mm(h, p["w_hh"]) + p["b_hh"]
        i, f, g, o = np.split(gates, 4, axis=-1)
        c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h_new = sigmoid(o) * np.tanh(c_new)
        if p.get("w_hr") is not None:
            h_new = mm(h_new, p["w_hr"])
        return h_new, c_new
    if mode == "GRU":  # reset_after=True
        return _gru_reset_after(mm(x, p["w_ih"]) + p["b_ih"], mm(h, p["w_hh"]) + p["b_hh"], h), None
    if mode == "GRU_RESET_BEFORE":  # the original GRU (Cho et al. 2014), every matrix by name
        W_ir, W_iz, W_in = np.split(p["w_ih"], 3)
        W_hr, W_hz, W_hn = np.split(p["w_hh"], 3)
        b_ir, b_iz, b_in = np.split(p["b_ih"], 3)
        b_hr, b_hz, b_hn = np.split(p["b_hh"], 3)
        r = sigmoid(mm(x, W_ir) + b_ir + mm(h, W_hr) + b_hr)
        z = sigmoid(mm(x, W_iz) + b_iz + mm(h, W_hz) + b_hz)
        n = np.tanh(mm(x, W_in) + b_in + mm(r * h, W_hn) + b_hn)
        return (1 - z) * n + z * h, None
    if mode == "LN_LSTM":
        pre = (layer_norm(mm(x, p["w_ih"]), p["ln_ih_weight"], p["ln_ih_bias"])
               + layer_norm(mm(h, p["w_hh"]), p["ln_hh_weight"], p["ln_hh_bias"]) + p["b_ih"] + p["b_hh"])
        i, f, g, o = np.split(pre, 4, axis=-1)
        c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h_new = sigmoid(o) * np.tanh(layer_norm(c_new, p["ln_c_weight"], p["ln_c_bias"]))
        return h_new, c_new
    if mode == "LN_GRU":
        ax = layer_norm(mm(x, p["w_ih"]), p["ln_ih_weight"], p["ln_ih_bias"]) + p["b_ih"]
        ah = layer_norm(mm(h, p["w_hh"]), p["ln_hh_weight"], p["ln_hh_bias"]) + p["b_hh"]
        return _gru_reset_after(ax, ah, h), None
    raise ValueError(mode)


HAS_CELL_STATE = {"LSTM", "LN_LSTM"}
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "LN_LSTM": 4, "GRU": 3, "GRU_RESET_BEFORE": 3, "LN_GRU": 3}


def group_params(state, layer, reverse, gate_width):
    """The parameters of one layer-direction from a PyTorch-style state dict (float64)."""
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    get = lambda k: None if k + sfx not in state else np.asarray(state[k + sfx], np.float64)
    p = {"w_ih": get("weight_ih"), "w_hh": get("weight_hh"), "w_hr": get("weight_hr")}
    p["b_ih"] = get("bias_ih") if get("bias_ih") is not None else np.zeros(gate_width)
    p["b_hh"] = get("bias_hh") if get("bias_hh") is not None else np.zeros(gate_width)
    for k in ("ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias", "ln_c_weight", "ln_c_bias"):
        p[k] = get(k)
    return p


def stack_forward(mode, state, x, num_layers=1, bidirectional=False, h0=None, c0=None, lengths=None,
                  dropout_masks=None, mm=None):
    """torch.nn.RNN/LSTM/GRU semantics on a time-major batch, one sequence at a time.

    state: the layer's state dict; x [T, N, C]; h0 [L*D, N, P], c0 [L*D, N, H] or None;
    lengths [N] (0 allowed: such a sequence outputs zeros and ends with h_n = c_n = 0) or None; dropout_masks: per layer l < L-1, a [T, N, D*P] array multiplying that
    layer's output (None: no dropout); mm: cell_step's. Returns (y [T, N, D*P], h_n [L*D, N, P], c_n or None).
    """
    x = np.asarray(x, np.float64)
    T, N, _ = x.shape
    D = 2 if bidirectional else 1
    H = state["weight_hh_l0"].shape[0] // GATES[mode]
    P = state["weight_hh_l0"].shape[1]
    has_c = mode in HAS_CELL_STATE
    lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
    h_n = np.zeros((num_layers * D, N, P))
    c_n = np.zeros((num_layers * D, N, H)) if has_c else None
    inp = x
    for layer in range(num_layers):
        out = np.zeros((T, N, D * P))
        for d in range(D):
            g = layer * D + d
            p = group_params(state, layer, d == 1, GATES[mode] * H)
            for n in range(N):
                h = np.zeros(P) if h0 is None else np.asarray(h0[g, n], np.float64)
                c = (np.zeros(H) if c0 is None else np.asarray(c0[g, n], np.float64)) if has_c else None
                steps = range(lengths[n]) if d == 0 else reversed(range(lengths[n]))
                for t in steps:
                    h, c = cell_step(mode, inp[t, n], h, c, p, mm)
                    out[t, n, d * P:(d + 1) * P] = h
                if lengths[n] == 0:  # nothing computed: ONNX Runtime's zeros, not h0
                    h = np.zeros(P)
                    c = np.zeros(H) if has_c else None
                h_n[g, n] = h
                if has_c:
                    c_n[g, n] = c
        if dropout_masks is not None and layer < num_layers - 1:
            out = out * dropout_masks[layer]
        inp = out
    return inp, h_n, c_n


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


# The CUDA backend (a GPU or the emulation build) against the CPU, float64: the same cell math, the
# products summed by cuBLAS (or the emulation's BLAS calls) instead of the CPU's kernels.
CUDA_Y_RTOL = 1e-12
CUDA_GRAD_RTOL = 1e-10


def assert_cuda_agrees(make, rng, T=6, lengths=(6, 2, 4)):
    """make(): a fresh float64 layer (called twice, the second moved to "cuda"); forward with
    lengths, backward of a random dy, and every gradient compared."""
    import rnnkit

    cpu, dev = make(), make().to("cuda")
    lengths = np.asarray(lengths)
    x = rng.standard_normal((T, len(lengths), cpu.input_size))
    y, _ = cpu(x, lengths=lengths)
    y_d, _ = dev(x, lengths=lengths)
    np.testing.assert_allclose(rnnkit.to_numpy(y_d), y, rtol=CUDA_Y_RTOL, atol=1e-13)
    dy = rng.standard_normal(y.shape)
    cpu.backward(dy)
    dev.backward(dy)
    for name, g in cpu.grads.items():
        np.testing.assert_allclose(rnnkit.to_numpy(dev.grads[name]), g, rtol=CUDA_GRAD_RTOL, atol=1e-12, err_msg=name)


def assert_torch_module_matches(module, layer, rng, T=5, N=2):
    """An rnnkit.torch module (float64) and the NumPy layer of the same class and options: the
    layer takes the module's weights; outputs and every parameter gradient of sum(y) agree."""
    import torch

    layer.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})
    x = rng.standard_normal((T, N, layer.input_size))
    y_t, _ = module(torch.from_numpy(x))
    y, _ = layer(x)
    np.testing.assert_allclose(y_t.detach().numpy(), y, rtol=1e-12)
    y_t.sum().backward()
    layer.backward(np.ones_like(y))
    for name, p in module.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), layer.grads[name], rtol=1e-10, err_msg=name)


# A float32 streaming step against the same layer's sequence forward.
STEP_RTOL = 1e-6


def assert_step_equals_sequence(layer, rng, T=5, N=2):
    """layer.step() over x[t], t = 0 .. T-1, gives the eval-mode forward's outputs and final state."""
    layer.eval()
    x = rng.standard_normal((T, N, layer.input_size)).astype(np.float32)
    y, h_n = layer(x)
    h = None
    for t in range(T):
        out, h = layer.step(x[t], h)
        np.testing.assert_allclose(out, y[t], rtol=STEP_RTOL, atol=STEP_RTOL)
    np.testing.assert_allclose(h, h_n, rtol=STEP_RTOL, atol=STEP_RTOL)


def network_losses(net, rng, steps=30, after_step=None):
    """Adam (lr 0.05) on next-token prediction of a fixed random token batch: the losses."""
    import rnnkit

    tokens = rng.integers(0, net.vocab_size, size=(12, 4))
    opt = rnnkit.optim.Adam(net, lr=0.05)
    losses = []
    for _ in range(steps):
        loss, _ = net.train_step(tokens[:-1], tokens[1:])
        opt.step()
        opt.zero_grad()
        losses.append(loss)
        if after_step is not None:
            after_step()
    return losses


def assert_matches_sequence_reference(layer, reference_fn, rng, rtol, T=7, lengths=(7, 3, 5), scale=1.0):
    """A float64 layer against reference_fn(layer, x, h0, lengths) -> (y, h_n) on a random x (times
    scale), a random h0 and the given lengths. Returns (x, h0, lengths) for further checks."""
    lengths = np.asarray(lengths)
    x = rng.standard_normal((T, len(lengths), layer.input_size)) * scale
    h0 = rng.standard_normal((layer.num_layers * layer.num_directions, len(lengths), layer.hidden_size))
    y, h_n = layer(x, h0, lengths=lengths)
    y_ref, h_ref = reference_fn(layer, x, h0, lengths)
    np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(h_n, h_ref, rtol=rtol, atol=1e-14)
    return x, h0, lengths
