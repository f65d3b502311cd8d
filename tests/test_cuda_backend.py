"""The CUDA backend against the CPU backend (the truth), cell by cell and option by option.

Runs wherever the CUDA backend can: a CUDA build on a GPU, or the host-emulation build
(``RNNKIT_CUDA_EMULATE=1 pip install .``: the same kernel bodies and the same column-major GEMM calls,
run on the CPU). Elsewhere every test here is skipped, with the reason. Each case runs the same
call on both backends with the same parameters and inputs and compares every output and gradient;
the worst error per dtype is reported at the end of the run (conftest.py).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import rnnkit
from rnnkit import _core

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not rnnkit.cuda.is_available(), reason=f"CUDA unavailable: {rnnkit.cuda.status()}"),
]

# CUDA vs CPU, per dtype: the backends sum in different orders (cuBLAS vs OpenBLAS, and on a GPU
# the device's own tanhf/expf), so float32 differs by rounding that grows with T and the layer count.
CUDA_VS_CPU_TOL = {np.float64: dict(rtol=1e-11, atol=1e-11), np.float32: dict(rtol=2e-4, atol=2e-5)}

# The worst |cuda - cpu| per dtype over every comparison of the run, and the cases compared.
WORST_ERROR: dict[str, float] = {}
CASES: set[tuple] = set()

DEVICE_CELLS = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU", "GRU_RESET_BEFORE"]


def _dev(a):
    return None if a is None else _core.to_device(np.ascontiguousarray(a))


def _host(a):
    return None if a is None else a.numpy()


def _close(name, got, want, dtype):
    assert (got is None) == (want is None), name
    if want is None:
        return
    assert got.shape == want.shape, name
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    key = np.dtype(dtype).name
    WORST_ERROR[key] = max(WORST_ERROR.get(key, 0.0), err)
    np.testing.assert_allclose(got, want, err_msg=name, **CUDA_VS_CPU_TOL[dtype])


# (num_layers, bidirectional, proj, lengths kind, dropout, h0 given)
OPTIONS = {
    "plain": (1, False, 0, None, 0.0, False),
    "h0": (1, False, 0, None, 0.0, True),
    "stack2": (2, False, 0, None, 0.0, True),
    "bidirectional": (1, True, 0, None, 0.0, True),
    "lengths": (1, False, 0, "unsorted", 0.0, True),
    "bidirectional_lengths": (2, True, 0, "unsorted", 0.0, False),
    "dropout": (3, False, 0, None, 0.4, False),
    "everything": (2, True, 0, "unsorted", 0.3, True),
    "projection": (2, True, 3, "unsorted", 0.2, True),  # LSTM only
}


def _case(mode, option, dtype, T=5, N=3, C=4, H=6, seed=0):
    L, bi, proj, lengths_kind, dropout, with_h0 = OPTIONS[option]
    cfg = _core.StackConfig(mode, C, H, L, bi, proj, True, dropout)
    rng = np.random.default_rng(seed)
    params = [(0.5 * rng.standard_normal(shape)).astype(dtype) for _, shape in cfg.param_specs()]
    x = rng.standard_normal((T, N, C)).astype(dtype)
    D, P = (2 if bi else 1), (proj or H)
    h0 = rng.standard_normal((L * D, N, P)).astype(dtype) if with_h0 else None
    c0 = rng.standard_normal((L * D, N, H)).astype(dtype) if with_h0 and cfg.has_cell_state else None
    lengths = None
    if lengths_kind == "unsorted":
        lengths = rng.integers(1, T + 1, size=N).astype(np.int64)
        lengths[0] = T
    return cfg, params, x, h0, c0, lengths


def _cases():
    for mode, option, dtype in itertools.product(DEVICE_CELLS, OPTIONS, [np.float64, np.float32]):
        if option == "projection" and mode != "LSTM":
            continue
        yield pytest.param(mode, option, dtype, id=f"{mode}-{option}-{np.dtype(dtype).name}")


@pytest.mark.parametrize("mode,option,dtype", list(_cases()))
def test_training_forward_and_backward_match_cpu(mode, option, dtype):
    cfg, params, x, h0, c0, lengths = _case(mode, option, dtype)
    seed = 11
    y, h_n, c_n, cache = _core.forward(cfg, params, x, h0, c0, lengths, True, seed)
    dparams = [_dev(p) for p in params]
    yd, h_nd, c_nd, cached = _core.forward(cfg, dparams, _dev(x), _dev(h0), _dev(c0), lengths, True, seed)
    assert isinstance(yd, _core.DeviceArray) and cached is not None
    _close("y", _host(yd), y, dtype)
    _close("h_n", _host(h_nd), h_n, dtype)
    _close("c_n", _host(c_nd), c_n, dtype)

    rng = np.random.default_rng(5)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh_n = rng.standard_normal(h_n.shape).astype(dtype)
    dc_n = rng.standard_normal(c_n.shape).astype(dtype) if c_n is not None else None
    # Gradients are accumulated into: start both from the same nonzero values.
    start = [rng.standard_normal(p.shape).astype(dtype) for p in params]
    grads = [g.copy() for g in start]
    dx, dh0, dc0 = _core.backward(cache, dy, dh_n, dc_n, grads, True)
    dgrads = [_dev(g) for g in start]
    dxd, dh0d, dc0d = _core.backward(cached, _dev(dy), _dev(dh_n), _dev(dc_n), dgrads, True)
    _close("dx", _host(dxd), dx, dtype)
    _close("dh0", _host(dh0d), dh0, dtype)
    _close("dc0", _host(dc0d), dc0, dtype)
    for (name, _), g, gd in zip(cfg.param_specs(), grads, dgrads):
        _close(name, gd.numpy(), g, dtype)
    CASES.add((mode, option))


@pytest.mark.parametrize("mode,option,dtype", list(_cases()))
def test_inference_forward_matches_cpu(mode, option, dtype):
    cfg, params, x, h0, c0, lengths = _case(mode, option, dtype, seed=1)
    y, h_n, c_n, cache = _core.forward(cfg, params, x, h0, c0, lengths, False, 0)
    yd, h_nd, c_nd, cached = _core.forward(cfg, [_dev(p) for p in params], _dev(x), _dev(h0), _dev(c0), lengths,
                                           False, 0)
    assert cache is None and cached is None
    _close("y", _host(yd), y, dtype)
    _close("h_n", _host(h_nd), h_n, dtype)
    _close("c_n", _host(c_nd), c_n, dtype)


@pytest.mark.parametrize("mode", DEVICE_CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backward_without_output_gradients_and_dx(mode, dtype):
    """dy, dh_n, dc_n may each be None (zeros), dx may be skipped."""
    cfg, params, x, h0, c0, lengths = _case(mode, "everything", dtype, seed=2)
    _, h_n, _, cache = _core.forward(cfg, params, x, h0, c0, lengths, True, 3)
    _, _, _, cached = _core.forward(cfg, [_dev(p) for p in params], _dev(x), _dev(h0), _dev(c0), lengths, True, 3)
    dh_n = np.random.default_rng(0).standard_normal(h_n.shape).astype(dtype)
    grads = [np.zeros_like(p) for p in params]
    dx, dh0, dc0 = _core.backward(cache, None, dh_n, None, grads, False)
    dgrads = [_dev(np.zeros_like(p)) for p in params]
    dxd, dh0d, dc0d = _core.backward(cached, None, _dev(dh_n), None, dgrads, False)
    assert dx is None and dxd is None
    _close("dh0", dh0d.numpy(), dh0, dtype)
    _close("dc0", _host(dc0d), dc0, dtype)
    for (name, _), g, gd in zip(cfg.param_specs(), grads, dgrads):
        _close(name, gd.numpy(), g, dtype)


@pytest.mark.parametrize("mode", DEVICE_CELLS)
def test_reserve_has_the_cpu_layout_and_backpropagates_twice(mode):
    """A zeroed cache block holds the same values at the same offsets on both backends, and
    backward_reserve (which only reads it) gives the CPU's gradients, twice."""
    dtype = np.float64
    cfg, params, x, h0, c0, lengths = _case(mode, "everything", dtype, seed=3)
    T, N = x.shape[:2]
    _, h_n, _, cache = _core.forward(cfg, params, x, h0, c0, lengths, True, 9, zero_cache=True)
    _, _, _, cached = _core.forward(cfg, [_dev(p) for p in params], _dev(x), _dev(h0), _dev(c0), lengths, True, 9,
                                    zero_cache=True)
    reserve, reserved = cache.reserve(), cached.reserve()
    assert isinstance(reserved, _core.DeviceArray) and reserved.shape == reserve.shape
    _close("reserve", reserved.numpy(), reserve, dtype)
    dh_n = np.random.default_rng(1).standard_normal(h_n.shape)
    grads = [np.zeros_like(p) for p in params]
    want = _core.backward_reserve(cfg, reserve, T, N, lengths, 9, None, dh_n, None, grads, True)
    for _ in range(2):
        dgrads = [_dev(np.zeros_like(p)) for p in params]
        got = _core.backward_reserve(cfg, reserved, T, N, lengths, 9, None, _dev(dh_n), None, dgrads, True)
        for name, g, w in zip(["dx", "dh0", "dc0"], got, want):
            _close(name, _host(g), w, dtype)
        for (name, _), g, gd in zip(cfg.param_specs(), grads, dgrads):
            _close(name, gd.numpy(), g, dtype)


