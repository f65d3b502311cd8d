"""The PyTorch bridge ``rnnkit.torch``: a drop-in for torch.nn.RNN / LSTM / GRU.

torch.nn's modules are the oracle: same seed → same weights, state_dicts interchange, forward and
every gradient match (float32, also with batch_first, unbatched and PackedSequence input), and a
whole training loop gives the same losses (float64). The cells PyTorch lacks (LayerNorm, the
original GRU) are checked against rnnkit's own NumPy layers, and every module's gradients against
finite differences (``torch.autograd.gradcheck``, float64). Also: import isolation, the autograd
contract (unused outputs, retain_graph, no double backward, no dx when not needed, zero-copy),
dropout from torch's RNG, and the error messages. Skipped, with the reason shown, without torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

from conftest import TORCH_PARITY_RTOL_F32, require_torch
from reference import max_relative_diff

torch = require_torch()
import rnnkit  # noqa: E402
import rnnkit.torch as rt  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

pytestmark = pytest.mark.torch

# torch.autograd.gradcheck in float64: central differences with this step, compared with these
# tolerances (tighter than gradcheck's defaults, 1e-5 / 1e-3; the float64 truncation and rounding
# error at this step is ~1e-10).
GRADCHECK_EPS = 1e-6
GRADCHECK_ATOL = 1e-6
GRADCHECK_RTOL = 1e-5
# The same PyTorch training loop with torch.nn.LSTM and rnnkit.torch.LSTM, float64: the largest
# difference allowed between the two losses at any step.
TRAINING_LOSS_ATOL = 1e-6
# rnnkit.torch vs torch.nn in float64 (only the order of floating-point operations differs).
TORCH_PARITY_RTOL_F64 = 1e-12
# rnnkit.torch vs rnnkit's NumPy layer (the same C++ core behind both), float64, relative.
SAME_CORE_RTOL_F64 = 1e-12

# name -> (bridge class, torch.nn class or None, NumPy layer class, constructor kwargs)
CELLS: Dict[str, Tuple[type, Any, type, Dict[str, Any]]] = {
    "rnn_tanh": (rt.RNN, torch.nn.RNN, rnnkit.RNN, {}),
    "rnn_relu": (rt.RNN, torch.nn.RNN, rnnkit.RNN, {"nonlinearity": "relu"}),
    "lstm": (rt.LSTM, torch.nn.LSTM, rnnkit.LSTM, {}),
    "lstm_proj": (rt.LSTM, torch.nn.LSTM, rnnkit.LSTM, {"proj_size": 2}),
    "gru": (rt.GRU, torch.nn.GRU, rnnkit.GRU, {}),
    "gru_reset_before": (rt.GRU, None, rnnkit.GRU, {"reset_after": False}),
    "ln_lstm": (rt.LayerNormLSTM, None, rnnkit.LayerNormLSTM, {}),
    "ln_gru": (rt.LayerNormGRU, None, rnnkit.LayerNormGRU, {}),
}
TORCH_CELLS = [name for name, (_, ref, _, _) in CELLS.items() if ref is not None]


def _has_cell_state(module: torch.nn.Module) -> bool:
    return isinstance(module, (rt.LSTM, rt.LayerNormLSTM, torch.nn.LSTM))


def _random_hx(module: torch.nn.Module, n: int, dtype: torch.dtype, *, unbatched: bool = False):
    """A random initial state for `module`, requiring grad (a tensor, or (h0, c0))."""
    groups = module.num_layers * (2 if module.bidirectional else 1)
    p = module.proj_size or module.hidden_size
    lead = (groups,) if unbatched else (groups, n)
    h0 = torch.randn(*lead, p, dtype=dtype, requires_grad=True)
    if not _has_cell_state(module):
        return h0
    return h0, torch.randn(*lead, module.hidden_size, dtype=dtype, requires_grad=True)


def _as_tuple(state) -> Tuple[torch.Tensor, ...]:
    return tuple(state) if isinstance(state, tuple) else (state,)


def _forward_backward(module: torch.nn.Module, x: torch.Tensor, hx, seed: int):
    """Runs module(x, hx), backpropagates a random weighting of every output, and returns the
    outputs and every gradient (input, initial states, parameters) as NumPy arrays."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(s.detach().clone().requires_grad_() for s in _as_tuple(hx))
    hx_arg = hx if hx is None or len(hx) == 2 else hx[0]
    module.zero_grad()
    out, state = module(x, hx_arg)
    out_t = out.data if isinstance(out, PackedSequence) else out
    results = [out_t] + list(_as_tuple(state))
    gen = torch.Generator().manual_seed(seed)
    loss = sum((r * torch.randn(r.shape, generator=gen, dtype=r.dtype)).sum() for r in results)
    loss.backward()
    named = {"output": out_t, **{f"state[{i}]": s for i, s in enumerate(_as_tuple(state))}, "dx": x.grad}
    if hx is not None:
        named.update({f"d hx[{i}]": s.grad for i, s in enumerate(hx)})
    named.update({f"grad {n}": p.grad for n, p in module.named_parameters()})
    return {k: v.detach().numpy().copy() for k, v in named.items()}


