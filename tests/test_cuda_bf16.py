"""precision="bfloat16" on the CUDA backend, against the CPU backend's bfloat16 and against float64.

Both backends round every GEMM operand to bfloat16 with the same function (rnnkit/common.h's
to_bf16, round to nearest even) and sum the exact products in float32; they differ in the order of
those sums (cuBLAS vs the CPU's packed kernels). The device's GEMM is checked against NumPy
(round, then multiply in float64); then every cell x option forward and backward against the CPU
at bf16, and against the float64 computation on the same weights with test_bf16.py's named
tolerances. Runs wherever the CUDA backend does: a GPU, or the emulation build.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

import rnnkit
from rnnkit import _core
from reference import max_relative_diff, relative_error, round_bf16
from test_bf16 import BF16_GEMM_RTOL, BF16_SEQUENCE_RTOL, BF16_STEP_RTOL, BF16_VS_F64_RTOL

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not rnnkit.cuda.is_available(), reason=f"CUDA unavailable: {rnnkit.cuda.status()}"),
]

# CUDA bf16 against CPU bf16 over a sequence: one step's results agree to float32 sums
# (BF16_STEP_RTOL); after that a state element next to a bf16 rounding boundary may round the other
# way on one backend, which is the many-step tolerance of the CPU against its rounded reference.
CUDA_VS_CPU_BF16_RTOL = BF16_SEQUENCE_RTOL
# ... and on gradients, which sum such flips over every step and row: about twice the worst
# measured in the emulation (3.7e-3, a 2-layer bidirectional Elman stack), well under the distance
# of the float32 result from the bf16 one (checked case by case, _assert_closer_than_float32).
CUDA_VS_CPU_BF16_GRAD_RTOL = {"default": 8e-3}
# An output bf16 changes measurably (float32's result this far from bf16's, relative) must be
# closer to the CPU's bf16 than the device's float32 result is: the device's bf16 really ran there.
BF16_CHANGES = 1e-5

# The worst relative error (norm-wise) of CUDA bf16 against CPU bf16 over the run, and the cases
# compared (reported at the end of the run, conftest.py).
WORST_ERROR: dict[str, float] = {}
CASES: set[tuple] = set()

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru", "gru_reset_before", "ln_lstm", "ln_gru", "indrnn", "indrnn_tanh",
         "mingru", "minlstm"]
# (num_layers, bidirectional, proj_size, lengths, h0 given, dropout)
OPTIONS = {
    "plain": (1, False, 0, False, False, 0.0),
    "stack_bidirectional_lengths_h0": (2, True, 0, True, True, 0.0),
    "dropout": (2, False, 0, False, False, 0.3),
}


def _tol(table, cell):
    return table.get(cell, table["default"])


def _dev(a):
    return None if a is None else _core.to_device(np.ascontiguousarray(a))


def _host(a):
    return None if a is None else a.numpy()


def _config(cell, option, C, H, precision, **extra):
    from rnnkit._cells import CELLS as TABLE

    L, bi, proj, _, _, dropout = OPTIONS[option]
    return _core.StackConfig(TABLE[cell].mode, C, H, L, bi, proj, True, dropout, precision=precision, **extra)


def _case(cfg, option, T=7, N=3, seed=0, dtype=np.float32):
    _, _, _, with_lengths, with_h0, _ = OPTIONS[option]
    rng = np.random.default_rng(seed)
    params = [(0.4 * rng.standard_normal(shape)).astype(dtype) for _, shape in cfg.param_specs()]
    x = rng.standard_normal((T, N, cfg.input_size)).astype(dtype)
    G, P = cfg.num_layers * cfg.num_directions, (cfg.proj_size or cfg.hidden_size)
    h0 = rng.standard_normal((G, N, P)).astype(dtype) if with_h0 else None
    c0 = rng.standard_normal((G, N, cfg.hidden_size)).astype(dtype) if with_h0 and cfg.has_cell_state else None
    lengths = np.array([T, 2, T - 1][:N], np.int64) if with_lengths else None
    return params, x, h0, c0, lengths


def _assert_closer_than_float32(names, dev, f32, cpu):
    """Output by output: the device at bf16 is nearer the CPU's bf16 than the device at float32,
    wherever bf16 changes the result measurably; and bf16 changed y."""
    changed = 0
    for name, got, fp, want in zip(names, dev, f32, cpu):
        if relative_error(fp, want) > BF16_CHANGES:
            changed += 1
            assert relative_error(got, want) < relative_error(fp, want), f"{name}: the device ran float32, not bf16"
    assert relative_error(f32[0], cpu[0]) > BF16_CHANGES and changed >= 2


def _train(cfg, params, x, h0, c0, lengths, dy, dh_n, device, seed=11):
    """One training forward and backward: (y, h_n, dx, dh0, [parameter gradients]) on the host."""
    on = _dev if device == "cuda" else (lambda a: a)
    dparams = [on(p) for p in params]
    y, h_n, c_n, cache = _core.forward(cfg, dparams, on(x), on(h0), on(c0), lengths, True, seed)
    grads = [on(np.zeros_like(p)) for p in params]
    dc_n = None if c_n is None else np.zeros(c_n.shape, x.dtype)
    dx, dh0, _ = _core.backward(cache, on(dy), on(dh_n), on(dc_n), grads, True)
    back = _host if device == "cuda" else (lambda a: a)
    return back(y), back(h_n), back(dx), back(dh0), [back(g) for g in grads]


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 33, 5), (13, 37, 45), (70, 64, 256)])
@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_device_gemm_is_the_rounded_product(shape, trans_a, trans_b, beta):
    """The device's bf16 GEMM (operands rounded on the device, then cublasGemmEx or its emulation)
    against NumPy: round both to bf16, multiply in float64."""
    m, n, k = shape
    rng = np.random.default_rng(m + n + k)
    A = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    B = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    C = rng.standard_normal((m, n)).astype(np.float32)
    got = _core._cuda_gemm_bf16(A, trans_a, B, trans_b, beta, C)
    opA, opB = (A.T if trans_a else A), (B.T if trans_b else B)
    want = round_bf16(opA) @ round_bf16(opB) + beta * C.astype(np.float64)
    assert max_relative_diff(got, want) < BF16_GEMM_RTOL
    if k >= 45:  # it did round: the float32 product is measurably elsewhere
        exact = opA.astype(np.float64) @ opB.astype(np.float64) + beta * C.astype(np.float64)
        assert max_relative_diff(got, exact) > 10 * BF16_GEMM_RTOL


def test_device_rounding_is_to_nearest_even_and_keeps_specials():
    """The device rounds exactly as the CPU does: ties to even, infinities kept, NaN stays NaN."""
    vals = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), np.inf, -np.inf, 0.0, 3.0], np.float32)
    eye = np.eye(len(vals), dtype=np.float32)
    with np.errstate(invalid="ignore"):
        got = _core._cuda_gemm_bf16(np.diag(vals), False, eye, False, 0.0, np.zeros_like(eye))
        diag = np.array([got[i, i] for i in range(len(vals))])
    np.testing.assert_array_equal(diag, [1.0, 1 + 2**-6, -1.0, np.inf, -np.inf, 0.0, 3.0])
    # NaNs with payloads (quiet and signalling): carried into bf16 as NaN, where plain rounding
    # would make 0x7f800001 an infinity and 0x7fffffff -0.
    payloads = np.array([0x7FC00000, 0x7F800001, 0x7FFFFFFF, 0xFFBFFFFF], np.uint32).view(np.float32)
    with np.errstate(invalid="ignore"):
        for v in payloads:
            nan = _core._cuda_gemm_bf16(np.array([[v]], np.float32), False, np.ones((1, 1), np.float32), False, 0.0,
                                        np.zeros((1, 1), np.float32))
            assert np.isnan(nan[0, 0]), hex(int(np.array([v]).view(np.uint32)[0]))


def _cases():
    for cell, option in itertools.product(CELLS, OPTIONS):
        yield pytest.param(cell, option, id=f"{cell}-{option}")
    yield pytest.param("lstm", "projection", id="lstm-projection")


def _check_against_the_cpu_and_float32(cell, cfg, cfg32, option, seed):
    """One training forward + backward of `cfg` (bf16) on both backends and of `cfg32` on the
    device: every output and gradient within the bf16 tolerances of the CPU's, and nearer to it
    than the device's float32 result (_assert_closer_than_float32). Records the worst error."""
    params, x, h0, c0, lengths = _case(cfg, option)
    rng = np.random.default_rng(seed)
    T, N = x.shape[:2]
    P = cfg.proj_size or cfg.hidden_size
    dy = rng.standard_normal((T, N, cfg.num_directions * P)).astype(np.float32)
    dh_n = rng.standard_normal((cfg.num_layers * cfg.num_directions, N, P)).astype(np.float32)
    cpu = _train(cfg, params, x, h0, c0, lengths, dy, dh_n, "cpu")
    dev = _train(cfg, params, x, h0, c0, lengths, dy, dh_n, "cuda")
    f32 = _train(cfg32, params, x, h0, c0, lengths, dy, dh_n, "cuda")
    names = ["y", "h_n", "dx", "dh0"] + [name for name, _ in cfg.param_specs()]
    flat = lambda r: list(r[:4]) + list(r[4])  # noqa: E731
    for name, got, want in zip(names, flat(dev), flat(cpu)):
        table = CUDA_VS_CPU_BF16_RTOL if name in ("y", "h_n") else CUDA_VS_CPU_BF16_GRAD_RTOL
        err = relative_error(got, want)
        WORST_ERROR["bfloat16"] = max(WORST_ERROR.get("bfloat16", 0.0), err)
        assert err < _tol(table, cell), name
    _assert_closer_than_float32(names, flat(dev), flat(f32), flat(cpu))


