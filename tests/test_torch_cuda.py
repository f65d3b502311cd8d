"""``rnnkit.torch`` modules on rnnkit's CUDA backend, against ``torch.nn``'s modules.

On a GPU (a CUDA build of rnnkit, and PyTorch with CUDA) the modules and tensors are on "cuda" and
the reference is torch.nn on the same device (cuDNN). In the host-emulation build
(RNNKIT_CUDA_EMULATE) there are no CUDA tensors, so a test hook sends CPU tensors down the device
path instead (``torch_ops._EMULATED_DEVICE_FOR_CPU_TENSORS``): the tensors cross to rnnkit as
DeviceArrays through DLPack and the outputs come back the same way, exactly the code a GPU runs,
with "device" memory being host memory. Elsewhere every test here is skipped, with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest

import rnnkit

torch = pytest.importorskip("torch")
from rnnkit.interop import torch_ops  # noqa: E402
import rnnkit.torch as rt  # noqa: E402

ON_GPU = rnnkit.cuda.is_available() and not rnnkit.cuda.is_emulated() and torch.cuda.is_available()

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.torch,
    pytest.mark.skipif(not (ON_GPU or rnnkit.cuda.is_emulated()),
                       reason="needs rnnkit's CUDA backend on a GPU with PyTorch CUDA, or rnnkit's emulation build: "
                              f"{rnnkit.cuda.status()}"),
]

# rnnkit's CUDA backend vs torch.nn: float64 agrees to rounding; float32 on a GPU also differs by
# cuDNN's and cuBLAS' summation orders (the same allowance as the CPU parity tests).
TORCH_CUDA_TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}


@pytest.fixture
def device():
    """The device the modules and tensors live on: "cuda", or in the emulation the CPU, with CPU
    tensors sent through the CUDA backend."""
    if ON_GPU:
        yield torch.device("cuda")
        return
    torch_ops._EMULATED_DEVICE_FOR_CPU_TENSORS = True
    try:
        yield torch.device("cpu")
    finally:
        torch_ops._EMULATED_DEVICE_FOR_CPU_TENSORS = False


def _device_work():
    """A count that grows whenever rnnkit's CUDA backend allocates (a call that ran there)."""
    s = rnnkit.cuda.memory_stats()
    return s["device_allocations"] + s["reuses"]


CASES = {
    "rnn_tanh": (rt.RNN, torch.nn.RNN, dict(num_layers=2, nonlinearity="tanh")),
    "rnn_relu_batch_first": (rt.RNN, torch.nn.RNN, dict(nonlinearity="relu", batch_first=True)),
    "lstm_bidirectional": (rt.LSTM, torch.nn.LSTM, dict(num_layers=2, bidirectional=True)),
    "lstm_projection": (rt.LSTM, torch.nn.LSTM, dict(proj_size=3, batch_first=True)),
    "gru_stack": (rt.GRU, torch.nn.GRU, dict(num_layers=2, bidirectional=True, batch_first=True)),
}


def _pair(case, dtype, device, input_size=4, hidden_size=5):
    ours_cls, ref_cls, kwargs = CASES[case]
    torch.manual_seed(0)
    ours = ours_cls(input_size, hidden_size, dtype=dtype, device=device, **kwargs)
    ref = ref_cls(input_size, hidden_size, dtype=dtype, device=device, **kwargs)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _close(got, want, dtype, name):
    np.testing.assert_allclose(got.detach().cpu().numpy(), want.detach().cpu().numpy(), err_msg=name,
                               **TORCH_CUDA_TOL[dtype])


def _states(out):
    h = out[1]
    return list(h) if isinstance(h, tuple) else [h]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_modules_on_the_cuda_backend_train_like_torch_nn(case, dtype, device):
    ours, ref = _pair(case, dtype, device)
    T, N = 6, 3
    shape = (N, T, 4) if ours.batch_first else (T, N, 4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=dtype).to(device).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    L = ours.num_layers * (2 if ours.bidirectional else 1)
    h0 = torch.randn(L, N, ours.proj_size or ours.hidden_size, generator=g, dtype=dtype).to(device)
    hx = (h0, torch.randn(L, N, ours.hidden_size, generator=g, dtype=dtype).to(device)) if ours.mode == "LSTM" else h0

    before = _device_work()
    out = ours(x, hx)
    assert _device_work() > before, "the call did not run on rnnkit's CUDA backend"
    out_ref = ref(x_ref, hx)
    assert out[0].device == x.device
    _close(out[0], out_ref[0], dtype, "output")
    for i, (a, b) in enumerate(zip(_states(out), _states(out_ref))):
        _close(a, b, dtype, f"state {i}")

    w = torch.randn(out[0].shape, generator=g, dtype=dtype).to(device)
    loss = (out[0] * w).sum() + sum(s.square().sum() for s in _states(out))
    loss_ref = (out_ref[0] * w).sum() + sum(s.square().sum() for s in _states(out_ref))
    loss.backward()
    loss_ref.backward()
    _close(x.grad, x_ref.grad, dtype, "dx")
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters()):
        assert p.grad is not None and p.grad.device == p.device, name
        _close(p.grad, p_ref.grad, dtype, f"d{name}")


