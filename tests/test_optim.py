"""rnnkit.optim against torch.optim (same formulas) and clipping against torch.nn.utils."""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from conftest import require_torch
from reference import max_relative_diff

OPTIM_RTOL_F64 = 1e-12


class Params:
    """The minimal model an optimizer needs: params and grads dicts."""

    def __init__(self, rng, dtype=np.float64):
        self.params = {"a": rng.standard_normal((4, 3)).astype(dtype), "b": rng.standard_normal(5).astype(dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}


CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.3)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True, alpha=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
]


@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_matches_torch_optim(rng, name, kwargs):
    torch = require_torch()
    model = Params(rng)
    t_params = [torch.tensor(model.params[k].copy(), requires_grad=True) for k in ("a", "b")]
    ours = getattr(rnnkit.optim, name)(model, **kwargs)
    theirs = getattr(torch.optim, name)(t_params, **kwargs)
    for _ in range(25):
        for (k, tp) in zip(("a", "b"), t_params):
            g = rng.standard_normal(tp.shape)
            model.grads[k][...] = g
            tp.grad = torch.tensor(g)
        ours.step()
        theirs.step()
    for k, tp in zip(("a", "b"), t_params):
        assert max_relative_diff(model.params[k], tp.detach().numpy()) < OPTIM_RTOL_F64, k


def test_clip_grad_norm_matches_torch(rng):
    torch = require_torch()
    model = Params(rng)
    for g in model.grads.values():
        g[...] = 10 * rng.standard_normal(g.shape)
    tensors = [torch.tensor(model.params[k].copy(), requires_grad=True) for k in ("a", "b")]
    for t, k in zip(tensors, ("a", "b")):
        t.grad = torch.tensor(model.grads[k].copy())
    total = rnnkit.optim.clip_grad_norm(model, 1.5)
    t_total = torch.nn.utils.clip_grad_norm_(tensors, 1.5)
    assert abs(total - float(t_total)) < 1e-12 * total
    for t, k in zip(tensors, ("a", "b")):
        assert max_relative_diff(model.grads[k], t.grad.numpy()) < 1e-14
    assert abs(rnnkit.optim.grad_norm(model) - 1.5) < 1e-5


def test_clip_grad_norm_leaves_small_gradients_alone(rng):
    model = Params(rng)
    for g in model.grads.values():
        g[...] = 1e-3
    before = {k: g.copy() for k, g in model.grads.items()}
    norm = rnnkit.optim.clip_grad_norm(model, 10.0)
    assert norm == pytest.approx(1e-3 * np.sqrt(17))
    for k in before:
        np.testing.assert_array_equal(model.grads[k], before[k])


def test_clip_grad_value(rng):
    model = Params(rng)
    model.grads["a"][...] = np.linspace(-3, 3, 12).reshape(4, 3)
    rnnkit.optim.clip_grad_value(model, 1.0)
    assert model.grads["a"].max() == 1.0 and model.grads["a"].min() == -1.0


def test_state_dict_round_trip(rng):
    model = Params(rng)
    opt = rnnkit.optim.Adam(model, lr=0.01)
    for _ in range(3):
        for g in model.grads.values():
            g[...] = rng.standard_normal(g.shape)
        opt.step()
    saved, params = opt.state_dict(), {k: v.copy() for k, v in model.params.items()}
    other_model = Params(np.random.default_rng(1))
    for k, v in params.items():
        other_model.params[k][...] = v
    other = rnnkit.optim.Adam(other_model, lr=0.01)
    other.load_state_dict(saved)
    grads = {k: rng.standard_normal(v.shape) for k, v in model.grads.items()}
    for m, o in ((model, opt), (other_model, other)):
        for k, g in grads.items():
            m.grads[k][...] = g
        o.step()
    for k in params:
        np.testing.assert_array_equal(model.params[k], other_model.params[k])


@pytest.mark.parametrize(
    "make, exc, pattern",
    [
        (lambda m: rnnkit.optim.SGD(m, lr=0), ValueError, "lr: expected a positive number"),
        (lambda m: rnnkit.optim.SGD(m, lr=0.1, nesterov=True), ValueError, "nesterov"),
        (lambda m: rnnkit.optim.Adam(m, betas=(0.9, 1.0)), ValueError, "betas"),
        (lambda m: rnnkit.optim.Adam(m, betas=0.9), TypeError, "betas: expected a pair"),
        (lambda m: rnnkit.optim.Adam(object()), TypeError, "model: expected an object with params and grads"),
        (lambda m: rnnkit.optim.RMSprop(m, alpha=2.0), ValueError, "alpha"),
        (lambda m: rnnkit.optim.clip_grad_norm(m, -1.0), ValueError, "max_norm"),
    ],
)
def test_bad_optimizer_arguments(rng, make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        make(Params(rng))


def test_load_state_dict_rejects_mismatched_buffers(rng):
    opt = rnnkit.optim.Adam(Params(rng))
    state = opt.state_dict()
    del state["buffers"]["exp_avg/a"]
    with pytest.raises(ValueError, match="missing keys"):
        opt.load_state_dict(state)


@pytest.mark.parametrize("make", [lambda m: rnnkit.optim.Adam(m, lr=1e-2, weight_decay=0.1),
                                  lambda m: rnnkit.optim.AdamW(m, lr=1e-2),
                                  lambda m: rnnkit.optim.SGD(m, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda m: rnnkit.optim.RMSprop(m, lr=1e-2, centered=True, momentum=0.5)])
def test_updates_do_not_depend_on_array_alignment(rng, make):
    """The same update on arrays starting at different addresses gives the same bits (a resumed
    run's arrays are allocated elsewhere than the original's)."""
    p0 = rng.standard_normal(1001).astype(np.float32)
    g0 = rng.standard_normal(1001).astype(np.float32)
    results = []
    for offset in (0, 1, 3, 7, 16):
        model = Params(rng)
        buf_p, buf_g = np.empty(1100, np.float32), np.empty(1100, np.float32)
        model.params = {"a": buf_p[offset:offset + 1001]}
        model.grads = {"a": buf_g[offset:offset + 1001]}
        model.params["a"][...] = p0
        model.grads["a"][...] = g0
        opt = make(model)
        for _ in range(4):
            opt.step()
        results.append(model.params["a"].copy())
    for r in results[1:]:
        np.testing.assert_array_equal(results[0], r)