@pytest.mark.parametrize("cell,option", list(_cases()))
def test_training_forward_and_backward_match_the_cpu_at_bf16(cell, option):
    """Every output and gradient of a training forward + backward, CUDA bf16 against CPU bf16; and
    both really ran in bf16 (the float32 device result is measurably elsewhere)."""
    proj = option == "projection"
    if proj:
        from rnnkit._cells import CELLS as TABLE
        cfg = _core.StackConfig(TABLE[cell].mode, 12, 20, 2, True, 8, True, 0.0, precision="bfloat16")
        cfg32 = _core.StackConfig(TABLE[cell].mode, 12, 20, 2, True, 8, True, 0.0)
        option = "stack_bidirectional_lengths_h0"
    else:
        cfg = _config(cell, option, 12, 20, "bfloat16")
        cfg32 = _config(cell, option, 12, 20, "float32")
    _check_against_the_cpu_and_float32(cell, cfg, cfg32, option, seed=3)
    CASES.add((cell, option if not proj else "projection"))


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru", "gru_reset_before", "ln_gru", "mingru"])
def test_one_step_agrees_with_the_cpu_to_float32_sums(cell):
    """T = 1 from given states: every GEMM operand is data, rounded identically on both backends,
    so only the float32 sums differ."""
    cfg = _config(cell, "plain", 24, 40, "bfloat16")
    rng = np.random.default_rng(1)
    params = [(0.4 * rng.standard_normal(shape)).astype(np.float32) for _, shape in cfg.param_specs()]
    x = rng.standard_normal((1, 5, 24)).astype(np.float32)
    h0 = rng.standard_normal((1, 5, 40)).astype(np.float32)
    c0 = rng.standard_normal((1, 5, 40)).astype(np.float32) if cfg.has_cell_state else None
    y, _, _, _ = _core.forward(cfg, params, x, h0, c0, None, False, 0)
    yd, _, _, _ = _core.forward(cfg, [_dev(p) for p in params], _dev(x), _dev(h0), _dev(c0), None, False, 0)
    assert max_relative_diff(yd.numpy(), y) < BF16_STEP_RTOL


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "gru", "ln_lstm"])
def test_layer_on_cuda_against_float64(cell):
    """The layer API on the device at bf16 against float64 on the same weights: within bf16's named
    tolerance (test_bf16.py), and as far from it as the CPU's bf16 is (the same rounding)."""
    from rnnkit._cells import CELLS as TABLE

    row = TABLE[cell]
    make = lambda **kw: getattr(rnnkit, row.layer)(16, 32, num_layers=2, bidirectional=True, seed=3,  # noqa: E731
                                                   **row.options, **kw)
    b16, f64 = make(precision="bfloat16"), make(dtype="float64")
    f64.load_state_dict(b16.state_dict())
    rng = np.random.default_rng(4)
    x = rng.standard_normal((10, 4, 16)).astype(np.float32)
    dy = rng.standard_normal((10, 4, 64)).astype(np.float32)
    out = {}
    for name, layer, dtype in (("cpu", b16, np.float32), ("cuda", copy.deepcopy(b16).to("cuda"), np.float32),
                               ("f64", f64, np.float64)):
        layer.zero_grad()
        y, _ = layer(x.astype(dtype))
        dx, _ = layer.backward(dy.astype(dtype))
        out[name] = [rnnkit.to_numpy(y), rnnkit.to_numpy(dx)] + [rnnkit.to_numpy(g) for _, g in
                                                                  sorted(layer.grads.items())]
    tol = _tol(BF16_VS_F64_RTOL, cell)
    for got, cpu, want in zip(out["cuda"], out["cpu"], out["f64"]):
        err, err_cpu = relative_error(got, want), relative_error(cpu, want)
        assert err < tol
        assert err < 2 * err_cpu + 1e-6
    assert relative_error(out["cuda"][0], out["f64"][0]) > 1e-4  # bf16 really ran


