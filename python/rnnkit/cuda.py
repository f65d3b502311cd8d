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


def set_graphs(enabled: bool) -> None:
    """Turns CUDA graphs for the standard path on (the default) or off, process-wide. With them on,
    each layer-direction's loop of per-step launches (a recurrent GEMM and one or two pointwise
    kernels per step) is captured once as a CUDA graph and relaunched as one unit while its shapes
    and buffers stay the same (the caching allocator hands the same blocks out again in a training
    or inference loop); a changed buffer updates the graph in place. Results are bitwise the same
    either way. The persistent small-batch forward is one launch already and takes no graph."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    _core_with_cuda("set_graphs").cuda_set_graphs(enabled)


def get_graphs() -> bool:
    """Whether CUDA graphs are on (``set_graphs``)."""
    return bool(_core_with_cuda("get_graphs").cuda_get_graphs())


def graph_stats() -> dict:
    """CUDA graph counters: ``launches`` (graphs launched), ``captures`` (loops captured because no
    cached graph matched), ``updates`` (captures that updated a cached graph of the same shapes),
    ``instantiations`` (captures made into a new graph), all process-wide; ``cached`` (graphs this
    thread holds) and ``per_topology`` (graphs of one shape kept side by side before updates
    replace the least recently used). In a steady loop ``launches`` grows and ``captures`` does
    not."""
    return dict(_core_with_cuda("graph_stats").cuda_graph_stats())


def clear_graph_cache() -> None:
    """Drops the calling thread's cached CUDA graphs (they are rebuilt on demand)."""
    _core_with_cuda("clear_graph_cache").cuda_clear_graph_cache()


def _stream_handle(stream) -> int:
    """A cudaStream_t as an int, from an int, None (the legacy default stream), or an object that
    carries one: ``torch.cuda.Stream`` (``.cuda_stream``), CuPy's ``Stream`` (``.ptr``)."""
    if stream is None:
        return 0
    for attribute in ("cuda_stream", "ptr"):
        if not isinstance(stream, (int, bool)) and hasattr(stream, attribute):
            stream = getattr(stream, attribute)
            break
    if isinstance(stream, bool) or not isinstance(stream, int):
        raise TypeError(
            "stream: expected a cudaStream_t as an int, None, or a stream object with .cuda_stream "
            f"(torch.cuda.Stream) or .ptr (cupy.cuda.Stream), got {type(stream).__name__}"
        )
    if stream < 0 or stream >= 1 << 64:
        raise ValueError(f"stream: expected a cudaStream_t handle (an address, 0 for the default stream), got {stream}")
    return stream


def set_stream(stream) -> None:
    """Makes ``stream`` the CUDA stream this thread's rnnkit calls run on: an int handle (a
    ``cudaStream_t``; 0 is the legacy default stream, the initial one), None for the default, or a
    ``torch.cuda.Stream`` / ``cupy.cuda.Stream``. The stream must stay alive while it is current.
    Every rnnkit call queues its work on it and waits for it before returning, so arrays returned
    are ready on any stream. Per host thread, like PyTorch's current stream."""
    _core_with_cuda("set_stream").cuda_set_stream(_stream_handle(stream))


def current_stream() -> int:
    """The handle of the stream this thread's rnnkit calls run on (0: the legacy default stream)."""
    return int(_core_with_cuda("current_stream").cuda_current_stream())


class stream:  # noqa: N801  (a context manager named like torch.cuda.stream)
    """``with rnnkit.cuda.stream(s): ...`` runs the block's rnnkit calls on ``s`` (as
    ``set_stream``) and restores the previous stream after it, also when the block raises."""

    def __init__(self, stream) -> None:
        self._handle = _stream_handle(stream)
        self._saved: list[int] = []

    def __enter__(self) -> "stream":
        self._saved.append(current_stream())
        _core_with_cuda("stream").cuda_set_stream(self._handle)
        return self

    def __exit__(self, *exc) -> None:
        _core.cuda_set_stream(self._saved.pop())
