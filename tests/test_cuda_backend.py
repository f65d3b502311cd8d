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

DEVICE_CELLS = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU", "GRU_RESET_BEFORE", "LN_LSTM", "LN_GRU"]


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


# The cells and options the persistent small-batch forward runs (cuda/persistent.h); the others
# keep the standard path whatever the mode.
PERSISTENT_CELLS = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]


def _persistent_runs(mode, option):
    return mode in PERSISTENT_CELLS and OPTIONS[option][2] == 0


def _cases():
    """Every cell x option x dtype on the standard path, and again on the persistent forward where
    that runs (each path forced with rnnkit.cuda.set_persistent)."""
    for mode, option, dtype in itertools.product(DEVICE_CELLS, OPTIONS, [np.float64, np.float32]):
        if option == "projection" and mode != "LSTM":
            continue
        for path in ("standard", "persistent"):
            if path == "persistent" and not _persistent_runs(mode, option):
                continue
            yield pytest.param(mode, option, dtype, path, id=f"{mode}-{option}-{np.dtype(dtype).name}-{path}")


@pytest.fixture
def forward_path(request):
    """Sets the CUDA forward path for one test ("standard": never persistent; "persistent":
    always where it runs) and checks afterwards that the persistent kernel ran exactly when asked:
    once per layer-direction forward."""
    calls = {"expected": 0}

    def use(path, expected_launches=0):
        rnnkit.cuda.set_persistent("always" if path == "persistent" else "never")
        calls["expected"] = expected_launches if path == "persistent" else 0
        calls["start"] = rnnkit.cuda.persistent_launches()

    yield use
    try:
        if "start" in calls:
            assert rnnkit.cuda.persistent_launches() - calls["start"] == calls["expected"]
    finally:
        rnnkit.cuda.set_persistent("auto")


@pytest.mark.parametrize("mode,option,dtype,path", list(_cases()))
def test_training_forward_and_backward_match_cpu(mode, option, dtype, path, forward_path):
    cfg, params, x, h0, c0, lengths = _case(mode, option, dtype)
    forward_path(path, cfg.num_layers * cfg.num_directions)
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
    CASES.add((mode, option, path))


@pytest.mark.parametrize("mode,option,dtype,path", list(_cases()))
def test_inference_forward_matches_cpu(mode, option, dtype, path, forward_path):
    cfg, params, x, h0, c0, lengths = _case(mode, option, dtype, seed=1)
    forward_path(path, cfg.num_layers * cfg.num_directions)
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