def test_step_on_cuda_computes_in_float32_as_the_cpus():
    """step() stays float32 at bf16 on the device as on the CPU: equal to the float32 layer's step."""
    b16 = rnnkit.LSTM(12, 20, num_layers=2, precision="bfloat16", seed=2).to("cuda")
    f32 = rnnkit.LSTM(12, 20, num_layers=2, seed=2).to("cuda")
    b16.eval()
    f32.eval()
    x = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
    y_b, _ = b16.step(x)
    y_f, _ = f32.step(x)
    np.testing.assert_array_equal(rnnkit.to_numpy(y_b), rnnkit.to_numpy(y_f))


def test_the_persistent_forward_steps_aside_at_bf16():
    """The persistent small-batch forward reads float32 weights on chip: at bf16 the standard path
    runs even when the persistent one is forced, and gives the CPU's bf16 result."""
    cfg = _config("gru", "plain", 8, 16, "bfloat16")
    cfg32 = _config("gru", "plain", 8, 16, "float32")
    params, x, _, _, _ = _case(cfg, "plain", N=2)
    want, _, _, _ = _core.forward(cfg, params, x, None, None, None, False, 0)
    rnnkit.cuda.set_persistent("always")
    try:
        start = rnnkit.cuda.persistent_launches()
        _core.forward(cfg32, [_dev(p) for p in params], _dev(x), None, None, None, False, 0)
        assert rnnkit.cuda.persistent_launches() == start + 1  # the shape does take it at float32
        got, _, _, _ = _core.forward(cfg, [_dev(p) for p in params], _dev(x), None, None, None, False, 0)
        assert rnnkit.cuda.persistent_launches() == start + 1
    finally:
        rnnkit.cuda.set_persistent("auto")
    assert relative_error(got.numpy(), want) < _tol(CUDA_VS_CPU_BF16_RTOL, "gru")


