"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"; issue 15): gates read x_t
only. Forward against a NumPy reference written from the paper's equations, and against the
paper's log-space parallel form (a NumPy cumulative log-sum-exp scan over T, as its appendix
writes it) for positive initial states; every gradient against float64 finite differences; the
streaming step; the network; the PyTorch bridge; the CUDA backend.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import _core
from reference import assert_cuda_agrees, assert_matches_sequence_reference, assert_step_equals_sequence, assert_torch_module_matches, network_losses
from test_gradients import check_all_gradients

REF_RTOL = 1e-12     # float64 against the float64 sequential reference: the same arithmetic
SCAN_RTOL = 1e-10    # ... against the log-space parallel form: exp/log round trips


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _g(v):
    return np.where(v >= 0, v + 0.5, _sigmoid(v))


def _log_g(v):
    return np.where(v >= 0, np.log(np.maximum(v, 0.0) + 0.5), -np.logaddexp(0.0, -v))


def coefficients(layer, sfx, x):
    """Per step, the recurrence h_t = a_t h_{t-1} + b_t's a_t and b_t, and their logs."""
    W, b = layer.params["weight_ih" + sfx], layer.params.get("bias_ih" + sfx, 0.0)
    k = x @ W.T + b
    H = layer.hidden_size
    if type(layer).__name__ == "MinGRU":
        kz, kh = k[..., :H], k[..., H:]
        a, bb = 1 - _sigmoid(kz), _sigmoid(kz) * _g(kh)
        log_a = -np.logaddexp(0.0, kz)                          # log(1 - z)
        log_b = -np.logaddexp(0.0, -kz) + _log_g(kh)            # log z + log g(h~)
    else:
        kf, ki, kh = k[..., :H], k[..., H:2 * H], k[..., 2 * H:]
        f, i = _sigmoid(kf), _sigmoid(ki)
        a, bb = f / (f + i), i / (f + i) * _g(kh)
        log_f, log_i = -np.logaddexp(0.0, -kf), -np.logaddexp(0.0, -ki)
        log_s = np.logaddexp(log_f, log_i)
        log_a, log_b = log_f - log_s, log_i - log_s + _log_g(kh)
    return a, bb, log_a, log_b


def sequential(layer, x, h0=None, lengths=None):
    """The paper's sequential form, per layer and direction (lengths as rnnkit's layers have them)."""
    T, N, _ = x.shape
    D, L, H = layer.num_directions, layer.num_layers, layer.hidden_size
    lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
    inp, h_n = x, []
    for k in range(L):
        outs = []
        for d in range(D):
            a, b, _, _ = coefficients(layer, f"_l{k}" + ("_reverse" if d else ""), inp)
            y, last = np.zeros((T, N, H)), np.zeros((N, H))
            for n in range(N):
                h = np.zeros(H) if h0 is None else h0[k * D + d, n].copy()
                for t in (range(lengths[n] - 1, -1, -1) if d else range(lengths[n])):
                    h = a[t, n] * h + b[t, n]
                    y[t, n] = h
                last[n] = h if lengths[n] else 0.0
            outs.append(y)
            h_n.append(last)
        inp = np.concatenate(outs, axis=2)
    return inp, np.stack(h_n)


def log_space_parallel(layer, x, h0):
    """The paper's parallel form (one layer, forward, h0 > 0): log h_t = logcumsumexp over s <= t of
    (log b_s + sum_{s<r<=t} log a_r), with log h0 entering as b_0's partner."""
    _, _, log_a, log_b = coefficients(layer, "_l0", x)
    a_star = np.cumsum(log_a, axis=0)                                       # [T, N, H]
    terms = np.concatenate([np.log(h0)[None], log_b - a_star], axis=0)    # s = 0 (h0), 1..T
    log_h = a_star + np.logaddexp.accumulate(terms, axis=0)[1:]
    return np.exp(log_h)


CLASSES = [rnnkit.MinGRU, rnnkit.MinLSTM]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, False), (2, True)])
def test_forward_matches_the_papers_sequential_form(cls, num_layers, bidirectional, rng):
    layer = cls(3, 5, num_layers=num_layers, bidirectional=bidirectional, dtype="float64", seed=1)
    G = {"MinGRU": 2, "MinLSTM": 3}[cls.__name__]
    assert {k: v.shape for k, v in layer.params.items() if k.endswith("_l0")} == {
        "weight_ih_l0": (G * 5, 3), "bias_ih_l0": (G * 5,)}
    assert_matches_sequence_reference(layer, sequential, rng, REF_RTOL, scale=2.0)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_log_space_parallel_form_agrees(cls, rng):
    layer = cls(4, 6, dtype="float64", seed=2)
    x = rng.standard_normal((50, 3, 4)) * 3
    h0 = rng.uniform(0.1, 2.0, size=(1, 3, 6))
    y, _ = layer(x, h0)
    np.testing.assert_allclose(log_space_parallel(layer, x, h0[0]), y, rtol=SCAN_RTOL)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
