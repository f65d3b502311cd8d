"""Whether rnnkit's CUDA backend can run here.

The backend is compiled only when rnnkit is installed with ``RNNKIT_CUDA=1``; even then it needs a
GPU, a driver and cuBLAS (``pip install 'rnnkit[cuda]'``) at run time. Importing rnnkit never
requires any of them.

``RNNKIT_CUDA_EMULATE=1 pip install .`` builds the same backend for the host CPU instead, to test its
kernels without a GPU: there ``is_available()`` is true, ``is_emulated()`` too, and ``status()`` says
it is an emulation ("device" memory is host memory; nothing runs on a GPU).
"""

from __future__ import annotations

from . import _core
from ._device import as_device_array  # noqa: F401  (rnnkit.cuda.as_device_array)


def is_built() -> bool:
    """True when this rnnkit was compiled with the CUDA backend."""
    return bool(_core.build_info()["cuda_built"])


def is_emulated() -> bool:
    """True in the host-emulation build (RNNKIT_CUDA_EMULATE=1): the CUDA code runs on the CPU."""
    return bool(_core.build_info().get("cuda_emulated", False))


def is_available() -> bool:
    """True when the CUDA backend is built and a usable GPU, driver and cuBLAS are present."""
    return bool(_core.cuda_status()[0])


def status() -> str:
    """Why the backend is unavailable, or which device it would use."""
    return str(_core.cuda_status()[1])


_PERSISTENT_MODES = ("auto", "always", "never")


def _core_with_cuda(what: str):
    if not is_built():
        raise RuntimeError(f"{what}: this rnnkit was built without the CUDA backend (install it with RNNKIT_CUDA=1)")
    return _core


def set_persistent(mode: str) -> None:
    """Chooses when a forward runs every step of a layer in one persistent kernel (the recurrent
    weights kept in shared memory, one grid-wide barrier per step) instead of a GEMM and a pointwise
    launch per step: ``"auto"`` (the default) for batches up to 16 where the weights fit on chip,
    ``"always"`` wherever the kernel can run (RNN, LSTM without a projection, GRU with
    ``reset_after=True``; any batch whose weights fit), ``"never"``. Process-wide. Results are the
    same either way within float rounding; backward is the same on both paths."""
    if not isinstance(mode, str):
        raise TypeError(f"mode: expected one of {_PERSISTENT_MODES}, got {type(mode).__name__}")
    if mode not in _PERSISTENT_MODES:
        raise ValueError(f"mode: expected one of {_PERSISTENT_MODES}, got {mode!r}")
    _core_with_cuda("set_persistent").cuda_set_persistent(_PERSISTENT_MODES.index(mode))


def get_persistent() -> str:
    """The mode ``set_persistent`` set ("auto" unless changed)."""
    return _PERSISTENT_MODES[_core_with_cuda("get_persistent").cuda_get_persistent()]


def persistent_launches() -> int:
    """How many layer-direction forwards ran the persistent kernel so far in this process (to check
    which path a shape takes)."""
    return int(_core_with_cuda("persistent_launches").cuda_persistent_launches())


def memory_stats() -> dict:
    """The CUDA backend's caching allocator: ``cached_bytes`` (freed blocks kept for reuse),
    ``in_use_bytes``, ``device_allocations`` (cudaMalloc calls so far) and ``reuses`` (requests the
    cache served). A loop over the same shapes allocates from the device only in its first pass."""
    return dict(_core_with_cuda("memory_stats").cuda_memory_stats())


def empty_cache() -> None:
    """Returns the cached device memory to the device (as ``torch.cuda.empty_cache``); blocks in use
    stay. A failed device allocation does this by itself and retries before raising."""
    _core_with_cuda("empty_cache").cuda_empty_cache()