def test_graphed_bf16_loops_equal_ungraphed_and_relaunch():
    """The per-step roundings are graph nodes like any launch: a graphed training step gives the
    ungraphed one's results bit for bit, and a steady loop relaunches without capturing again."""
    cfg = _config("lstm", "stack_bidirectional_lengths_h0", 8, 16, "bfloat16")
    params, x, h0, c0, lengths = _case(cfg, "stack_bidirectional_lengths_h0")
    rng = np.random.default_rng(2)
    dy = rng.standard_normal((x.shape[0], x.shape[1], 2 * 16)).astype(np.float32)
    dh_n = rng.standard_normal((4, x.shape[1], 16)).astype(np.float32)
    was = rnnkit.cuda.get_graphs()
    try:
        rnnkit.cuda.set_graphs(False)
        plain = _train(cfg, params, x, h0, c0, lengths, dy, dh_n, "cuda")
        rnnkit.cuda.set_graphs(True)
        graphed = _train(cfg, params, x, h0, c0, lengths, dy, dh_n, "cuda")
        captures = rnnkit.cuda.graph_stats()["captures"]
        again = _train(cfg, params, x, h0, c0, lengths, dy, dh_n, "cuda")
        steady = rnnkit.cuda.graph_stats()["captures"] == captures
    finally:
        rnnkit.cuda.set_graphs(was)
    for a, b, c in zip(plain[:4] + tuple(plain[4]), graphed[:4] + tuple(graphed[4]), again[:4] + tuple(again[4])):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert steady


@pytest.mark.parametrize("cell,kw", [
    ("lstm", dict(zoneout=0.2, zoneout_cell=0.1, input_dropout=0.2, recurrent_dropout=0.2)),
    ("gru_reset_before", dict(recurrent_dropout=0.3, input_dropout=0.1)),
    ("lstm", dict(weight_dropout=0.3)),
    ("gru", dict(weight_dropout=0.3, zoneout=0.2)),
])
def test_regularisers_at_bf16_match_the_cpu(cell, kw):
    """Zoneout, variational dropout and weight drop (its masked W_hh copy rounded) draw the same
    masks on both backends at bf16 too."""
    option = "stack_bidirectional_lengths_h0"
    cfg = _config(cell, option, 10, 16, "bfloat16", **kw)
    cfg32 = _config(cell, option, 10, 16, "float32", **kw)
    _check_against_the_cpu_and_float32(cell, cfg, cfg32, option, seed=6)


@pytest.mark.parametrize("options", [dict(peephole=True, clip=2.0), dict(activations=("hard_sigmoid", "tanh", "relu")),
                                     dict(coupled_gates=True)])