@pytest.mark.parametrize("mode", PERSISTENT_CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_persistent_forward_over_several_blocks_and_split_dot_products_matches_cpu(mode, dtype, forward_path):
    """H = 42 on the emulation's 4 multiprocessors: 11 units per block, the last block 9 (2 idle
    threads), each dot product split over 4 threads; training forward, then the standard backward
    from the cache the persistent forward left."""
    cfg = _core.StackConfig(mode, 5, 42, 2, True, 0, True, 0.0)
    forward_path("persistent", 4)
    rng = np.random.default_rng(9)
    # PyTorch's init scale (1/sqrt(H)): a contracting recurrence, so float32's rounding (summed in
    # another order than the CPU's) is not amplified into the gradients' last digits.
    params = [(rng.uniform(-1, 1, s) / np.sqrt(42)).astype(dtype) for _, s in cfg.param_specs()]
    x = rng.standard_normal((7, 5, 5)).astype(dtype)
    lengths = np.array([7, 3, 1, 7, 5], np.int64)
    y, h_n, c_n, cache = _core.forward(cfg, params, x, None, None, lengths, True, 0)
    yd, h_nd, c_nd, cached = _core.forward(cfg, [_dev(p) for p in params], _dev(x), None, None, lengths, True, 0)
    _close("y", yd.numpy(), y, dtype)
    _close("h_n", h_nd.numpy(), h_n, dtype)
    _close("c_n", _host(c_nd), c_n, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    grads = [np.zeros_like(p) for p in params]
    dgrads = [_dev(g) for g in grads]
    dx, dh0, _ = _core.backward(cache, dy, None, None, grads, True)
    dxd, dh0d, _ = _core.backward(cached, _dev(dy), None, None, dgrads, True)
    _close("dx", dxd.numpy(), dx, dtype)
    _close("dh0", dh0d.numpy(), dh0, dtype)
    for (name, _), g, gd in zip(cfg.param_specs(), grads, dgrads):
        _close(name, gd.numpy(), g, dtype)


def test_persistent_mode_auto_takes_small_batches_only():
    cfg, params, x, h0, c0, lengths = _case("LSTM", "plain", np.float32)
    dparams = [_dev(p) for p in params]
    assert rnnkit.cuda.get_persistent() == "auto"
    start = rnnkit.cuda.persistent_launches()
    _core.forward(cfg, dparams, _dev(x), None, None, None, False, 0)  # N = 3
    assert rnnkit.cuda.persistent_launches() == start + 1
    big = np.zeros((2, 17, x.shape[2]), np.float32)  # N = 17 > 16: the standard path
    _core.forward(cfg, dparams, _dev(big), None, None, None, False, 0)
    assert rnnkit.cuda.persistent_launches() == start + 1
    gru_before = _core.StackConfig("GRU_RESET_BEFORE", 4, 6, 1, False, 0, True, 0.0)
    _core.forward(gru_before, [_dev(np.zeros(s, np.float32)) for _, s in gru_before.param_specs()], _dev(x),
                  None, None, None, False, 0)
    assert rnnkit.cuda.persistent_launches() == start + 1


def test_layernorm_rows_wider_than_a_block_can_take_are_refused(row_thread_cap):
    row_thread_cap(32)  # at most 8 lanes x 32 threads = 256 units
    cfg = _core.StackConfig("LN_GRU", 3, 257, 1, False, 0, True, 0.0)
    params = [_dev(np.zeros(s, np.float32)) for _, s in cfg.param_specs()]
    with pytest.raises(ValueError, match="hidden_size: expected at most 256 for a LayerNorm cell on the CUDA backend"):
        _core.forward(cfg, params, _dev(np.zeros((2, 1, 3), np.float32)), None, None, None, False, 0)
    with pytest.raises(ValueError, match=r"threads: expected a power of two in \[32, 1024\], got 48"):
        row_thread_cap(48)


def test_persistent_mode_is_checked():
    with pytest.raises(ValueError, match=r"mode: expected one of \('auto', 'always', 'never'\), got 'fast'"):
        rnnkit.cuda.set_persistent("fast")
    with pytest.raises(TypeError, match="mode: expected one of .* got int"):
        rnnkit.cuda.set_persistent(1)
    assert rnnkit.cuda.get_persistent() == "auto"


# ---- CUDA graphs and streams -------------------------------------------------------------------
# One case per kind of loop body: plain and two-stage pointwise, the projection's extra GEMM, the
# LayerNorm row kernels, lengths, stacks and both directions.
GRAPH_CASES = [("RNN_TANH", "everything"), ("LSTM", "projection"), ("GRU", "lengths"),
               ("GRU_RESET_BEFORE", "bidirectional"), ("LN_LSTM", "stack2"), ("LN_GRU", "everything")]


@pytest.fixture
def standard_path():
    """The standard path (the one graphs are for) with graphs on, restored afterwards."""
    rnnkit.cuda.set_persistent("never")
    rnnkit.cuda.set_graphs(True)
    yield
    rnnkit.cuda.set_persistent("auto")
    rnnkit.cuda.set_graphs(True)


def _device_training_step(cfg, dparams, x, h0, c0, lengths, dy, dh_n, dc_n):
    """One forward and backward on the device, every result brought to the host."""
    yd, h_nd, c_nd, cached = _core.forward(cfg, dparams, x, h0, c0, lengths, True, 7)
    dgrads = [_dev(np.zeros(p.shape, np.dtype(p.dtype))) for p in dparams]
    dxd, dh0d, dc0d = _core.backward(cached, dy, dh_n, dc_n, dgrads, True)
    return [_host(a) for a in (yd, h_nd, c_nd, dxd, dh0d, dc0d)] + [g.numpy() for g in dgrads]


def _device_case(mode, option, dtype, seed=0):
    cfg, params, x, h0, c0, lengths = _case(mode, option, dtype, seed=seed)
    y, h_n, c_n, _ = _core.forward(cfg, params, x, h0, c0, lengths, True, 7)
    rng = np.random.default_rng(seed + 1)
    dy, dh_n = rng.standard_normal(y.shape).astype(dtype), rng.standard_normal(h_n.shape).astype(dtype)
    dc_n = rng.standard_normal(c_n.shape).astype(dtype) if c_n is not None else None
    args = (cfg, [_dev(p) for p in params], _dev(x), _dev(h0), _dev(c0), lengths, _dev(dy), _dev(dh_n), _dev(dc_n))
    return cfg, params, args


@pytest.mark.parametrize("mode,option", GRAPH_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_graphed_loops_give_the_ungraphed_results_bitwise(mode, option, dtype, standard_path):
    """The same launches in the same order, as graphs or one by one: the same bits. And the graph
    path did run: each layer-direction's forward and backward loop is one graph launch."""
    cfg, _, args = _device_case(mode, option, dtype)
    loops = 2 * cfg.num_layers * cfg.num_directions
    rnnkit.cuda.set_graphs(False)
    start = rnnkit.cuda.graph_stats()
    plain = _device_training_step(*args)
    assert rnnkit.cuda.graph_stats()["launches"] == start["launches"]
    rnnkit.cuda.set_graphs(True)
    for _ in range(3):
        start = rnnkit.cuda.graph_stats()
        graphed = _device_training_step(*args)
        assert rnnkit.cuda.graph_stats()["launches"] - start["launches"] == loops
        for a, b in zip(plain, graphed):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode,option", GRAPH_CASES)
def test_a_steady_training_loop_relaunches_its_graphs_without_capturing(mode, option, standard_path):
    """Same shapes every iteration: from the second on (the first allocates from the device), the
    caching allocator hands out the same blocks -- the lowest-addressed free one of each size, not
    the most recently freed -- so every loop is a cached graph's relaunch."""
    cfg, params, args = _device_case(mode, option, np.float32)
    rnnkit.cuda.clear_graph_cache()
    first = _device_training_step(*args)
    _device_training_step(*args)
    start = rnnkit.cuda.graph_stats()
    for _ in range(4):
        again = _device_training_step(*args)
    stats = rnnkit.cuda.graph_stats()
    assert stats["captures"] == start["captures"], stats
    assert stats["launches"] - start["launches"] == 4 * 2 * cfg.num_layers * cfg.num_directions
    for a, b in zip(first, again):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_a_relaunched_graph_reads_the_new_values_in_its_buffers(standard_path):
    """A cached graph is relaunched for new inputs written into the same device array: it must read
    them (the per-step gates are recomputed into the same scratch before each launch)."""
    cfg, params, x, h0, c0, lengths = _case("LSTM", "bidirectional_lengths", np.float64)
    dparams, xd, h0d = [_dev(p) for p in params], _dev(x), _dev(h0)
    rng = np.random.default_rng(3)
    rnnkit.cuda.clear_graph_cache()
    for i in range(4):
        x_i = rng.standard_normal(x.shape)
        xd.copy_from_host(x_i)
        start = rnnkit.cuda.graph_stats()
        yd, h_nd, c_nd, _ = _core.forward(cfg, dparams, xd, h0d, None, lengths, False, 0)
        y, h_n, c_n, _ = _core.forward(cfg, params, x_i, h0, None, lengths, False, 0)
        if i >= 2:  # warmed up: no capture, the graphs read the new gates
            assert rnnkit.cuda.graph_stats()["captures"] == start["captures"]
        _close("y", yd.numpy(), y, np.float64)
        _close("h_n", h_nd.numpy(), h_n, np.float64)
        del yd, h_nd, c_nd


def test_graphs_of_one_shape_with_new_buffers_are_updated_in_place(standard_path):
    """Outputs kept alive put every call's y somewhere new: the loops' records differ only in
    pointers, so past a few graphs side by side the cached ones are updated instead."""
    cfg, params, x, h0, c0, lengths = _case("GRU", "plain", np.float32)
    dparams, xd = [_dev(p) for p in params], _dev(x)
    y, _, _, _ = _core.forward(cfg, params, x, None, None, None, False, 0)
    rnnkit.cuda.clear_graph_cache()
    start = rnnkit.cuda.graph_stats()
    side_by_side = start["per_topology"]
    kept = [_core.forward(cfg, dparams, xd, None, None, None, False, 0) for _ in range(side_by_side + 3)]
    stats = rnnkit.cuda.graph_stats()
    assert stats["captures"] - start["captures"] == side_by_side + 3
    assert stats["instantiations"] - start["instantiations"] == side_by_side
    assert stats["updates"] - start["updates"] == 3
    assert stats["cached"] == side_by_side
    for out in kept:
        _close("y", out[0].numpy(), y, np.float32)


def test_graph_and_stream_settings_are_checked():
    with pytest.raises(TypeError, match="enabled: expected a bool, got int"):
        rnnkit.cuda.set_graphs(1)
    assert rnnkit.cuda.get_graphs() is True
    with pytest.raises(TypeError, match=r"stream: expected a cudaStream_t as an int, None, or a stream object .* got str"):
        rnnkit.cuda.set_stream("default")
    with pytest.raises(ValueError, match="stream: expected a cudaStream_t handle .* got -1"):
        rnnkit.cuda.stream(-1)
    assert rnnkit.cuda.current_stream() == 0


def test_the_current_stream_is_per_thread_and_restored():
    import threading

    class FakeTorchStream:
        cuda_stream = 0x5000

    seen = {}
    with rnnkit.cuda.stream(FakeTorchStream()):
        assert rnnkit.cuda.current_stream() == 0x5000
        worker = threading.Thread(target=lambda: seen.setdefault("other", rnnkit.cuda.current_stream()))
        worker.start()
        worker.join()
        with pytest.raises(KeyError):
            with rnnkit.cuda.stream(0x6000):
                assert rnnkit.cuda.current_stream() == 0x6000
                raise KeyError("inside")
        assert rnnkit.cuda.current_stream() == 0x5000
    assert seen["other"] == 0 and rnnkit.cuda.current_stream() == 0
    rnnkit.cuda.set_stream(None)
    assert rnnkit.cuda.current_stream() == 0


def _a_real_side_stream():
    """A stream handle work can run on: any in the emulation (streams run at once), a PyTorch CUDA
    stream on a GPU; None when neither is there."""
    if rnnkit.cuda.is_emulated():
        return 0x7000
    torch = pytest.importorskip("torch")
    return torch.cuda.Stream() if torch.cuda.is_available() else None


@pytest.mark.parametrize("mode,option", GRAPH_CASES[:3])
def test_work_on_a_side_stream_matches_the_default_stream(mode, option, standard_path):
    side = _a_real_side_stream()
    if side is None:
        pytest.skip("no CUDA stream to run on: torch.cuda is unavailable")
    _, _, args = _device_case(mode, option, np.float32)
    on_default = _device_training_step(*args)
    with rnnkit.cuda.stream(side):
        on_side = _device_training_step(*args)
    for a, b in zip(on_default, on_side):
        if a is not None:
            np.testing.assert_array_equal(a, b)


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
    with pytest.raises(ValueError, match=r"lengths\[1\]: expected a length in \[0, 5\], got -1"):
        _core.forward(cfg, params, x, None, None, np.array([5, -1, 2], np.int64), True, 0)
    with pytest.raises(ValueError, match=r"lengths\[2\]: expected a length in \[0, 5\], got 6"):
        _core.forward(cfg, params, x, None, None, np.array([5, 0, 6], np.int64), True, 0)


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


@pytest.fixture
def row_thread_cap():
    """Caps the LayerNorm row kernels' block size for one test (restored to 1024 after)."""
    yield _core._cuda_set_row_thread_cap
    _core._cuda_set_row_thread_cap(1024)


@pytest.mark.parametrize("mode", ["LN_LSTM", "LN_GRU"])
@pytest.mark.parametrize("cap,H,lanes", [(1024, 200, 1), (128, 200, 2), (64, 200, 4), (32, 200, 8), (1024, 1100, 2)])
def test_layernorm_rows_with_several_lanes_per_thread_match_cpu(mode, cap, H, lanes, row_thread_cap):
    """A row of H over at most `cap` threads gives each thread `lanes` elements of every gate slice,
    the last ones partly past H (row_kernels.h's row_launch): every lane and every mean is still
    the CPU's. H = 1100 is the real case (1024 threads of 2 lanes)."""
    assert lanes == min(k for k in (1, 2, 4, 8) if -(-H // k) <= cap)
    row_thread_cap(cap)
    cfg, params, x, h0, c0, lengths = _case(mode, "lengths", np.float64, T=3, N=2, C=3, H=H, seed=7)
    y, h_n, c_n, cache = _core.forward(cfg, params, x, h0, c0, lengths, True, 0)
    yd, h_nd, c_nd, cached = _core.forward(cfg, [_dev(p) for p in params], _dev(x), _dev(h0), _dev(c0), lengths,
                                           True, 0)
    _close("y", _host(yd), y, np.float64)
    _close("h_n", _host(h_nd), h_n, np.float64)
    rng = np.random.default_rng(8)
    dy = rng.standard_normal(y.shape)
    grads = [np.zeros_like(p) for p in params]
    dgrads = [_dev(g) for g in grads]
    dx, dh0, _ = _core.backward(cache, dy, None, None, grads, True)
    dxd, dh0d, _ = _core.backward(cached, _dev(dy), None, None, dgrads, True)
    _close("dx", _host(dxd), dx, np.float64)
    _close("dh0", _host(dh0d), dh0, np.float64)
    for (name, _), g, gd in zip(cfg.param_specs(), grads, dgrads):
        _close(name, gd.numpy(), g, np.float64)


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
    (rnnkit.LayerNormLSTM, dict(num_layers=2, bidirectional=True)),
    (rnnkit.LayerNormGRU, dict(batch_first=True)),
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


# ---- interop: __cuda_array_interface__ and DLPack, both ways ------------------------------------
class _ForeignCudaArray:
    """Another library's CUDA array as rnnkit sees it: only __cuda_array_interface__ (v3). Over a
    host buffer, which is device memory in the emulation; on a GPU the tests below use torch."""

    def __init__(self, host, strides=None, typestr=None):
        self.host = host
        self.__cuda_array_interface__ = {
            "shape": host.shape, "typestr": typestr or host.dtype.str, "data": (host.ctypes.data, False),
            "strides": strides, "version": 3, "stream": None,
        }


class _ForeignDLPack:
    """An array exposing only DLPack (here NumPy's, on the host: the emulation's device memory)."""

    def __init__(self, host):
        self.host = host

    def __dlpack__(self, **kw):
        return self.host.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.host.__dlpack_device__()


needs_emulation = pytest.mark.skipif(not rnnkit.cuda.is_emulated(),
                                     reason="host buffers stand in for device memory only in the emulation build")


def test_device_arrays_export_the_cuda_array_interface():
    a = _dev(np.arange(6, dtype=np.float32).reshape(2, 3))
    cai = a.__cuda_array_interface__
    assert cai["shape"] == (2, 3) and cai["typestr"] == "<f4" and cai["version"] == 3
    assert cai["strides"] is None and cai["data"][1] is False and cai["data"][0] != 0
    assert a.__cuda_array_interface__["data"] == cai["data"]  # the same memory every time
    assert a.__dlpack_device__() == ((1, 0) if rnnkit.cuda.is_emulated() else (2, 0))


@needs_emulation
def test_dlpack_export_shares_memory():
    a = _dev(np.arange(6, dtype=np.float64).reshape(2, 3))
    view = np.from_dlpack(a)
    np.testing.assert_array_equal(view, np.arange(6).reshape(2, 3))
    a.zero_()
    assert not view.any()  # no copy was made
    del a
    assert view.sum() == 0  # the capsule keeps the memory alive


@needs_emulation
@pytest.mark.parametrize("wrap", [_ForeignCudaArray, _ForeignDLPack], ids=["cuda_array_interface", "dlpack"])
def test_foreign_arrays_are_read_in_place(wrap):
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    foreign = wrap(host)
    view = rnnkit.cuda.as_device_array(foreign)
    assert isinstance(view, _core.DeviceArray) and view.shape == (3, 4) and view.dtype == np.float32
    host[0, 0] = 42.0
    assert view.numpy()[0, 0] == 42.0  # the same memory
    del foreign, host
    import gc

    gc.collect()
    assert view.numpy()[2, 3] == 11.0  # the view keeps its owner alive


@needs_emulation
def test_a_layer_on_cuda_takes_a_foreign_array_without_a_copy():
    cpu, dev = _layer_pair(rnnkit.GRU, num_layers=2)
    x = np.random.default_rng(4).standard_normal((5, 2, 4))
    h0 = np.random.default_rng(5).standard_normal((2, 2, 6))
    y, h = cpu(x, h0)
    yd, hd = dev(_ForeignCudaArray(x), _ForeignCudaArray(h0))
    _close("y", yd.numpy(), y, np.float64)
    _close("h_n", hd.numpy(), h, np.float64)
    with pytest.raises(TypeError, match=r"x: expected dtype float64, got float32 \(a CUDA array is read without a "
                                        r"copy: convert it to float64 first\)"):
        dev(_ForeignCudaArray(x.astype(np.float32)))


@needs_emulation
def test_bad_foreign_arrays_are_refused():
    host = np.zeros((3, 4), np.float32)
    with pytest.raises(TypeError, match="typestr '<f4', '<f8' or '<i8' .* got '<f2'"):
        rnnkit.cuda.as_device_array(_ForeignCudaArray(host.astype(np.float16)))
    with pytest.raises(ValueError, match=r"expected a C-contiguous array, got strides \(1, 3\)"):
        rnnkit.cuda.as_device_array(_ForeignCudaArray(np.zeros((3, 4), np.float32), strides=(4, 12)))
    with pytest.raises(TypeError, match="got a numpy array \\(host memory: rnnkit.to_device copies one"):
        rnnkit.cuda.as_device_array(host)
    with pytest.raises(TypeError, match="expected a CUDA array .* got int"):
        rnnkit.cuda.as_device_array(3)
    with pytest.raises(TypeError, match="expected dtype float32, float64 or int64, got DLPack type code 2 with 16"):
        rnnkit.cuda.as_device_array(_ForeignDLPack(host.astype(np.float16)))


# ---- the caching allocator ---------------------------------------------------------------------
def test_a_training_loop_allocates_from_the_device_in_its_first_pass_only():
    cfg, params, x, h0, c0, lengths = _case("LSTM", "everything", np.float32)
    dparams = [_dev(p) for p in params]
    dgrads = [_dev(np.zeros_like(p)) for p in params]
    xd = _dev(x)

    def one_pass():
        y, h_n, c_n, cache = _core.forward(cfg, dparams, xd, None, None, lengths, True, 0)
        _core.backward(cache, y, None, None, dgrads, True)

    one_pass()
    before = rnnkit.cuda.memory_stats()
    for _ in range(3):
        one_pass()
    after = rnnkit.cuda.memory_stats()
    assert after["device_allocations"] == before["device_allocations"]
    assert after["reuses"] > before["reuses"]
    assert after["cached_bytes"] > 0
    rnnkit.cuda.empty_cache()
    emptied = rnnkit.cuda.memory_stats()
    assert emptied["cached_bytes"] == 0 and emptied["in_use_bytes"] == after["in_use_bytes"]
    one_pass()  # still works, allocating afresh
    assert rnnkit.cuda.memory_stats()["device_allocations"] > after["device_allocations"]