def _assert_close(ours: Dict[str, np.ndarray], theirs: Dict[str, np.ndarray], rtol: float) -> None:
    assert ours.keys() == theirs.keys()
    failures = []
    for label in theirs:
        assert ours[label].shape == theirs[label].shape, label
        err = max_relative_diff(ours[label], theirs[label])
        if not err < rtol:
            failures.append(f"{label}: relative difference {err:.2e}")
    assert not failures, failures


def _gradcheck(module: torch.nn.Module, inputs: List[torch.Tensor],
               call: Callable[..., Any]) -> None:
    """gradcheck of every output of `call(module_with_params, *inputs)` with respect to the inputs
    and every parameter of the module (substituted through torch.func.functional_call)."""
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    n_inputs = len(inputs)

    def fn(*args):
        swapped = dict(zip(names, args[n_inputs:]))
        out = call(lambda *a: torch.func.functional_call(module, swapped, a), *args[:n_inputs])
        return tuple(t for t in out if t is not None)

    assert torch.autograd.gradcheck(fn, (*inputs, *params), eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL,
                                    rtol=GRADCHECK_RTOL)


def _flatten_outputs(out, state) -> Tuple[torch.Tensor, ...]:
    out_t = out.data if isinstance(out, PackedSequence) else out
    return (out_t, *_as_tuple(state))


# ---- import isolation --------------------------------------------------------------------------

def test_import_rnnkit_does_not_import_torch():
    code = "import sys, rnnkit; assert 'torch' not in sys.modules, 'import rnnkit imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_import_without_torch_raises_a_clear_import_error():
    # sys.modules["torch"] = None makes `import torch` fail as if PyTorch were not installed.
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "try:\n"
        "    import rnnkit.torch\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rnnkit.torch needs PyTorch" in done.stdout
    assert "pip install torch" in done.stdout