def test_onnx_option_cells_at_bf16_match_the_cpu(options):
    """The general (ONNX-option) LSTM cells at bf16 through the layer API: the CPU's bf16."""
    make = lambda **kw: rnnkit.LSTM(6, 10, num_layers=2, bidirectional=True, seed=8, **options, **kw)  # noqa: E731
    cpu = make(precision="bfloat16")
    dev, f32 = copy.deepcopy(cpu).to("cuda"), make().to("cuda")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((7, 3, 6)).astype(np.float32)
    dy = rng.standard_normal((7, 3, 20)).astype(np.float32)
    out = {}
    for name, layer in (("cpu", cpu), ("dev", dev), ("f32", f32)):
        layer.zero_grad()
        y, _ = layer(x)
        dx, _ = layer.backward(dy)
        out[name] = [rnnkit.to_numpy(y), rnnkit.to_numpy(dx)] + [rnnkit.to_numpy(g) for _, g in
                                                                  sorted(layer.grads.items())]
    names = ["y", "dx"] + sorted(cpu.grads)
    for name, got, want in zip(names, out["dev"], out["cpu"]):
        table = CUDA_VS_CPU_BF16_RTOL if name == "y" else CUDA_VS_CPU_BF16_GRAD_RTOL
        assert relative_error(got, want) < _tol(table, "lstm"), name
    _assert_closer_than_float32(names, out["dev"], out["f32"], out["cpu"])


def test_network_on_cuda_at_bf16_trains_like_the_cpus():
    """RNNNetwork at bf16 (its output layer's GEMMs too) on the device: the CPU's loss and
    gradients; a streaming step (float32 stack, bf16 output layer on both) the CPU's."""
    cpu = rnnkit.RNNNetwork(vocab_size=30, hidden_size=24, num_layers=2, seed=5, precision="bfloat16")
    gpu = copy.deepcopy(cpu).to("cuda")
    f32 = rnnkit.RNNNetwork(vocab_size=30, hidden_size=24, num_layers=2, seed=5).to("cuda")
    rng = np.random.default_rng(7)
    tokens, targets = rng.integers(0, 30, (12, 4)), rng.integers(0, 30, (12, 4))
    out = {}
    for name, net in (("cpu", cpu), ("gpu", gpu), ("f32", f32)):
        net.zero_grad()
        loss, _ = net.forward_loss(tokens, targets)
        net.backward()
        out[name] = (float(loss), {k: rnnkit.to_numpy(v) for k, v in net.grads.items()})
    # The loss: a mean over 48 rows of bf16 logits, float32 sums in different orders.
    assert abs(out["gpu"][0] - out["cpu"][0]) < 1e-5 * abs(out["cpu"][0])
    assert abs(out["gpu"][0] - out["cpu"][0]) < abs(out["f32"][0] - out["cpu"][0])
    names = sorted(out["cpu"][1])
    for k in names:
        assert relative_error(out["gpu"][1][k], out["cpu"][1][k]) < CUDA_VS_CPU_BF16_GRAD_RTOL["default"], k
    # (The loss moves only 4e-6 between float32 and bf16 at this initial state: not a witness.)
    _assert_closer_than_float32(names, *[[out[d][1][k] for k in names] for d in ("gpu", "f32", "cpu")])
    cpu.eval()
    gpu.eval()
    p_cpu, s_cpu = cpu.step([1, 4])
    p_gpu, s_gpu = gpu.step([1, 4])
    assert max_relative_diff(p_gpu.numpy(), p_cpu) < BF16_STEP_RTOL


def test_rnnkit_train_at_bf16_on_cuda_follows_the_cpu(tmp_path):
    """`rnnkit train --precision bfloat16 --device cuda` (refused before the backend had bf16): the
    CPU's bf16 validation losses, not float32's."""
    import csv
    import subprocess
    import sys

    def val_losses(*args):
        out = tmp_path / "-".join(a.lstrip("-") for a in args)
        proc = subprocess.run([sys.executable, "-m", "rnnkit", "train", "--task", "adding", "--task-length", "20",
                               "--hidden", "16", "--batch", "4", "--eval-every", "3", "--no-progress", "--threads", "1",
                               "--steps", "6", "--out", str(out), *args], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        with open(out / "metrics.csv", newline="") as f:
            return np.array([float(r["val_loss"]) for r in csv.DictReader(f) if r["val_loss"]])

    cpu = val_losses("--precision", "bfloat16")
    gpu = val_losses("--precision", "bfloat16", "--device", "cuda")
    f32 = val_losses("--device", "cuda")
    assert len(cpu) == 2
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3)
    assert np.max(np.abs(gpu - f32) / f32) > np.max(np.abs(gpu - cpu) / cpu)
