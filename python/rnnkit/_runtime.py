"""Process-wide runtime settings: threads, deterministic mode, the buffer cache, build information.

rnnkit's loops run on 1 thread by default; ``set_num_threads`` (or ``RNNKIT_NUM_THREADS`` in the
environment) lets its own thread team split each step's work (its BLAS always runs
single-threaded; NumPy and PyTorch keep their own settings). Small shapes stay on one thread
whatever the setting.

Reproducibility: for a fixed seed, results are bitwise identical run to run at a given thread
count. Across thread counts they can differ in the last bits, because BLAS rounds a row differently
depending on the shape of the call that computes it. ``set_deterministic(True)`` makes every BLAS
call independent of the thread count (fixed blocks), so results are identical for any
``set_num_threads``; it costs a few per cent at large shapes (bench/NOTES.md).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional

from . import _core
from . import _validate as V

ENV_THREADS = "RNNKIT_NUM_THREADS"


def set_num_threads(n: int) -> None:
    """Threads rnnkit's loops may use (an integer >= 1; process-wide)."""
    _core.set_num_threads(V.check_size("n", n))


def get_num_threads() -> int:
    """Threads rnnkit's loops may currently use."""
    return int(_core.get_num_threads())


def set_deterministic(on: bool = True) -> None:
    """Results bitwise identical for every thread count (process-wide; default off). Takes effect
    at the next call; a call already running keeps the mode it started with."""
    _core.set_deterministic(V.check_bool("on", on))


def get_deterministic() -> bool:
    """Whether deterministic mode is on."""
    return bool(_core.get_deterministic())


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
    info["deterministic"] = get_deterministic()
    available, reason = _core.cuda_status()
    info["cuda_available"] = bool(available)
    info["cuda_status"] = reason
    return info


# OpenBLAS's x86 kernels (its DYNAMIC_ARCH core names, lower case) by the widest vector ISA they
# use, and how many floats one FMA of that ISA handles.
_OPENBLAS_KERNEL_ISA = {
    "skylakex": "avx512", "cooperlake": "avx512", "sapphirerapids": "avx512",
    "haswell": "avx2", "zen": "avx2",
    "sandybridge": "avx", "bulldozer": "avx", "piledriver": "avx", "steamroller": "avx", "excavator": "avx",
    "nehalem": "sse2", "core2": "sse2", "penryn": "sse2", "dunnington": "sse2", "atom": "sse2",
    "prescott": "sse2", "opteron": "sse2", "opteron_sse3": "sse2", "barcelona": "sse2", "bobcat": "sse2",
    "katmai": "sse2", "coppermine": "sse2", "northwood": "sse2", "banias": "sse2", "athlon": "sse2",
}
_ISA_FLOATS = {"sse2": 4, "avx": 8, "avx2": 8, "avx512": 16}


def blas_kernel_warning(kernel: Optional[str] = None, cpu_isa: Optional[str] = None,
                        environ: Optional[Dict[str, str]] = None) -> Optional[str]:
    """One line when OPENBLAS_CORETYPE makes OpenBLAS run a kernel with narrower vectors than the
    CPU supports (saying what it costs and how to undo it), else None. rnnkit never overrides the
    variable: it is the user's. The arguments default to this process's kernel, CPU and
    environment."""
    if kernel is None or cpu_isa is None:
        info = _core.build_info()
        kernel = info["blas_kernel"] if kernel is None else kernel
        cpu_isa = info["cpu_vector_isa"] if cpu_isa is None else cpu_isa
    env = os.environ if environ is None else environ
    forced = env.get("OPENBLAS_CORETYPE")
    kernel_isa = _OPENBLAS_KERNEL_ISA.get(str(kernel).strip().lower())
    if not forced or kernel_isa is None or cpu_isa not in _ISA_FLOATS:
        return None
    ours, theirs = _ISA_FLOATS[kernel_isa], _ISA_FLOATS[cpu_isa]
    if ours >= theirs:
        return None
    return (f"OpenBLAS runs its {kernel} kernel ({kernel_isa}) because OPENBLAS_CORETYPE={forced} is set, on a CPU "
            f"with {cpu_isa}: its GEMMs, and so rnnkit's large ones, get at most {ours}/{theirs} of the CPU's FMA "
            f"width (measured on one Zen 5 core: sgemm 120 vs 229 GFLOP/s); unset OPENBLAS_CORETYPE to let "
            "OpenBLAS choose the CPU's own kernel")


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
