"""Whether rnnkit's CUDA backend can run here.

The backend is compiled only when rnnkit is installed with ``RNNKIT_CUDA=1``; even then it needs a
GPU, a driver and cuBLAS (``pip install 'rnnkit[cuda]'``) at run time. Importing rnnkit never
requires any of them.
"""

from __future__ import annotations

from . import _core


def is_built() -> bool:
    """True when this rnnkit was compiled with the CUDA backend."""
    return bool(_core.build_info()["cuda_built"])


def is_available() -> bool:
    """True when the CUDA backend is built and a usable GPU, driver and cuBLAS are present."""
    return bool(_core.cuda_status()[0])


def status() -> str:
    """Why the backend is unavailable, or which device it would use."""
    return str(_core.cuda_status()[1])