def test_bridge_never_stands_in_for_pytorch():
    # A script run from inside the package directory would find rnnkit/torch.py as `torch`.
    done = subprocess.run([sys.executable, "-c", "import torch"], cwd=os.path.dirname(rnnkit.__file__),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "was imported as 'torch' because its directory is on sys.path" in done.stderr


def test_torch_inside_the_bridge_is_the_real_pytorch():
    assert rt.torch is sys.modules["torch"]
    assert rt.torch.nn.Module is torch.nn.Module
    assert os.path.dirname(rt.torch.__file__) != os.path.dirname(rnnkit.__file__)
    assert rnnkit.torch is rt


# ---- construction, initialisation, state_dict ---------------------------------------------------

@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_same_seed_gives_torch_nn_weights(cell):
    ours_cls, ref_cls, _, kwargs = CELLS[cell]
    torch.manual_seed(7)
    ref = ref_cls(5, 4, num_layers=2, bidirectional=True, **kwargs)
    torch.manual_seed(7)
    ours = ours_cls(5, 4, num_layers=2, bidirectional=True, **kwargs)
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    for name, value in ref_state.items():
        assert our_state[name].dtype == value.dtype
        assert torch.equal(our_state[name], value), name


@pytest.mark.parametrize("cell", ["ln_lstm", "ln_gru"])
def test_layer_norm_init_and_names(cell):
    ours_cls, _, numpy_cls, kwargs = CELLS[cell]
    torch.manual_seed(3)
    ours = ours_cls(5, 4, num_layers=2, bidirectional=True, **kwargs)
    torch.manual_seed(3)
    again = ours_cls(5, 4, num_layers=2, bidirectional=True, **kwargs)
    layer = numpy_cls(5, 4, num_layers=2, bidirectional=True, **kwargs)
    assert list(ours.state_dict()) == list(layer.state_dict())
    bound = 1 / np.sqrt(4)
    for name, p in ours.named_parameters():
        assert torch.equal(p, getattr(again, name)), name
        if name.startswith("ln_"):
            assert torch.equal(p, torch.full_like(p, 1.0 if "_weight_" in name else 0.0)), name
        else:
            assert float(p.detach().abs().max()) <= bound, name


def test_init_schemes_follow_torch_rng():
    torch.manual_seed(11)
    a = rt.LSTM(3, 5, init="xavier+orthogonal", forget_bias=1.0)
    torch.manual_seed(11)
    b = rt.LSTM(3, 5, init="xavier+orthogonal", forget_bias=1.0)
    for name, p in a.named_parameters():
        assert torch.equal(p, getattr(b, name)), name
    # Orthogonal recurrent blocks: each [H, H] gate block has orthonormal rows.
    block = a.weight_hh_l0.detach()[:5].double()
    torch.testing.assert_close(block @ block.T, torch.eye(5, dtype=torch.float64))
    assert torch.equal(a.bias_ih_l0[5:10], torch.ones(5))
    assert torch.equal(a.bias_hh_l0[5:10], torch.zeros(5))


def test_default_init_forget_bias():
    torch.manual_seed(2)
    ref = torch.nn.LSTM(3, 4)
    torch.manual_seed(2)
    ours = rt.LSTM(3, 4, forget_bias=1.0)
    assert torch.equal(ours.weight_ih_l0, ref.weight_ih_l0)
    assert torch.equal(ours.bias_ih_l0[4:8], torch.ones(4))
    assert torch.equal(ours.bias_hh_l0[4:8], torch.zeros(4))
    assert torch.equal(ours.bias_ih_l0[:4], ref.bias_ih_l0[:4])


@pytest.mark.parametrize("cell", TORCH_CELLS)
def test_state_dict_loads_both_ways(cell):
    ours_cls, ref_cls, _, kwargs = CELLS[cell]
    torch.manual_seed(0)
    ref = ref_cls(4, 6, num_layers=2, bidirectional=True, **kwargs)
    torch.manual_seed(1)
    ours = ours_cls(4, 6, num_layers=2, bidirectional=True, **kwargs)
    ours.load_state_dict(ref.state_dict())
    for name, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    torch.manual_seed(2)
    ours.reset_parameters()
    back = ref_cls(4, 6, num_layers=2, bidirectional=True, **kwargs)
    back.load_state_dict(ours.state_dict())
    for name, value in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name


def test_module_attributes_match_torch():
    ref = torch.nn.LSTM(3, 8, num_layers=2, bidirectional=True, proj_size=4, batch_first=True)
    ours = rt.LSTM(3, 8, num_layers=2, bidirectional=True, proj_size=4, batch_first=True)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert [[tuple(p.shape) for p in group] for group in ours.all_weights] == \
        [[tuple(p.shape) for p in group] for group in ref.all_weights]
    ours.flatten_parameters()  # a no-op, there for scripts that call it
    assert repr(ours).startswith("LSTM(3, 8, proj_size=4, num_layers=2")


# ---- parity with torch.nn ------------------------------------------------------------------------

@pytest.mark.parametrize("cell", TORCH_CELLS)
@pytest.mark.parametrize("layout", ["time-major", "batch_first", "unbatched"])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)], ids=["1-uni", "2-bi"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "state"])
def test_forward_backward_match_torch(cell, layout, num_layers, bidirectional, with_state):
    ours_cls, ref_cls, _, kwargs = CELLS[cell]
    T, N, C, H = 7, 3, 5, 6
    batch_first = layout == "batch_first"
    torch.manual_seed(0)
    ref = ref_cls(C, H, num_layers, batch_first=batch_first, bidirectional=bidirectional, **kwargs)
    ours = ours_cls(C, H, num_layers, batch_first=batch_first, bidirectional=bidirectional, **kwargs)
    ours.load_state_dict(ref.state_dict())
    shape = {"time-major": (T, N, C), "batch_first": (N, T, C), "unbatched": (T, C)}[layout]
    x = torch.randn(shape)
    hx = _random_hx(ref, N, torch.float32, unbatched=layout == "unbatched") if with_state else None
    theirs = _forward_backward(ref, x, hx, seed=1)
    _assert_close(_forward_backward(ours, x, hx, seed=1), theirs, TORCH_PARITY_RTOL_F32)