def test_finite_differences(cls, num_layers, bidirectional, rng):
    layer = cls(3, 4, num_layers=num_layers, bidirectional=bidirectional, dtype="float64", seed=3)
    for p in layer.params.values():
        p *= 2.0  # candidates on both branches of g
    check_all_gradients(layer, rng, lengths=np.array([4, 2, 3]))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_step_equals_the_sequence(cls, rng):
    assert_step_equals_sequence(cls(3, 4, num_layers=2, seed=4), rng)


@pytest.mark.parametrize("cell", ["mingru", "minlstm"])
def test_networks_train(cell, rng):
    losses = network_losses(rnnkit.RNNNetwork(vocab_size=6, hidden_size=8, cell=cell, seed=0), rng)
    assert losses[-1] < 0.7 * losses[0]
    with pytest.raises(ValueError, match="proj_size: expected 0"):
        rnnkit.RNNNetwork(vocab_size=6, cell=cell, proj_size=2)
    with pytest.raises(ValueError, match="peephole: expected False"):
        rnnkit.RNNNetwork(vocab_size=6, cell=cell, peephole=True)


@pytest.mark.parametrize("name", ["MinGRU", "MinLSTM"])
def test_torch_modules_match(name, rng):
    torch = pytest.importorskip("torch")
    from rnnkit import torch as rtorch

    module = getattr(rtorch, name)(3, 4, num_layers=2, dtype=torch.float64)
    assert_torch_module_matches(module, getattr(rnnkit, name)(3, 4, num_layers=2, dtype="float64"), rng)


def test_options_they_do_not_have_are_refused():
    with pytest.raises(TypeError, match="proj_size"):
        rnnkit.MinLSTM(3, 4, proj_size=2)
    with pytest.raises(TypeError, match="peephole"):
        rnnkit.MinLSTM(3, 4, peephole=True)
    with pytest.raises(TypeError, match="no LayerNorm, IndRNN or minGRU/minLSTM"):
        rnnkit.convert.to_onnx(rnnkit.MinGRU(3, 4))


@pytest.mark.cuda
@pytest.mark.skipif(not rnnkit.cuda.is_available(), reason="no CUDA backend here (a GPU or the emulation build)")
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_cuda_backend_agrees(cls, rng):
    assert_cuda_agrees(lambda: cls(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=5), rng)


# Threads split the elementwise recurrence by batch rows, each thread through all T steps with no
# barrier between steps; the hoisted GEMMs split as for every cell.
THREADED_RTOL = 1e-12


@pytest.mark.parametrize("cls", [*CLASSES, rnnkit.IndRNN], ids=lambda c: c.__name__)
@pytest.mark.parametrize("n_threads", [2, 3])
def test_thread_teams_split_the_recurrence_by_rows(cls, n_threads, rng):
    x = rng.standard_normal((9, 7, 3))
    dy = rng.standard_normal((9, 7, 8))
    lengths = np.array([9, 3, 0, 5, 9, 1, 7])
    results = []
    before = rnnkit.get_num_threads()
    _core._set_min_parallel_step_work(0)
    try:
        for threads in (1, n_threads):
            rnnkit.set_num_threads(threads)
            layer = cls(3, 4, num_layers=2, bidirectional=True, dtype="float64", seed=3, zoneout=0.2)
            layer.dropout_rng = np.random.default_rng(1)
            y, _ = layer(x, None, lengths)
            dx, _ = layer.backward(dy)
            results.append((y, dx, {k: g.copy() for k, g in layer.grads.items()}))
    finally:
        rnnkit.set_num_threads(before)
        _core._set_min_parallel_step_work(1 << 19)
    (y1, dx1, g1), (y2, dx2, g2) = results
    np.testing.assert_allclose(y2, y1, rtol=THREADED_RTOL, atol=1e-14)
    np.testing.assert_allclose(dx2, dx1, rtol=THREADED_RTOL, atol=1e-14)
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=THREADED_RTOL, atol=1e-13, err_msg=k)
