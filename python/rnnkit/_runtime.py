"""Process-wide runtime settings: BLAS threads and build information.

rnnkit runs its BLAS with 1 thread by default: the GEMMs of a recurrent layer are small enough
that a second thread usually costs more than it brings, and on a shared machine it can be much
slower (bench/RESULTS.md). Set ``RNNKIT_NUM_THREADS`` in the environment or call
``set_num_threads`` to change it. The setting applies to rnnkit's own OpenBLAS only (NumPy and
PyTorch keep theirs).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict

from . import _core
from . import _validate as V

ENV_THREADS = "RNNKIT_NUM_THREADS"


def set_num_threads(n: int) -> None:
    """Threads rnnkit's BLAS may use (an integer >= 1; process-wide)."""
    _core.set_num_threads(V.check_size("n", n))


def get_num_threads() -> int:
    """Threads rnnkit's BLAS currently uses."""
    return int(_core.get_num_threads())


def empty_cache() -> int:
    """Returns the large buffers rnnkit keeps for reuse between calls to the system; returns the
    number of bytes released. (rnnkit keeps freed buffers of 1 MiB and more, up to a quarter of the
    machine's memory, because fresh large allocations cost page faults on every call.)"""
    cached = int(_core.cached_bytes())
    _core.empty_cache()
    return cached


def build_info() -> Dict[str, Any]:
    """Version, compiler, Eigen/SIMD, BLAS and CUDA details of this build, plus the thread count."""
    info = dict(_core.build_info())
    info["num_threads"] = get_num_threads()
    available, reason = _core.cuda_status()
    info["cuda_available"] = bool(available)
    info["cuda_status"] = reason
    return info


def _apply_default_threads() -> None:
    raw = os.environ.get(ENV_THREADS)
    n = 1
    if raw is not None:
        try:
            n = int(raw)
            if n < 1:
                raise ValueError
        except ValueError:
            warnings.warn(f"{ENV_THREADS}={raw!r} is not a positive integer; using 1 thread", RuntimeWarning)
            n = 1
    _core.set_num_threads(n)


_apply_default_threads()