@pytest.mark.parametrize("cell", TORCH_CELLS)
@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
def test_packed_sequence_matches_torch(cell, enforce_sorted):
    ours_cls, ref_cls, _, kwargs = CELLS[cell]
    torch.manual_seed(4)
    ref = ref_cls(3, 5, 2, bidirectional=True, **kwargs)
    ours = ours_cls(3, 5, 2, bidirectional=True, **kwargs)
    ours.load_state_dict(ref.state_dict())
    lengths = torch.tensor([6, 6, 4, 2, 1] if enforce_sorted else [2, 6, 1, 6, 4])
    packed = pack_padded_sequence(torch.randn(6, 5, 3), lengths, enforce_sorted=enforce_sorted)
    out_ref, _ = ref(packed)
    out, _ = ours(packed)
    assert isinstance(out, PackedSequence)
    assert torch.equal(out.batch_sizes, out_ref.batch_sizes)
    for attr in ("sorted_indices", "unsorted_indices"):
        if getattr(out_ref, attr) is None:
            assert getattr(out, attr) is None
        else:
            assert torch.equal(getattr(out, attr), getattr(out_ref, attr))
    hx = _random_hx(ref, 5, torch.float32)

    _assert_close(_forward_backward(_PackedInput(ours, packed), packed.data, hx, seed=5),
                  _forward_backward(_PackedInput(ref, packed), packed.data, hx, seed=5), TORCH_PARITY_RTOL_F32)


class _PackedInput(torch.nn.Module):
    """Feeds a fixed PackedSequence whose data is the tensor it is called with, so
    _forward_backward's gradient of "x" is the gradient of the packed data."""

    def __init__(self, inner: torch.nn.Module, template: PackedSequence) -> None:
        super().__init__()
        self.inner = inner
        self.template = template

    def forward(self, data: torch.Tensor, hx=None):
        t = self.template
        return self.inner(PackedSequence(data, t.batch_sizes, t.sorted_indices, t.unsorted_indices), hx)