@pytest.mark.parametrize("mode", DEVICE_CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_matches_cpu(mode, dtype):
    cfg = _core.StackConfig(mode, 4, 6, 2, False, 0, True, 0.0)
    rng = np.random.default_rng(4)
    params = [(0.5 * rng.standard_normal(s)).astype(dtype) for _, s in cfg.param_specs()]
    x = rng.standard_normal((3, 4)).astype(dtype)
    h = rng.standard_normal((2, 3, 6)).astype(dtype)
    c = rng.standard_normal((2, 3, 6)).astype(dtype) if cfg.has_cell_state else None
    want = _core.step(cfg, params, x, h, c)
    got = _core.step(cfg, [_dev(p) for p in params], _dev(x), _dev(h), _dev(c))
    for name, g, w in zip(["y", "h", "c"], got, want):
        _close(name, _host(g), w, dtype)


def test_larger_shape_matches_cpu():
    """A shape past one block of threads per step (N*H > 256) and GEMMs of a realistic size."""
    cfg = _core.StackConfig("LSTM", 40, 96, 2, True, 0, True, 0.1)
    rng = np.random.default_rng(6)
    params = [(0.2 * rng.standard_normal(s)).astype(np.float32) for _, s in cfg.param_specs()]
    x = rng.standard_normal((12, 9, 40)).astype(np.float32)
    lengths = rng.integers(1, 13, size=9).astype(np.int64)
    y, h_n, c_n, cache = _core.forward(cfg, params, x, None, None, lengths, True, 1)
    dparams = [_dev(p) for p in params]
    yd, h_nd, c_nd, cached = _core.forward(cfg, dparams, _dev(x), None, None, lengths, True, 1)
    _close("y", yd.numpy(), y, np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    grads = [np.zeros_like(p) for p in params]
    dx, _, _ = _core.backward(cache, dy, None, None, grads, True)
    dgrads = [_dev(np.zeros_like(p)) for p in params]
    dxd, _, _ = _core.backward(cached, _dev(dy), None, None, dgrads, True)
    _close("dx", dxd.numpy(), dx, np.float32)
    for (name, _), g, gd in zip(cfg.param_specs(), grads, dgrads):
        _close(name, gd.numpy(), g, np.float32)


# ---- device arrays and bad input ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_device_array_round_trip(dtype):
    a = (np.arange(24).reshape(2, 3, 4) * 3 - 7).astype(dtype)
    d = _core.to_device(a[:, ::-1])  # a non-contiguous view is copied in C order
    assert d.shape == (2, 3, 4) and d.dtype == np.dtype(dtype) and d.device == "cuda"
    np.testing.assert_array_equal(d.numpy(), a[:, ::-1])
    np.testing.assert_array_equal(d.copy().numpy(), a[:, ::-1])
    assert "DeviceArray(shape=(2, 3, 4)" in repr(d)


def test_device_array_refuses_other_dtypes():
    with pytest.raises(TypeError, match="expected dtype float32, float64 or int64, got int32"):
        _core.to_device(np.zeros(3, np.int32))


def _device_lstm():
    cfg, params, x, h0, c0, lengths = _case("LSTM", "h0", np.float32)
    return cfg, [_dev(p) for p in params], _dev(x), _dev(h0), _dev(c0)


def test_host_state_with_device_input_is_refused():
    cfg, params, x, h0, c0 = _device_lstm()
    with pytest.raises(TypeError, match=r"h0: expected a CUDA array .*got a numpy array \(host memory\)"):
        _core.forward(cfg, params, x, h0.numpy(), c0, None, True, 0)


def test_device_params_with_host_input_are_refused():
    cfg, params, x, h0, c0 = _device_lstm()
    with pytest.raises(TypeError, match=r"params\[0\] \(weight_ih_l0\): expected a numpy array"):
        _core.forward(cfg, params, x.numpy(), None, None, None, True, 0)


def test_host_params_with_device_input_are_refused():
    cfg, params, x, h0, c0 = _device_lstm()
    host = [p.numpy() for p in params]
    with pytest.raises(TypeError, match=r"params\[0\] \(weight_ih_l0\): expected a CUDA array"):
        _core.forward(cfg, host, x, None, None, None, True, 0)


def test_wrong_device_shape_and_dtype_are_refused():
    cfg, params, x, h0, c0 = _device_lstm()
    with pytest.raises(ValueError, match=r"h0 shape: expected \(1, 3, 6\), got \(2, 3, 6\)"):
        _core.forward(cfg, params, x, _dev(np.zeros((2, 3, 6), np.float32)), None, None, True, 0)
    with pytest.raises(TypeError, match="h0: expected dtype float32, got float64"):
        _core.forward(cfg, params, x, _dev(np.zeros((1, 3, 6))), None, None, True, 0)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        _core.forward(cfg, params, _dev(np.zeros((5, 3, 4), np.int64)), None, None, None, True, 0)


def test_device_lengths_are_refused():
    cfg, params, x, h0, c0 = _device_lstm()
    with pytest.raises(TypeError, match="lengths: expected a host array"):
        _core.forward(cfg, params, x, None, None, _dev(np.array([5, 5, 5], np.int64)), True, 0)


def test_bad_lengths_are_refused_before_the_device_runs():
    cfg, params, x, h0, c0 = _device_lstm()
    with pytest.raises(ValueError, match=r"lengths\[1\]: expected a length in \[1, 5\], got 0"):
        _core.forward(cfg, params, x, None, None, np.array([5, 0, 2], np.int64), True, 0)


def test_cache_is_good_for_one_backward():
    cfg, params, x, h0, c0 = _device_lstm()
    _, _, _, cache = _core.forward(cfg, params, x, h0, c0, None, True, 0)
    grads = [_dev(np.zeros(p.shape, np.float32)) for p in params]
    _core.backward(cache, None, None, None, grads, False)
    with pytest.raises(ValueError, match="has not been backpropagated yet"):
        _core.backward(cache, None, None, None, grads, False)


def test_host_gradients_for_a_device_cache_are_refused():
    cfg, params, x, h0, c0 = _device_lstm()
    y, _, _, cache = _core.forward(cfg, params, x, h0, c0, None, True, 0)
    with pytest.raises(TypeError, match="dy: expected a CUDA array"):
        _core.backward(cache, y.numpy(), None, None, [_dev(np.zeros(p.shape, np.float32)) for p in params], False)


@pytest.mark.parametrize("mode", ["LN_LSTM", "LN_GRU"])
def test_layernorm_cells_are_refused_by_name(mode):
    cfg = _core.StackConfig(mode, 4, 6, 1, False, 0, True, 0.0)
    params = [_dev(np.zeros(s, np.float32)) for _, s in cfg.param_specs()]
    with pytest.raises(ValueError, match=f"got '{mode.lower()}' \\(the LayerNorm cells run on the CPU only"):
        _core.forward(cfg, params, _dev(np.zeros((2, 1, 4), np.float32)), None, None, None, False, 0)


def test_status_names_an_emulation_build():
    if rnnkit.build_info().get("cuda_emulated"):
        assert "emulation" in rnnkit.cuda.status()
        assert rnnkit.cuda.is_emulated()
    else:
        assert not rnnkit.cuda.is_emulated()


# ---- the layer API on the CUDA backend: layer.to("cuda") -------------------------------------
def _layer_pair(cls, **kw):
    import copy

    cpu = cls(4, 6, seed=0, dtype="float64", **kw)
    return cpu, copy.deepcopy(cpu).to("cuda")


LAYER_CASES = [
    (rnnkit.RNN, dict(num_layers=2, nonlinearity="relu")),
    (rnnkit.LSTM, dict(num_layers=2, bidirectional=True, batch_first=True)),
    (rnnkit.LSTM, dict(proj_size=3)),
    (rnnkit.GRU, dict(num_layers=2, bidirectional=True, dropout=0.3)),
    (rnnkit.GRU, dict(batch_first=True, reset_after=False)),
]


@pytest.mark.parametrize("cls,kw", LAYER_CASES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("inputs_on_device", [False, True])
def test_layer_to_cuda_matches_the_cpu_layer(cls, kw, inputs_on_device):
    cpu, dev = _layer_pair(cls, **kw)
    assert dev.device == "cuda" and repr(dev).endswith(".to('cuda')")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4) if kw.get("batch_first") else (5, 3, 4))
    lengths = np.array([5, 2, 4])
    y, state = cpu(x, lengths=lengths)
    yd, state_d = dev(_dev(x) if inputs_on_device else x, lengths=lengths)
    assert isinstance(yd, _core.DeviceArray)
    _close("y", rnnkit.to_numpy(yd), y, np.float64)
    h, hd = (state[0], state_d[0]) if isinstance(state, tuple) else (state, state_d)
    _close("h_n", hd.numpy(), h, np.float64)
    dy = rng.standard_normal(y.shape)
    dx, _ = cpu.backward(dy)
    dxd, _ = dev.backward(_dev(dy) if inputs_on_device else dy)
    _close("dx", dxd.numpy(), dx, np.float64)
    for name in cpu.grads:
        _close(name, rnnkit.to_numpy(dev.grads[name]), cpu.grads[name], np.float64)
    dev.zero_grad()
    assert all(not rnnkit.to_numpy(g).any() for g in dev.grads.values())


def test_unbatched_input_and_states_on_cuda():
    cpu, dev = _layer_pair(rnnkit.LSTM, num_layers=2)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4))
    h0, c0 = rng.standard_normal((2, 6)), rng.standard_normal((2, 6))
    y, (h, c) = cpu(x, (h0, c0))
    yd, (hd, cd) = dev(_dev(x), (_dev(h0), c0))
    assert yd.shape == (5, 6) and hd.shape == (2, 6)
    _close("y", yd.numpy(), y, np.float64)
    _close("c_n", cd.numpy(), c, np.float64)
    dx, (dh0, dc0) = cpu.backward(None, (np.ones((2, 6)), None))
    dxd, (dh0d, dc0d) = dev.backward(None, (_dev(np.ones((2, 6))), None))
    _close("dx", dxd.numpy(), dx, np.float64)
    _close("dc0", dc0d.numpy(), dc0, np.float64)


