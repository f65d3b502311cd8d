"""layer.stepper(): streaming steps from a snapshot of the parameters, packed once.

At precision="bfloat16" a stepper converts and packs every weight matrix once, so a step computes
what forward() at bfloat16 computes (the same rounded operands, float32 sums in another order);
layer.step() computes in float32. The truth: the layer's own bf16 forward over the same steps,
the bf16-rounded float64 reference for one step, and float64 on the same weights for the error
bfloat16 costs. A stepper is a snapshot: later changes to the layer do not reach it until
refresh().
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import _core
from reference import bf16_matmul, max_relative_diff, relative_error, stack_forward
from test_bf16 import BF16_STEP_RTOL, BF16_VS_F64_RTOL, KERNELS, make_layer
from test_bf16 import CELLS as REFERENCE_CELLS  # the cells reference.stack_forward computes

# Every cell the layers have (the bf16 tests' seven, IndRNN's two and the min cells).
CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_reset_before", "ln_lstm", "ln_gru", "indrnn", "indrnn_tanh",
         "mingru", "minlstm"]
# The stepper against the layer's own bf16 forward over the same steps: the same rounded
# operands, float32 sums in a different order (the panel kernel at N <= 2, AMX tiles in the
# forward), so the states differ by float32 rounding, which can move a bf16 rounding of the state
# by one ulp (2^-8 relative) at a later step; LayerNorm cells amplify it (test_bf16's note).
STEPPER_VS_FORWARD_RTOL = {"default": 3e-3, "ln_lstm": 5e-2, "ln_gru": 5e-2}
T_STEPS = 12


@pytest.fixture(params=KERNELS)
def bf16_kernel(request):
    _core._set_bf16_kernel(request.param)
    yield request.param
    _core._set_bf16_kernel("auto")


def _run(stepper_or_layer, xs, state):
    ys = []
    for t in range(xs.shape[0]):
        y, state = stepper_or_layer.step(xs[t], state)
        ys.append(y)
    return np.stack(ys), state


def _random_state(layer, N, rng):
    h = rng.standard_normal((layer.num_layers, N, layer.state_size)).astype(np.float32)
    if layer._has_cell_state:
        return h, rng.standard_normal((layer.num_layers, N, layer.hidden_size)).astype(np.float32)
    return h


def _states(hx):
    return list(hx) if isinstance(hx, tuple) else [hx]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("N", [1, 2, 5])
def test_bf16_steps_follow_the_bf16_forward(bf16_kernel, cell, N, rng):
    layer = make_layer(cell, 24, 40, "bfloat16", num_layers=2).eval()
    xs = rng.standard_normal((T_STEPS, N, 24)).astype(np.float32)
    state0 = _random_state(layer, N, rng)
    y_fwd, hx_fwd = layer(xs, state0)
    y_step, hx_step = _run(layer.stepper(), xs, state0)
    tol = STEPPER_VS_FORWARD_RTOL.get(cell, STEPPER_VS_FORWARD_RTOL["default"])
    assert max_relative_diff(y_step, y_fwd) < tol
    for got, want in zip(_states(hx_step), _states(hx_fwd)):
        assert max_relative_diff(got, want) < tol
    # ... where layer.step() computes in float32, measurably elsewhere.
    y_f32, _ = _run(layer, xs, state0)
    assert max_relative_diff(y_step, y_fwd) < max_relative_diff(y_f32, y_fwd)


# Options a stepper must carry like forward() does (every cell family's own).
STEP_OPTIONS = [("lstm", {"proj_size": 12}), ("lstm", {"activations": ("HardSigmoid", "Tanh", "Tanh"),
                                                        "clip": 2.5}),
                ("gru", {"zoneout": 0.3}), ("lstm", {"zoneout": 0.2, "zoneout_cell": 0.4}),
                ("rnn_relu", {"num_layers": 3}), ("indrnn", {"num_layers": 2}), ("minlstm", {"num_layers": 2})]


@pytest.mark.parametrize("cell,options", [(c, {"num_layers": 2}) for c in CELLS] + STEP_OPTIONS)
@pytest.mark.parametrize("N", [1, 2, 5])
def test_one_bf16_step_is_the_bf16_forward_bit_for_bit(bf16_kernel, cell, options, N, rng):
    """T = 1 from a given state: the stepper's products are the forward's (the same packed
    operands, the same kernel for the same M), so the results are identical, for every cell,
    stacks, projections, ONNX options and zoneout's eval-mode expectation."""
    layer = make_layer(cell, 40, 48, "bfloat16", **options).eval()
    x = rng.standard_normal((1, N, 40)).astype(np.float32)
    state0 = _random_state(layer, N, rng)
    y_fwd, hx_fwd = layer(x, state0)
    y_step, hx_step = layer.stepper().step(x[0], state0)
    np.testing.assert_array_equal(y_step, y_fwd[0])
    for got, want in zip(_states(hx_step), _states(hx_fwd)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("cell,options", STEP_OPTIONS)
def test_bf16_steps_with_options_follow_the_bf16_forward(cell, options, rng):
    layer = make_layer(cell, 24, 40, "bfloat16", **options).eval()
    xs = rng.standard_normal((T_STEPS, 2, 24)).astype(np.float32)
    state0 = _random_state(layer, 2, rng)
    y_fwd, _ = layer(xs, state0)
    y_step, _ = _run(layer.stepper(), xs, state0)
    assert max_relative_diff(y_step, y_fwd) < STEPPER_VS_FORWARD_RTOL["default"]


def test_wide_bf16_steps_follow_the_bf16_forward(rng):
    """K > 128 (more than one k chunk of the panel kernel: C = H = 160, K = C and H)."""
    layer = make_layer("lstm", 160, 160, "bfloat16", num_layers=2).eval()
    xs = rng.standard_normal((T_STEPS, 1, 160)).astype(np.float32)
    y_fwd, _ = layer(xs)
    y_step, _ = _run(layer.stepper(), xs, None)
    assert max_relative_diff(y_step, y_fwd) < STEPPER_VS_FORWARD_RTOL["default"]


@pytest.mark.parametrize("cell", REFERENCE_CELLS)
def test_one_bf16_step_is_the_rounded_reference(bf16_kernel, cell, rng):
    """One step from a given state: every GEMM operand is data, rounded identically."""
    layer = make_layer(cell, 24, 40, "bfloat16", num_layers=1).eval()
    x = rng.standard_normal((1, 1, 24)).astype(np.float32)
    state0 = _random_state(layer, 1, rng)
    h0, c0 = state0 if isinstance(state0, tuple) else (state0, None)
    y, _ = layer.stepper().step(x[0], state0)
    state = {k: np.asarray(v, np.float64) for k, v in layer.state_dict().items()}
    want, _, _ = stack_forward(layer.mode, state, x, h0=h0, c0=c0, mm=bf16_matmul)
    assert max_relative_diff(y, want[0]) < BF16_STEP_RTOL


@pytest.mark.parametrize("cell,options", [(c, o) for c in CELLS for o in ({}, {"num_layers": 2})]
                         + [("lstm", {"proj_size": 12})])
def test_bf16_steps_against_float64(cell, options, rng):
    """What bfloat16 costs a stream of steps: against float64 on the same weights, within the
    tolerance the bf16 forward and gradients are held to (test_bf16), and much further off than a
    float32 stepper."""
    b16 = make_layer(cell, 16, 32, "bfloat16", **options).eval()
    f32 = make_layer(cell, 16, 32, "float32", **options).eval()
    f64 = make_layer(cell, 16, 32, "float32", dtype="float64", **options).eval()
    f32.load_state_dict(b16.state_dict())
    f64.load_state_dict(b16.state_dict())
    xs = rng.standard_normal((T_STEPS, 3, 16)).astype(np.float32)
    y, _ = _run(b16.stepper(), xs, None)
    y32, _ = _run(f32.stepper(), xs, None)
    y64, _ = _run(f64, xs.astype(np.float64), None)
    err = relative_error(y, y64)
    assert err < BF16_VS_F64_RTOL.get(cell, BF16_VS_F64_RTOL["default"])
    assert err > 10 * relative_error(y32, y64)  # bf16 really ran


def test_a_float32_stepper_is_layer_step(rng):
    layer = rnnkit.LSTM(8, 16, num_layers=2, seed=1)
    xs = rng.standard_normal((5, 3, 8)).astype(np.float32)
    stepper = layer.stepper()
    assert stepper.precision == "float32"
    y_s, (h_s, c_s) = _run(stepper, xs, None)
    y_l, (h_l, c_l) = _run(layer, xs, None)
    np.testing.assert_array_equal(y_s, y_l)
    np.testing.assert_array_equal(h_s, h_l)
    np.testing.assert_array_equal(c_s, c_l)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_stepper_is_a_snapshot_until_refreshed(precision, rng):
    layer = rnnkit.GRU(8, 16, seed=2, precision=precision)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    h = rng.standard_normal((1, 3, 16)).astype(np.float32)
    stepper = layer.stepper()
    before, _ = stepper.step(x, h)
    layer.params["weight_hh_l0"] *= 2.0   # in place, as an optimizer writes
    layer.params["bias_ih_l0"] += 1.0
    unchanged, _ = stepper.step(x, h)
    np.testing.assert_array_equal(unchanged, before)
    stepper.refresh()
    after, _ = stepper.step(x, h)
    fresh, _ = layer.stepper().step(x, h)
    np.testing.assert_array_equal(after, fresh)
    assert np.abs(after - before).max() > 1e-2


def test_stepper_checks_its_inputs_as_step_does(rng):
    layer = rnnkit.LSTM(8, 16, precision="bfloat16")
    stepper = layer.stepper()
    with pytest.raises(ValueError, match="x_t: expected input_size 8"):
        stepper.step(np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match="x_t: expected batch size N >= 1"):
        stepper.step(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match=r"state\[0\]"):
        stepper.step(np.zeros((2, 8), np.float32), (np.zeros((1, 3, 16), np.float32), np.zeros((1, 2, 16), np.float32)))
    y, (h, c) = stepper.step(np.zeros(8))  # one stream, float64 input converted
    assert y.shape == (16,) and h.shape == (1, 1, 16) and y.dtype == np.float32


def test_stepper_refuses_what_cannot_step():
    with pytest.raises(ValueError, match="stepper: expected a unidirectional forward layer"):
        rnnkit.GRU(4, 8, bidirectional=True, precision="bfloat16").stepper()


def test_the_core_snapshot_checks_its_arguments():
    layer = rnnkit.LSTM(8, 16, precision="bfloat16")
    params = [layer.params[n] for n, _ in layer._specs]
    with pytest.raises(ValueError, match=r"^params list length: expected 4, got 3"):
        _core.pack_step(layer._config, params[:-1])
    with pytest.raises(TypeError, match=r"^params\[0\] \(weight_ih_l0\): expected dtype float32"):
        _core.pack_step(layer._config, [p.astype(np.float64) for p in params])
    f32 = rnnkit.LSTM(8, 16)
    with pytest.raises(ValueError, match=r"^a step snapshot's precision: expected 'bfloat16'"):
        _core.pack_step(f32._config, params)
    snap = _core.pack_step(layer._config, params)
    assert snap.nbytes > 0 and len(snap.params) == len(params)
    for copy, param in zip(snap.params, params):  # private copies: read-only, in a tuple
        assert copy is not param and not np.shares_memory(copy, param) and not copy.flags.writeable
        np.testing.assert_array_equal(copy, param)
    assert isinstance(snap.params, tuple)
    with pytest.raises(ValueError, match="read-only"):
        snap.params[1][0] = 1.0
    h1, c1 = np.zeros((1, 1, 16), np.float32), np.zeros((1, 1, 16), np.float32)
    with pytest.raises(TypeError, match=r"^x: expected dtype float32, got float64"):
        _core.step_packed(snap, np.zeros((1, 8)), h1, c1)
    with pytest.raises(ValueError, match=r"^h shape: expected \(1, 1, 16\), got \(1, 2, 16\)"):
        _core.step_packed(snap, np.zeros((1, 8), np.float32), np.zeros((1, 2, 16), np.float32), c1)
    with pytest.raises(ValueError, match=r"^c: expected an array \(LSTM cells\), got None"):
        _core.step_packed(snap, np.zeros((1, 8), np.float32), h1, None)


# ---- RNNNetwork.stepper() ----------------------------------------------------------------------
NETWORK_KINDS = {
    "tokens": dict(vocab_size=20, output_size=20),
    "features": dict(input_size=8, output_size=5, loss="mse"),
}


def _network(kind, cell, precision, **kw):
    return rnnkit.RNNNetwork(hidden_size=24, cell=cell, num_layers=2, precision=precision, seed=4,
                             **NETWORK_KINDS[kind], **kw).eval()


def _network_inputs(kind, T, N, rng):
    if kind == "tokens":
        return rng.integers(0, 20, size=(T, N))
    return rng.standard_normal((T, N, 8)).astype(np.float32)


@pytest.mark.parametrize("kind", list(NETWORK_KINDS))
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru", "mingru"])
@pytest.mark.parametrize("N", [1, 2, 3])
def test_network_bf16_steps_follow_the_bf16_forward(bf16_kernel, kind, cell, N, rng):
    net = _network(kind, cell, "bfloat16")
    xs = _network_inputs(kind, T_STEPS, N, rng)
    if kind == "tokens":
        want, _ = net.predict_proba(xs)
    else:
        want, _ = net(xs)
    stepper = net.stepper()
    got, state = [], None
    for t in range(T_STEPS):
        y, state = stepper.step(xs[t], state)
        got.append(y)
    got = np.stack(got)
    assert max_relative_diff(got, want) < STEPPER_VS_FORWARD_RTOL["default"]
    f32 = np.stack(_run_network(net, xs))
    assert max_relative_diff(got, want) < max_relative_diff(f32, want)  # network.step() is float32
    if kind == "tokens":
        np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-5)  # probabilities