@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequences_on_the_cuda_backend(enforce_sorted, device):
    dtype = torch.float64
    ours, ref = _pair("lstm_bidirectional", dtype, device)
    lengths = [5, 4, 2] if enforce_sorted else [2, 5, 4]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 3, 4, generator=g, dtype=dtype).to(device).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    pack = torch.nn.utils.rnn.pack_padded_sequence
    before = _device_work()
    out, (h_n, c_n) = ours(pack(x, lengths, enforce_sorted=enforce_sorted))
    assert _device_work() > before
    out_ref, (h_ref, c_ref) = ref(pack(x_ref, lengths, enforce_sorted=enforce_sorted))
    _close(out.data, out_ref.data, dtype, "output")
    _close(h_n, h_ref, dtype, "h_n")
    (out.data.sum() + c_n.sum()).backward()
    (out_ref.data.sum() + c_ref.sum()).backward()
    _close(x.grad, x_ref.grad, dtype, "dx")
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters()):
        _close(p.grad, p_ref.grad, dtype, f"d{name}")


def test_a_retained_graph_backpropagates_twice_on_the_cuda_backend(device):
    """The second backward reads the reserve (a DeviceArray view of the forward's cache) through
    backward_reserve on the device."""
    dtype = torch.float64
    ours, ref = _pair("gru_stack", dtype, device)
    x = torch.randn(3, 6, 4, dtype=dtype, generator=torch.Generator().manual_seed(3)).to(device)
    y, _ = ours(x)
    y.sum().backward(retain_graph=True)
    first = [p.grad.clone() for p in ours.parameters()]
    y.sum().backward()
    for p, g1 in zip(ours.parameters(), first):
        _close(p.grad, 2 * g1, dtype, "twice the gradient")
    y_ref, _ = ref(x)
    y_ref.sum().backward()
    for p, p_ref in zip(first, ref.parameters()):
        _close(p, p_ref.grad, dtype, "gradient")


def test_autocast_bf16_runs_the_backends_bf16_path(device):
    """Under autocast to bfloat16 (on the modules' device) a float32 module on the CUDA backend
    computes as precision="bfloat16": the CPU backend's bf16 results within the bf16 tolerance of
    tests/test_cuda_bf16.py, away from float32's; gradients flow."""
    from reference import relative_error
    from test_cuda_bf16 import CUDA_VS_CPU_BF16_GRAD_RTOL, CUDA_VS_CPU_BF16_RTOL

    torch.manual_seed(0)
    ours = rt.LSTM(6, 12, num_layers=2, bidirectional=True, device=device)
    cpu = rt.LSTM(6, 12, num_layers=2, bidirectional=True, precision="bfloat16")
    cpu.load_state_dict({k: v.cpu() for k, v in ours.state_dict().items()})
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 3, 6, generator=g)
    xd = x.to(device).requires_grad_()
    before = _device_work()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y, _ = ours(xd)
    assert _device_work() > before, "the call did not run on rnnkit's CUDA backend"
    assert y.dtype == torch.float32
    y32, _ = ours(xd)
    y_cpu, _ = cpu(x.requires_grad_())
    got, want = y.detach().cpu().numpy(), y_cpu.detach().numpy()
    assert relative_error(got, want) < CUDA_VS_CPU_BF16_RTOL["default"]
    assert relative_error(y32.detach().cpu().numpy(), want) > relative_error(got, want)
    y.sum().backward()
    y_cpu.sum().backward()
    assert relative_error(xd.grad.cpu().numpy(), x.grad.numpy()) < CUDA_VS_CPU_BF16_GRAD_RTOL["default"]