@pytest.mark.parametrize("cell", ["gru_reset_before", "ln_lstm", "ln_gru"])
def test_cells_without_torch_equivalent_match_rnnkit_layers(cell):
    ours_cls, _, numpy_cls, kwargs = CELLS[cell]
    torch.manual_seed(5)
    ours = ours_cls(4, 5, 2, bidirectional=True, batch_first=True, dtype=torch.float64, **kwargs)
    layer = numpy_cls(4, 5, 2, bidirectional=True, batch_first=True, dtype="float64", **kwargs)
    layer.load_state_dict({k: v.numpy() for k, v in ours.state_dict().items()})
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    hx = _random_hx(ours, 3, torch.float64)
    got = _forward_backward(ours, x, hx, seed=9)

    hx_np = tuple(s.detach().numpy() for s in _as_tuple(hx))
    y, state = layer(x.numpy(), hx_np if len(hx_np) == 2 else hx_np[0])
    gen = torch.Generator().manual_seed(9)
    weights = [torch.randn(r.shape, generator=gen, dtype=torch.float64).numpy() for r in (y, *_as_tuple(state))]
    dx, dhx = layer.backward(weights[0], tuple(weights[1:]) if len(weights) == 3 else weights[1])
    want = {"output": y, **{f"state[{i}]": s for i, s in enumerate(_as_tuple(state))}, "dx": dx}
    want.update({f"d hx[{i}]": d for i, d in enumerate(_as_tuple(dhx))})
    want.update({f"grad {n}": layer.grads[n] for n, _ in ours.named_parameters()})
    _assert_close(got, want, SAME_CORE_RTOL_F64)


def test_eval_mode_backward_matches_torch():
    torch.manual_seed(6)
    ref = torch.nn.GRU(3, 4, 2, dropout=0.5).eval()
    ours = rt.GRU(3, 4, 2, dropout=0.5).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    _assert_close(_forward_backward(ours, x, None, seed=2), _forward_backward(ref, x, None, seed=2),
                  TORCH_PARITY_RTOL_F32)


def test_no_grad_forward_builds_no_graph():
    torch.manual_seed(0)
    ours = rt.LSTM(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    with torch.no_grad():
        y, (h, c) = ours(x)
    assert y.grad_fn is None and not y.requires_grad
    torch.testing.assert_close(y, ours(x)[0].detach(), rtol=0, atol=0)


# ---- gradients vs finite differences (float64) --------------------------------------------------

@pytest.mark.parametrize("cell", list(CELLS))
def test_gradcheck_two_layer_bidirectional_with_states(cell):
    ours_cls, _, _, kwargs = CELLS[cell]
    torch.manual_seed(8)
    module = ours_cls(2, 3, 2, bidirectional=True, dtype=torch.float64, **kwargs)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    states = list(_as_tuple(_random_hx(module, 2, torch.float64)))

    def call(m, x, *states):
        return _flatten_outputs(*m(x, tuple(states) if len(states) == 2 else states[0]))

    _gradcheck(module, [x, *states], call)


@pytest.mark.parametrize("cell", ["lstm_proj", "gru", "ln_lstm"])
def test_gradcheck_batch_first_and_unbatched(cell):
    ours_cls, _, _, kwargs = CELLS[cell]
    torch.manual_seed(9)
    module = ours_cls(2, 3, batch_first=True, dtype=torch.float64, **kwargs)
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    _gradcheck(module, [x], lambda m, x: _flatten_outputs(*m(x)))
    x1 = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)  # unbatched [T, C]
    states = list(_as_tuple(_random_hx(module, 1, torch.float64, unbatched=True)))
    _gradcheck(module, [x1, *states],
               lambda m, x, *s: _flatten_outputs(*m(x, tuple(s) if len(s) == 2 else s[0])))