@pytest.mark.parametrize("cls", [rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU])
def test_step_on_cuda_matches_cpu(cls):
    cpu, dev = _layer_pair(cls, num_layers=2)
    rng = np.random.default_rng(2)
    state = state_d = None
    for _ in range(3):
        x = rng.standard_normal((2, 4))
        y, state = cpu.step(x, state)
        yd, state_d = dev.step(x, state_d)
        _close("y", yd.numpy(), y, np.float64)
    y1, _ = cpu.step(x[0])
    y1d, _ = dev.step(_dev(x[0]))
    assert y1d.shape == (6,)
    _close("y", y1d.numpy(), y1, np.float64)


def test_cuda_layer_state_dict_pickle_and_back_to_cpu():
    import pickle

    cpu, dev = _layer_pair(rnnkit.GRU, num_layers=2)
    sd = dev.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    other = rnnkit.GRU(4, 6, num_layers=2, seed=5, dtype="float64").to("cuda")
    other.load_state_dict(sd)
    x = np.random.default_rng(3).standard_normal((4, 2, 4))
    want = cpu(x)[0]
    _close("y after load_state_dict", other(x)[0].numpy(), want, np.float64)
    clone = pickle.loads(pickle.dumps(dev))
    assert clone.device == "cuda"
    _close("y after pickle", clone(x)[0].numpy(), want, np.float64)
    back = clone.cpu()
    assert back.device == "cpu" and isinstance(back.params["weight_ih_l0"], np.ndarray)
    np.testing.assert_array_equal(back(x)[0], want)


