"""The timing rule of every rnnkit benchmark: functions run round-robin, medians compared.

``rnnkit compare`` and the scripts in bench/ time with this one helper, so that machine noise (a
busy neighbour on a shared machine) hits every contender of a comparison alike.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

import numpy as np


def interleaved_medians(fns: Dict[str, Any], repeats: int, warmup: int = 1) -> Dict[str, float]:
    """Median seconds of each function, run round-robin so machine noise hits all alike (after
    `warmup` untimed rounds). The timing rule of every rnnkit benchmark (bench/ uses it too)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}