def _run_network(net_or_stepper, xs):
    out, state = [], None
    for t in range(xs.shape[0]):
        y, state = net_or_stepper.step(xs[t], state)
        out.append(y)
    return out


@pytest.mark.parametrize("kind", list(NETWORK_KINDS))
def test_network_bf16_steps_against_float64(kind, rng):
    b16 = _network(kind, "lstm", "bfloat16")
    f64 = _network(kind, "lstm", "float32", dtype="float64")
    f64.load_state_dict(b16.state_dict())
    xs = _network_inputs(kind, T_STEPS, 3, rng)
    got = np.stack(_run_network(b16.stepper(), xs))
    want = np.stack(_run_network(f64, xs if kind == "tokens" else xs.astype(np.float64)))
    err = relative_error(got, want)
    assert 1e-5 < err < BF16_VS_F64_RTOL["default"]


def test_a_network_stepper_is_a_snapshot_and_checks_inputs(rng):
    net = _network("tokens", "gru", "bfloat16")
    stepper = net.stepper()
    state = rng.standard_normal((2, 2, 24)).astype(np.float32)
    before, _ = stepper.step(np.array([3, 4]), state)
    net.params["output.weight"] *= 3.0
    np.testing.assert_array_equal(stepper.step(np.array([3, 4]), state)[0], before)
    stepper.refresh()
    np.testing.assert_array_equal(stepper.step(np.array([3, 4]), state)[0], net.stepper().step(np.array([3, 4]), state)[0])
    assert np.abs(stepper.step(np.array([3, 4]), state)[0] - before).max() > 1e-3
    y, _ = stepper.step(7)  # one stream: a scalar id
    assert y.shape == (1, 20)
    with pytest.raises(ValueError, match="token id"):
        stepper.step(np.array([3, 20]))
    with pytest.raises(ValueError, match="x_t: expected batch size N >= 1"):
        stepper.step(np.zeros(0, np.int64))
    f32 = _network("tokens", "gru", "float32")
    np.testing.assert_array_equal(f32.stepper().step(np.array([1, 2]))[0], f32.step(np.array([1, 2]))[0])
    with pytest.raises(ValueError, match="head='sequence'"):
        rnnkit.RNNNetwork(vocab_size=5, hidden_size=8, output_size=3, head="last", precision="bfloat16").stepper()