def test_layernorm_layers_refuse_cuda():
    with pytest.raises(ValueError, match="LayerNormLSTM .*run on the CPU only"):
        rnnkit.LayerNormLSTM(4, 6).to("cuda")


def test_cuda_layer_names_host_parameters_replaced_by_the_user():
    dev = rnnkit.RNN(4, 6).to("cuda")
    dev.params["weight_hh_l0"] = np.zeros((6, 6), np.float32)
    with pytest.raises(TypeError, match=r"params\['weight_hh_l0'\]: expected a CUDA array"):
        dev(np.zeros((2, 1, 4), np.float32))


def test_bad_device_names_are_refused():
    with pytest.raises(ValueError, match=r"device: expected 'cpu' or 'cuda' \(or 'cuda:0'\), got 'gpu'"):
        rnnkit.RNN(4, 6).to("gpu")
    with pytest.raises(TypeError, match="device: expected 'cpu' or 'cuda', got int 0"):
        rnnkit.RNN(4, 6).to(0)
    assert rnnkit.RNN(4, 6).to("cuda:0").device == "cuda"


# ---- optimizers and clipping on the CUDA backend --------------------------------------------
OPTIMIZERS = [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.1)),
    ("Adam", dict(lr=0.01, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)),
    ("RMSprop", dict(lr=0.01)),
]