@pytest.mark.parametrize("cell", ["lstm", "gru", "ln_gru"])
def test_gradcheck_packed_sequence(cell):
    ours_cls, _, _, kwargs = CELLS[cell]
    torch.manual_seed(10)
    module = ours_cls(2, 3, 2, bidirectional=True, dtype=torch.float64, **kwargs)
    template = pack_padded_sequence(torch.zeros(4, 3, 2, dtype=torch.float64), torch.tensor([2, 4, 1]),
                                    enforce_sorted=False)
    data = torch.randn(template.data.shape, dtype=torch.float64, requires_grad=True)
    states = list(_as_tuple(_random_hx(module, 3, torch.float64)))

    def call(m, data, *states):
        seq = PackedSequence(data, template.batch_sizes, template.sorted_indices, template.unsorted_indices)
        return _flatten_outputs(*m(seq, tuple(states) if len(states) == 2 else states[0]))

    _gradcheck(module, [data, *states], call)


def test_gradcheck_with_dropout_masks_from_torch_seed():
    torch.manual_seed(12)
    module = rt.LSTM(2, 3, 3, dropout=0.4, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)

    def call(m, x):
        torch.manual_seed(0)  # the same masks at every evaluation
        return _flatten_outputs(*m(x))

    _gradcheck(module, [x], call)


# ---- the autograd contract ----------------------------------------------------------------------

