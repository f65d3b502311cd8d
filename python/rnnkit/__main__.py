"""``python -m rnnkit`` (also the ``rnnkit`` command): build information and a timed demo.

Prints the version, how this copy was built (compiler, SIMD, BLAS, threads, CUDA and why it is or
is not usable), then runs a forward and backward pass of an Elman layer on random data and
reports the timings.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import numpy as np


def _demo(T: int, N: int, C: int, H: int, repeats: int) -> None:
    import rnnkit

    rng = np.random.default_rng(0)
    layer = rnnkit.RNN(C, H, seed=0)
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    forward_s, backward_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y, h_n = layer(x)
        t1 = time.perf_counter()
        layer.backward(dy)
        t2 = time.perf_counter()
        forward_s.append(t1 - t0)
        backward_s.append(t2 - t1)
    fwd, bwd = float(np.median(forward_s)), float(np.median(backward_s))
    flops = 2.0 * T * N * H * (C + H)
    print(f"demo: Elman tanh layer, T={T} N={N} C={C} H={H}, float32, median of {repeats}")
    print(f"  forward   {fwd * 1e3:8.3f} ms  ({flops / fwd / 1e9:6.2f} GFLOP/s)")
    print(f"  backward  {bwd * 1e3:8.3f} ms  ({2 * flops / bwd / 1e9:6.2f} GFLOP/s)")
    gnorm = float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in layer.grads.values())))
    print(f"  |y| = {float(np.linalg.norm(y)):.4f}, |h_n| = {float(np.linalg.norm(h_n)):.4f}, "
          f"|grads| = {gnorm:.4f}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="rnnkit", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, metavar=("T", "N", "C", "H"),
                        default=(100, 16, 256, 256), help="demo shape (default: 100 16 256 256)")
    parser.add_argument("--repeats", type=int, default=10, help="demo repetitions (default: 10)")
    args = parser.parse_args(argv)
    if min(args.shape) < 1 or args.repeats < 1:
        parser.error("--shape values and --repeats must be positive")

    import rnnkit

    info = rnnkit.build_info()
    print(f"rnnkit {rnnkit.__version__}")
    print(f"  python     {sys.version.split()[0]}, numpy {np.__version__}")
    print(f"  compiler   {info['compiler']}  (Eigen {info['eigen']}, SIMD: {info['simd']})")
    print(f"  BLAS       {info['blas']}")
    print(f"  threads    {info['num_threads']} (set with RNNKIT_NUM_THREADS or rnnkit.set_num_threads)")
    built = "built" if info["cuda_built"] else "not built"
    usable = "available" if info["cuda_available"] else "not available"
    print(f"  CUDA       {built}, {usable}: {info['cuda_status']}")
    _demo(*args.shape, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