@pytest.mark.parametrize("name,kw", OPTIMIZERS, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
@pytest.mark.parametrize("clip", ["norm", "value"])
def test_training_steps_on_cuda_match_cpu(name, kw, clip):
    cpu, dev = _layer_pair(rnnkit.LSTM, num_layers=2, bidirectional=True)
    opt_cpu = getattr(rnnkit.optim, name)(cpu, **kw)
    opt_dev = getattr(rnnkit.optim, name)(dev, **kw)
    rng = np.random.default_rng(7)
    for _ in range(3):
        x = rng.standard_normal((5, 3, 4))
        dy = rng.standard_normal((5, 3, 12))
        norms = []
        for layer, opt in ((cpu, opt_cpu), (dev, opt_dev)):
            opt.zero_grad()
            layer(x)
            layer.backward(dy)
            if clip == "norm":
                norms.append(rnnkit.optim.clip_grad_norm(layer, 0.5))  # the norm before clipping
            else:
                rnnkit.optim.clip_grad_value(layer, 0.05)
            opt.step()
        if clip == "norm":
            assert norms[1] == pytest.approx(norms[0], rel=1e-12)
    for n in cpu.params:
        _close(n, rnnkit.to_numpy(dev.params[n]), cpu.params[n], np.float64)
    state = opt_dev.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state["buffers"].values())
    for key, value in opt_cpu.state_dict()["buffers"].items():
        _close(key, state["buffers"][key], value, np.float64)
    fresh = getattr(rnnkit.optim, name)(dev, **kw)
    fresh.load_state_dict(opt_cpu.state_dict())
    for key, value in opt_cpu.state_dict()["buffers"].items():
        np.testing.assert_array_equal(fresh.state_dict()["buffers"][key], value)


def test_mixed_device_lists_are_refused():
    dev = rnnkit.RNN(4, 6).to("cuda")
    params = list(dev.params.values())
    host = [rnnkit.to_numpy(g) for g in dev.grads.values()]
    with pytest.raises(TypeError, match=r"grads\[0\]: expected a CUDA array like the others, got a numpy array"):
        _core.sgd_step(params, host, None, 0.1, 0.0, 0.0, 0.0, False, True)