def test_unused_outputs_get_no_gradient_work():
    torch.manual_seed(1)
    ref = torch.nn.LSTM(3, 4, 2)
    ours = rt.LSTM(3, 4, 2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    for pick in (lambda y, h, c: c.sum(), lambda y, h, c: (y * y).sum(), lambda y, h, c: h.sum()):
        grads = []
        for module in (ours, ref):
            module.zero_grad()
            xg = x.clone().requires_grad_()
            y, (h, c) = module(xg)
            pick(y, h, c).backward()
            grads.append([xg.grad] + [p.grad for p in module.parameters()])
        for g_ours, g_ref in zip(*grads):
            assert max_relative_diff(g_ours.numpy(), g_ref.numpy()) < TORCH_PARITY_RTOL_F32


def test_retain_graph_backward_twice_matches_torch():
    torch.manual_seed(2)
    ref = torch.nn.GRU(3, 4, 2, bidirectional=True)
    ours = rt.GRU(3, 4, 2, bidirectional=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3)
    grads = []
    for module in (ours, ref):
        xg = x.clone().requires_grad_()
        y, h = module(xg)
        loss = (y * y).sum() + h.sum()
        loss.backward(retain_graph=True)
        first = [p.grad.clone() for p in module.parameters()]
        loss.backward()  # accumulates a second, identical gradient
        for p, g in zip(module.parameters(), first):
            torch.testing.assert_close(p.grad, 2 * g, rtol=0, atol=0)
        grads.append([xg.grad] + [p.grad for p in module.parameters()])
    for g_ours, g_ref in zip(*grads):
        assert max_relative_diff(g_ours.numpy(), g_ref.numpy()) < TORCH_PARITY_RTOL_F32


def test_second_backward_without_retain_graph_is_torchs_error():
    ours = rt.RNN(3, 4)
    y, _ = ours(torch.randn(5, 2, 3))
    loss = y.sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_double_backward_raises():
    ours = rt.LSTM(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    y, _ = ours(x)
    (dx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        dx.sum().backward()


def test_input_gradient_skipped_when_not_needed(monkeypatch):
    calls = []
    for name in ("backward", "backward_reserve"):  # the eager path uses its cache up: backward
        def spy(*args, real=getattr(rnnkit._core, name)):
            calls.append(args[-1])  # need_dx
            return real(*args)

        monkeypatch.setattr(rnnkit._core, name, spy)
    ours = rt.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    ours(x)[0].sum().backward()
    ours(x.requires_grad_())[0].sum().backward()
    assert calls == [False, True]
    assert x.grad is not None


def test_tensors_cross_without_copies(monkeypatch):
    seen = {}
    real_forward = rnnkit._core.forward

    def spy(config, params, x, h0, c0, lengths, training, seed, **kwargs):
        out = real_forward(config, params, x, h0, c0, lengths, training, seed, **kwargs)
        seen.update(params=params, x=x, h0=h0, y=out[0])
        return out

    monkeypatch.setattr(rnnkit._core, "forward", spy)
    ours = rt.RNN(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    h0 = torch.randn(1, 2, 4)
    y, _ = ours(x, h0)
    assert seen["x"].ctypes.data == x.data_ptr()
    assert seen["h0"].ctypes.data == h0.data_ptr()
    for arr, p in zip(seen["params"], ours.parameters()):
        assert arr.ctypes.data == p.data_ptr()
    assert y.data_ptr() == seen["y"].ctypes.data


def test_dropout_draws_from_torch_rng():
    module = rt.LSTM(3, 6, 3, dropout=0.5)
    full = rt.LSTM(3, 6, 3)
    full.load_state_dict(module.state_dict())
    x = torch.randn(4, 2, 3)
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outs.append(module(x)[0].detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.equal(outs[0], outs[2])
    assert not torch.equal(outs[0], full(x)[0].detach())
    module.eval()
    torch.testing.assert_close(module(x)[0], full(x)[0], rtol=0, atol=0)


def test_double_precision_via_module_double():
    torch.manual_seed(3)
    ref = torch.nn.LSTM(3, 4).double()
    ours = rt.LSTM(3, 4).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    y, (h, c) = ours(x)
    assert y.dtype == torch.float64
    assert max_relative_diff(y.detach().numpy(), ref(x)[0].detach().numpy()) < TORCH_PARITY_RTOL_F64


# ---- a drop-in in a PyTorch training script -----------------------------------------------------

class _Regressor(torch.nn.Module):
    """A typical script's model: an LSTM and a linear head on the last step."""

    def __init__(self, lstm: torch.nn.Module) -> None:
        super().__init__()
        self.lstm = lstm
        self.head = torch.nn.Linear(lstm.hidden_size * 2, 1, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.head(y[:, -1]).squeeze(-1)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_training_loop_drop_in(optimizer):
    def make(lstm_cls):
        torch.manual_seed(21)
        lstm = lstm_cls(3, 8, 2, batch_first=True, bidirectional=True, dtype=torch.float64)
        return _Regressor(lstm)

    ref, ours = make(torch.nn.LSTM), make(rt.LSTM)
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(50, 16, 10, 3, generator=gen, dtype=torch.float64)
    targets = xs.sum(dim=(2, 3)) / 10

    def train(model):
        if optimizer == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for x, t in zip(xs, targets):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), t)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        return np.array(losses)

    ref_losses, our_losses = train(ref), train(ours)
    assert ref_losses[-5:].mean() < ref_losses[:5].mean()  # the loop does learn something
    np.testing.assert_allclose(our_losses, ref_losses, rtol=0, atol=TRAINING_LOSS_ATOL)


# ---- errors ------------------------------------------------------------------------------------

def test_unsupported_dtypes_are_type_errors():
    with pytest.raises(TypeError, match=r"dtype: expected torch.float32 or torch.float64.*float16"):
        rt.LSTM(3, 4, dtype=torch.float16)
    ours = rt.LSTM(3, 4)
    with pytest.raises(TypeError, match=r"input: expected a float32 or float64 tensor.*bfloat16"):
        ours(torch.randn(5, 2, 3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match=r"input: expected dtype torch.float32.*got torch.float64"):
        ours(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"input: expected a torch.Tensor, got ndarray"):
        ours(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(TypeError, match=r"hx\[1\]: expected dtype torch.float32"):
        ours(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4, dtype=torch.float64)))
    half = rt.GRU(3, 4).half()
    with pytest.raises(TypeError, match=r"weight_ih_l0: expected a float32 or float64 tensor.*float16"):
        half(torch.randn(5, 2, 3).half())


def test_shape_errors_name_the_argument():
    ours = rt.LSTM(3, 4, 2, proj_size=2)
    with pytest.raises(ValueError, match=r"input: expected input_size 3 in the last dimension, got 5"):
        ours(torch.randn(6, 2, 5))
    with pytest.raises(ValueError, match=r"input: expected a 3-D tensor .* got 4-D"):
        ours(torch.randn(6, 2, 3, 1))
    with pytest.raises(ValueError, match=r"input: expected a sequence length and batch size >= 1"):
        ours(torch.randn(0, 2, 3))
    with pytest.raises(ValueError, match=r"hx\[0\]: expected shape \(2, 2, 2\).*got \(2, 3, 2\)"):
        ours(torch.randn(6, 2, 3), (torch.zeros(2, 3, 2), torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match=r"hx\[1\]: expected shape \(2, 4\).*unbatched.*got \(2, 1, 4\)"):
        ours(torch.randn(6, 3), (torch.zeros(2, 2), torch.zeros(2, 1, 4)))
    with pytest.raises(TypeError, match=r"hx: expected a tuple \(h0, c0\) of tensors for LSTM, got Tensor"):
        ours(torch.randn(6, 2, 3), torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match=r"proj_size: expected less than hidden_size \(4\), got 4"):
        rt.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match=r"nonlinearity: expected one of \['tanh', 'relu'\], got 'gelu'"):
        rt.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(TypeError, match=r"hidden_size: expected a positive integer, got float"):
        rt.GRU(3, 4.0)


def test_dropout_with_one_layer_warns_as_torch_does():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        rt.GRU(3, 4, dropout=0.2)


@pytest.mark.skipif(rnnkit.cuda.is_available() and not rnnkit.cuda.is_emulated(),
                    reason="rnnkit's CUDA backend runs here: CUDA devices are accepted (tests/test_torch_cuda.py)")
def test_cuda_device_is_a_clear_error_without_a_usable_cuda_backend():
    why = r"(rnnkit's CUDA backend is not available|this rnnkit's CUDA backend is the host emulation)"
    with pytest.raises(ValueError, match=r"device: expected a CPU tensor or device \(" + why) as info:
        rt.LSTM(3, 4, device="cuda")
    if not rnnkit.cuda.is_available():
        assert rnnkit.cuda.status() in str(info.value)
    with pytest.raises(ValueError, match=r"device: expected a CPU or CUDA tensor or device.*got device 'meta'"):
        rt.GRU(3, 4, device="meta")
    # Tensors on other devices ('meta' here) are refused too.
    with pytest.raises(ValueError, match=r"input: expected a CPU or CUDA tensor or device"):
        rt.GRU(3, 4)(torch.empty(5, 2, 3, device="meta"))


def test_tensors_on_another_device_than_the_module_are_a_clear_error(monkeypatch):
    from rnnkit.interop import torch as bridge

    monkeypatch.setattr(bridge, "_cuda_usable", lambda: True)
    bridge._check_device("device", torch.device("cuda:0"))  # accepted where the backend runs
    with pytest.raises(ValueError, match=r"device: expected a tensor or device on 'cuda:0' \(rnnkit's CUDA backend "
                                         r"runs on the first GPU only.*got device 'cuda:1'"):
        bridge._check_device("device", torch.device("cuda:1"))
    monkeypatch.setattr(bridge, "_check_device", lambda name, device: None)  # 'meta' stands in for a GPU
    with pytest.raises(ValueError, match=r"input: expected a tensor on 'cpu' \(the device of the module's parameters; "
                                         r"move it with .to\('cpu'\) or the module with .to\('meta'\)\), got device 'meta'"):
        rt.GRU(3, 4)(torch.empty(5, 2, 3, device="meta"))
    h0 = torch.empty(1, 2, 4, device="meta")
    with pytest.raises(ValueError, match=r"hx: expected a tensor on 'cpu'"):
        rt.GRU(3, 4)(torch.zeros(5, 2, 3), h0)