@pytest.mark.cuda
@pytest.mark.skipif(not rnnkit.cuda.is_available(), reason="no CUDA backend here (a GPU or the emulation build)")
def test_a_cuda_layer_or_network_steps_on_the_device_not_through_a_stepper():
    layer = rnnkit.LSTM(8, 16, precision="bfloat16").to("cuda")
    with pytest.raises(ValueError, match=r"^stepper: expected a layer on the CPU .* got device='cuda'"):
        layer.stepper()
    net = rnnkit.RNNNetwork(vocab_size=5, hidden_size=8, output_size=5, precision="bfloat16").to("cuda")
    with pytest.raises(ValueError, match=r"^stepper: expected a network on the CPU .* got device='cuda'"):
        net.stepper()
    # A stepper made on the CPU refuses to refresh once its layer has moved.
    cpu_layer = rnnkit.GRU(4, 8, precision="bfloat16")
    stepper = cpu_layer.stepper()
    cpu_layer.to("cuda")
    with pytest.raises(ValueError, match="got device='cuda'"):
        stepper.refresh()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["layer", "network"])
def test_a_stepper_pickles_and_copies_as_its_snapshot(precision, kind, rng):
    import copy
    import pickle

    if kind == "layer":
        owner = rnnkit.LSTM(8, 16, num_layers=2, seed=3, precision=precision)
        x = rng.standard_normal((2, 8)).astype(np.float32)
    else:
        owner = rnnkit.RNNNetwork(vocab_size=12, hidden_size=16, output_size=12, seed=3, precision=precision)
        x = np.array([1, 5])
    stepper = owner.stepper()
    want, _ = stepper.step(x)
    owner.params[next(iter(owner.params))] *= 0.5  # the owner moves on; the snapshot does not
    for other in (pickle.loads(pickle.dumps(stepper)), copy.deepcopy(stepper)):
        assert type(other) is type(stepper) and other.precision == precision
        np.testing.assert_array_equal(other.step(x)[0], want)


def test_an_owner_holding_its_own_stepper_pickles_and_copies(rng):
    import copy
    import pickle

    layer = rnnkit.GRU(8, 16, seed=5, precision="bfloat16")
    layer.serving = layer.stepper()  # the owner refers back to its stepper
    x = rng.standard_normal((3, 8)).astype(np.float32)
    want, _ = layer.serving.step(x)
    for other in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert other.serving._owner is other
        np.testing.assert_array_equal(other.serving.step(x)[0], want)
