"""The recurrent network (embedding, layer stack, output layer, fused loss, generation) on the CUDA
backend against the CPU backend (the truth): ``_core.cuda_network_*`` against ``_core.network_*``
with the same parameters and inputs, every output, loss and gradient compared.

Runs wherever the CUDA backend can (a CUDA build on a GPU, or the host-emulation build); skipped
elsewhere, with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit
from rnnkit import _core

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not rnnkit.cuda.is_available(), reason=f"CUDA unavailable: {rnnkit.cuda.status()}"),
]

# As the stack's (test_cuda_backend.py): the backends sum in different orders (cuBLAS vs OpenBLAS,
# the loss's row reductions in a tree on the device), so float32 differs by rounding.
NETWORK_CUDA_VS_CPU_TOL = {np.float64: dict(rtol=1e-10, atol=1e-11), np.float32: dict(rtol=3e-4, atol=3e-5)}

# name: (cell, num_layers, bidirectional, vocab (0: dense), head, loss, lengths, dropout)
CASES = {
    "tokens_lstm_sequence_ce_lengths": ("LSTM", 2, False, 11, "sequence", "cross_entropy", True, 0.0),
    "tokens_gru_bidirectional_ce_dropout": ("GRU", 2, True, 9, "sequence", "cross_entropy", False, 0.3),
    "dense_gru_last_mse": ("GRU", 2, True, 0, "last", "mse", True, 0.0),
    "dense_rnn_sequence_mse": ("RNN_TANH", 1, False, 0, "sequence", "mse", False, 0.0),
    "dense_lnlstm_last_ce": ("LN_LSTM", 1, False, 0, "last", "cross_entropy", False, 0.0),
}
T, N, C, H, K = 5, 3, 4, 6, 7


def _dev(a):
    return None if a is None else _core.to_device(np.ascontiguousarray(a))


def _host(a):
    return None if a is None else a.numpy()


def _close(name, got, want, dtype):
    assert (got is None) == (want is None), name
    if want is None:
        return
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, err_msg=name, **NETWORK_CUDA_VS_CPU_TOL[dtype])


def _network(case, dtype, seed=0):
    cell, L, bi, vocab, head, loss, with_lengths, dropout = CASES[case]
    stack = _core.StackConfig(cell, C if not vocab else 5, H, L, bi, 0, True, dropout)
    out = vocab if (vocab and loss == "cross_entropy") else K
    cfg = _core.NetworkConfig(stack, vocab, out, head, loss, -100)
    rng = np.random.default_rng(seed)
    params = [(0.4 * rng.standard_normal(shape)).astype(dtype) for _, shape in cfg.param_specs()]
    if vocab:
        inputs = rng.integers(0, vocab, size=(T, N)).astype(np.int64)
    else:
        inputs = rng.standard_normal((T, N, C)).astype(dtype)
    lengths = None
    if with_lengths:
        lengths = np.array([T, 2, 4], np.int64)
    R = T * N if head == "sequence" else N
    if loss == "cross_entropy":
        targets = rng.integers(0, out, size=(T, N) if head == "sequence" else (N,)).astype(np.int64)
        targets.reshape(-1)[1] = -100  # an ignored row
    else:
        targets = rng.standard_normal((T, N, out) if head == "sequence" else (N, out)).astype(dtype)
    G = L * (2 if bi else 1)
    h0 = rng.standard_normal((G, N, H)).astype(dtype)
    c0 = rng.standard_normal((G, N, H)).astype(dtype) if stack.has_cell_state else None
    assert R > 0
    return cfg, params, inputs, lengths, targets, h0, c0


def _device_inputs(cfg, inputs):
    return inputs if cfg.vocab_size else _dev(inputs)


def _device_targets(cfg, targets):
    return targets if targets.dtype == np.int64 else _dev(targets)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_training_with_the_fused_loss_matches_cpu(case, dtype):
    cfg, params, inputs, lengths, targets, h0, c0 = _network(case, dtype)
    seed = 5
    out, h_n, c_n, loss, cache = _core.network_forward(cfg, params, inputs, h0, c0, lengths, targets, True, seed,
                                                       True, False)
    dparams = [_dev(p) for p in params]
    outd, h_nd, c_nd, lossd, cached = _core.cuda_network_forward(
        cfg, dparams, _device_inputs(cfg, inputs), _dev(h0), _dev(c0), lengths, _device_targets(cfg, targets), True,
        seed, True, False)
    assert isinstance(outd, _core.DeviceArray) and cached is not None and cached.has_loss_grad
    _close("outputs", _host(outd), out, dtype)
    _close("h_n", _host(h_nd), h_n, dtype)
    _close("c_n", _host(c_nd), c_n, dtype)
    np.testing.assert_allclose(lossd, loss, **NETWORK_CUDA_VS_CPU_TOL[dtype])

    rng = np.random.default_rng(9)
    start = [rng.standard_normal(p.shape).astype(dtype) for p in params]
    grads = [g.copy() for g in start]
    need_dx = not cfg.vocab_size
    dx, dh0, dc0 = _core.network_backward(cache, grads, None, need_dx)
    dgrads = [_dev(g) for g in start]
    dxd, dh0d, dc0d = _core.cuda_network_backward(cached, dgrads, None, need_dx)
    _close("dx", _host(dxd), dx, dtype)
    _close("dh0", _host(dh0d), dh0, dtype)
    _close("dc0", _host(dc0d), dc0, dtype)
    for (name, _), g, gd in zip(cfg.param_specs(), grads, dgrads):
        _close(name, gd.numpy(), g, dtype)


@pytest.mark.parametrize("case", ["dense_rnn_sequence_mse", "tokens_lstm_sequence_ce_lengths", "dense_gru_last_mse"])
def test_backward_from_given_output_gradients_matches_cpu(case):
    dtype = np.float64
    cfg, params, inputs, lengths, _, h0, c0 = _network(case, dtype, seed=1)
    out, _, _, loss, cache = _core.network_forward(cfg, params, inputs, None, None, lengths, None, True, 0, True, False)
    outd, _, _, lossd, cached = _core.cuda_network_forward(cfg, [_dev(p) for p in params],
                                                           _device_inputs(cfg, inputs), None, None, lengths, None,
                                                           True, 0, True, False)
    assert loss is None and lossd is None and not cached.has_loss_grad
    with pytest.raises(ValueError, match="d_outputs: expected an array"):
        _core.cuda_network_backward(cached, [_dev(np.zeros_like(p)) for p in params], None)
    d_out = np.random.default_rng(2).standard_normal(out.shape)
    grads = [np.zeros_like(p) for p in params]
    _, dh0, _ = _core.network_backward(cache, grads, d_out, False)
    dgrads = [_dev(np.zeros_like(p)) for p in params]
    _, dh0d, _ = _core.cuda_network_backward(cached, dgrads, _dev(d_out), False)
    _close("dh0", dh0d.numpy(), dh0, dtype)
    for (name, _), g, gd in zip(cfg.param_specs(), grads, dgrads):
        _close(name, gd.numpy(), g, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inference_outputs_softmax_and_evaluation_match_cpu(dtype):
    cfg, params, inputs, lengths, targets, h0, c0 = _network("tokens_lstm_sequence_ce_lengths", dtype, seed=3)
    dparams = [_dev(p) for p in params]
    probs, h_n, _, loss, cache = _core.network_forward(cfg, params, inputs, h0, c0, lengths, targets, False, 0, True,
                                                       True)
    probsd, h_nd, _, lossd, cached = _core.cuda_network_forward(cfg, dparams, inputs, _dev(h0), _dev(c0), lengths,
                                                                targets, False, 0, True, True)
    assert cache is None and cached is None
    _close("probabilities", probsd.numpy(), probs, dtype)
    np.testing.assert_allclose(probsd.numpy().sum(axis=-1), 1.0, rtol=1e-5)
    _close("h_n", h_nd.numpy(), h_n, dtype)
    np.testing.assert_allclose(lossd, loss, **NETWORK_CUDA_VS_CPU_TOL[dtype])
    # The loss alone, no outputs.
    none, _, _, loss_only, _ = _core.cuda_network_forward(cfg, dparams, inputs, None, None, lengths, targets, False, 0,
                                                          False, False)
    assert none is None and np.isfinite(loss_only)


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 3), (0.0, 0)])
def test_generation_draws_the_cpus_tokens(temperature, top_k):
    cfg, params, *_ = _network("tokens_lstm_sequence_ce_lengths", np.float64, seed=4)
    prefix = np.array([1, 4, 2], np.int64)
    tokens, h, c = _core.network_generate(cfg, params, prefix, 12, temperature, top_k, 77, None, None)
    tokensd, hd, cd = _core.cuda_network_generate(cfg, [_dev(p) for p in params], prefix, 12, temperature, top_k, 77,
                                                  None, None)
    np.testing.assert_array_equal(tokensd, tokens)
    _close("h", hd.numpy(), h, np.float64)
    _close("c", cd.numpy(), c, np.float64)


def test_network_bad_input_names_the_argument_and_the_device():
    cfg, params, inputs, lengths, targets, h0, c0 = _network("tokens_lstm_sequence_ce_lengths", np.float32)
    dparams = [_dev(p) for p in params]
    with pytest.raises(TypeError, match=r"inputs: expected a host int64 array \[T, N\] of token ids .* got a CUDA array"):
        _core.cuda_network_forward(cfg, dparams, _dev(inputs), None, None, None, None, False, 0, True, False)
    with pytest.raises(TypeError, match=r"params\[0\] \(embedding.weight\): expected a CUDA array"):
        _core.cuda_network_forward(cfg, [params[0]] + dparams[1:], inputs, None, None, None, None, False, 0, True,
                                   False)
    with pytest.raises(TypeError, match=r"targets: expected a host int64 array of class ids"):
        _core.cuda_network_forward(cfg, dparams, inputs, None, None, None, _dev(targets), False, 0, True, False)
    bad = targets.copy()
    bad[0, 0] = 99
    with pytest.raises(ValueError, match=r"targets\[0, 0\]: expected a class id in \[0, 11\)"):
        _core.cuda_network_forward(cfg, dparams, inputs, None, None, None, bad, False, 0, True, False)
    with pytest.raises(ValueError, match=r"lengths\[1\]: expected a length in \[1, 5\]"):
        _core.cuda_network_forward(cfg, dparams, inputs, None, None, np.array([5, 0, 3], np.int64), None, False, 0,
                                   True, False)
    _, _, _, _, cached = _core.cuda_network_forward(cfg, dparams, inputs, None, None, None, targets, True, 0, False,
                                                    False)
    with pytest.raises(ValueError, match="cache: expected a cache of a forward on host arrays"):
        _core.network_backward(cached, [np.zeros_like(p) for p in params], None)
    _, _, _, _, cache = _core.network_forward(cfg, params, inputs, None, None, None, targets, True, 0, False, False)
    with pytest.raises(ValueError, match="cache: expected a cache of a forward on CUDA arrays"):
        _core.cuda_network_backward(cache, dparams, None)
    dense_cfg, dense_params, x, *_ = _network("dense_rnn_sequence_mse", np.float32)
    with pytest.raises(TypeError, match=r"inputs: expected a CUDA array \[T, N, C\] .* got a numpy array"):
        _core.cuda_network_forward(dense_cfg, [_dev(p) for p in dense_params], x, None, None, None, None, False, 0,
                                   True, False)


# ---- RNNNetwork.to("cuda") ---------------------------------------------------------------------
NETWORKS = {
    "char_lm_lstm": dict(vocab_size=13, embedding_dim=5, hidden_size=8, cell="lstm", num_layers=2, batch_first=True),
    "classifier_gru_last": dict(input_size=4, hidden_size=6, output_size=3, cell="gru", bidirectional=True,
                                head="last"),
    "regression_ln_gru": dict(input_size=4, hidden_size=5, output_size=2, cell="ln_gru", loss="mse",
                              batch_first=True),
}


def _network_data(name, net, rng, T=6, N=3):
    seq = net.head == "sequence"
    lead = (N, T) if net.batch_first else (T, N)
    if net.vocab_size:
        x = rng.integers(0, net.vocab_size, size=lead)
    else:
        x = rng.standard_normal(lead + (net.input_size,)).astype(net.dtype)
    if net.loss_kind == "cross_entropy":
        y = rng.integers(0, net.output_size, size=lead if seq else (N,))
    else:
        y = rng.standard_normal((lead if seq else (N,)) + (net.output_size,)).astype(net.dtype)
    return x, y


@pytest.mark.parametrize("name", NETWORKS)
def test_rnn_network_on_cuda_trains_like_on_the_cpu(name):
    import copy

    cpu = rnnkit.RNNNetwork(dtype="float64", seed=3, **NETWORKS[name])
    gpu = copy.deepcopy(cpu).to("cuda")
    assert gpu.device == "cuda" and repr(gpu).endswith(".to('cuda')")
    assert all(isinstance(p, _core.DeviceArray) for p in gpu.params.values())
    opt_cpu, opt_gpu = rnnkit.optim.Adam(cpu, lr=1e-2), rnnkit.optim.Adam(gpu, lr=1e-2)
    rng = np.random.default_rng(0)
    lengths = np.array([6, 3, 5], np.int64)
    for _ in range(3):
        x, y = _network_data(name, cpu, rng)
        for net, opt in ((cpu, opt_cpu), (gpu, opt_gpu)):
            opt.zero_grad()
        loss_cpu, _ = cpu.train_step(x, y, lengths=lengths)
        loss_gpu, state = gpu.train_step(x, y, lengths=lengths)
        np.testing.assert_allclose(loss_gpu, loss_cpu, rtol=1e-10)
        for n in cpu.grads:
            _close(f"grad {n}", rnnkit.to_numpy(gpu.grads[n]), cpu.grads[n], np.float64)
        opt_cpu.step()
        opt_gpu.step()
    for n, p in cpu.state_dict().items():
        _close(n, gpu.state_dict()[n], p, np.float64)
    # Inference, outputs in the network's layout, states on the device.
    x, _ = _network_data(name, cpu, rng)
    cpu.eval()
    gpu.eval()
    out_cpu, st_cpu = cpu.forward(x)
    out_gpu, st_gpu = gpu.forward(x)
    assert isinstance(out_gpu, _core.DeviceArray)
    _close("outputs", out_gpu.numpy(), out_cpu, np.float64)
    for a, b in zip(st_gpu if isinstance(st_gpu, tuple) else (st_gpu,),
                    st_cpu if isinstance(st_cpu, tuple) else (st_cpu,)):
        _close("state", a.numpy(), b, np.float64)
    # The state fed back in, from the device.
    out2_cpu, _ = cpu.forward(x, st_cpu)
    out2_gpu, _ = gpu.forward(x, st_gpu)
    _close("outputs from a state", out2_gpu.numpy(), out2_cpu, np.float64)
    # Back to the CPU: the same numbers.
    back = copy.deepcopy(gpu).to("cpu")
    for n, p in cpu.state_dict().items():
        np.testing.assert_array_equal(back.params[n], gpu.state_dict()[n])


def test_rnn_network_on_cuda_backward_from_given_output_gradients_and_dx():
    import copy

    cpu = rnnkit.RNNNetwork(input_size=4, hidden_size=5, output_size=3, dtype="float64", seed=1, batch_first=True)
    gpu = copy.deepcopy(cpu).cuda()
    x = np.random.default_rng(1).standard_normal((2, 5, 4))
    out_cpu, _ = cpu.forward(x)
    out_gpu, _ = gpu.forward(rnnkit.cuda.as_device_array(_core.to_device(x)))
    d = np.random.default_rng(2).standard_normal(out_cpu.shape)
    dx_cpu, dh_cpu = cpu.backward(d, compute_dx=True)
    dx_gpu, dh_gpu = gpu.backward(d, compute_dx=True)
    _close("dx", dx_gpu.numpy(), dx_cpu, np.float64)
    _close("dh0", dh_gpu[0].numpy(), dh_cpu[0], np.float64)
    for n in cpu.grads:
        _close(n, rnnkit.to_numpy(gpu.grads[n]), cpu.grads[n], np.float64)
    gpu.zero_grad()
    assert all(not rnnkit.to_numpy(g).any() for g in gpu.grads.values())


def test_rnn_network_on_cuda_streams_generates_and_pickles():
    import pickle

    net = rnnkit.RNNNetwork(vocab_size=9, hidden_size=6, cell="gru", dtype="float64", seed=2)
    gpu = pickle.loads(pickle.dumps(net)).to("cuda")
    np.testing.assert_array_equal(gpu.generate([1, 2, 3], 10, seed=4), net.generate([1, 2, 3], 10, seed=4))
    p_cpu, s_cpu = net.step([1, 4])
    p_gpu, s_gpu = gpu.step([1, 4])
    _close("step probabilities", p_gpu.numpy(), p_cpu, np.float64)
    p2_cpu, _ = net.step([2, 2], s_cpu)
    p2_gpu, _ = gpu.step([2, 2], s_gpu)
    _close("second step", p2_gpu.numpy(), p2_cpu, np.float64)
    probs, _ = gpu.predict_proba(np.array([[1, 2], [3, 4]]))
    np.testing.assert_allclose(probs.numpy().sum(-1), 1.0)
    again = pickle.loads(pickle.dumps(gpu))
    assert again.device == "cuda" and isinstance(again.params["output.weight"], _core.DeviceArray)
    assert again.params["rnn.weight_hh_l0"] is again.rnn.params["weight_hh_l0"]
    np.testing.assert_array_equal(again.state_dict()["output.bias"], net.state_dict()["output.bias"])
    with pytest.raises(TypeError, match=r"inputs: expected dtype float64, got float32"):
        rnnkit.RNNNetwork(input_size=3, hidden_size=4, output_size=2, dtype="float64").to("cuda").forward(
            _core.to_device(np.zeros((2, 1, 3), np.float32)))


def test_rnnkit_train_on_cuda_matches_the_cpu_and_a_run_resumes_on_either_device(tmp_path):
    import csv
    import subprocess
    import sys

    def train(*args):
        proc = subprocess.run([sys.executable, "-m", "rnnkit", "train", "--task", "adding", "--task-length", "20",
                               "--hidden", "8", "--batch", "4", "--eval-every", "3", "--no-progress", "--threads", "1",
                               *args], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def val_losses(folder):
        with open(folder / "metrics.csv", newline="") as f:
            return [float(r["val_loss"]) for r in csv.DictReader(f) if r["val_loss"]]

    train("--steps", "6", "--out", str(tmp_path / "cpu"))
    out = train("--steps", "6", "--out", str(tmp_path / "cuda"), "--device", "cuda")
    assert "; device cuda (" in out
    train("--steps", "3", "--out", str(tmp_path / "moved"), "--device", "cuda")
    train("--resume", "--steps", "6", "--out", str(tmp_path / "moved"))  # the rest on the CPU
    want = val_losses(tmp_path / "cpu")
    assert len(want) == 2
    np.testing.assert_allclose(val_losses(tmp_path / "cuda"), want, rtol=1e-5)
    np.testing.assert_allclose(val_losses(tmp_path / "moved"), want, rtol=1e-5)
