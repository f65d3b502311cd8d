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
