"""Benchmark: rnnkit's RNN/LSTM/GRU layers against torch.nn.RNN/LSTM/GRU (and, for the Elman
layer, a per-step NumPy loop) on the CPU.

    python bench/bench_rnn.py                 # every cell, the three standard shapes, 1 thread
    python bench/bench_rnn.py --cells lstm --threads 2 --csv out.csv

Every implementation runs in this one process with the same thread count, interleaved round by
round so that a noisy neighbour slows all of them alike; each number is the median over rounds.
Ratios are "times faster than rnnkit" for the reference (> 1 means rnnkit is faster).

What is timed (float32; the Elman layer uses tanh):
  forward            inference: rnnkit in eval mode, torch under no_grad, the NumPy loop
  train (dx)         forward + backward for every parameter and the input
                     (torch: x.requires_grad=True; rnnkit: backward(..., compute_dx=True))
  train (no dx)      the same without the input gradient
                     (torch: x.requires_grad=False; rnnkit: compute_dx=False)
The NumPy loop (Elman only) is the one a user would write: per step one matmul for the input,
one for the state, tanh; its backward is BPTT written the same way.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from typing import Callable, Dict, List

SHAPES = [(100, 1, 128, 128), (100, 16, 256, 256), (100, 64, 512, 512)]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="threads for every library (default 1)")
    p.add_argument("--rounds", type=int, default=0, help="timed rounds per shape (default: by shape)")
    p.add_argument("--shapes", default="", help="T,N,C,H;T,N,C,H;... (default: the three standard shapes)")
    p.add_argument("--csv", default="", help="also write the rows to this CSV file")
    p.add_argument("--no-numpy", action="store_true", help="skip the per-step NumPy loop")
    p.add_argument("--cells", default="rnn,lstm,gru", help="comma-separated subset of rnn,lstm,gru")
    return p.parse_args()


ARGS = _parse()
# Thread counts must be fixed before NumPy/torch load their BLAS.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
os.environ["RNNKIT_NUM_THREADS"] = str(ARGS.threads)

import numpy as np  # noqa: E402

import rnnkit  # noqa: E402
from rnnkit.app.timing import interleaved_medians  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:
    torch = None


# ---- the NumPy per-step loop ---------------------------------------------------------------
def numpy_forward(x, h0, w_ih, w_hh, b):
    T, N, _ = x.shape
    H = w_hh.shape[0]
    hs = np.empty((T + 1, N, H), x.dtype)
    hs[0] = h0
    for t in range(T):
        hs[t + 1] = np.tanh(x[t] @ w_ih.T + hs[t] @ w_hh.T + b)
    return hs


def numpy_train(x, h0, w_ih, w_hh, b, dy, need_dx):
    hs = numpy_forward(x, h0, w_ih, w_hh, b)
    dw_ih = np.zeros_like(w_ih)
    dw_hh = np.zeros_like(w_hh)
    db = np.zeros_like(b)
    dx = np.empty_like(x) if need_dx else None
    dh = np.zeros_like(h0)
    for t in reversed(range(x.shape[0])):
        dpre = (dh + dy[t]) * (1 - hs[t + 1] * hs[t + 1])
        dw_ih += dpre.T @ x[t]
        dw_hh += dpre.T @ hs[t]
        db += dpre.sum(0)
        if need_dx:
            dx[t] = dpre @ w_ih
        dh = dpre @ w_hh
    return dx, dh


CELLS = {"rnn": ("RNN", rnnkit.RNN, 1), "lstm": ("LSTM", rnnkit.LSTM, 4), "gru": ("GRU", rnnkit.GRU, 3)}


def bench_shape(cell: str, T: int, N: int, C: int, H: int, rounds: int) -> List[dict]:
    torch_name, ours, gates = CELLS[cell]
    rng = np.random.default_rng(0)
    layer = ours(C, H, seed=0)
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)
    p = layer.params
    b = p["bias_ih_l0"] + p["bias_hh_l0"]
    h0 = np.zeros((N, H), np.float32)

    def rk_forward():
        layer.training = False
        layer(x)

    def rk_train(need_dx):
        def run():
            layer.training = True
            layer(x)
            layer.backward(dy, compute_dx=need_dx)
        return run

    fns: Dict[str, Dict[str, Callable[[], None]]] = {
        "forward": {"rnnkit": rk_forward},
        "train (dx)": {"rnnkit": rk_train(True)},
        "train (no dx)": {"rnnkit": rk_train(False)},
    }
    if torch is not None:
        ref = getattr(torch.nn, torch_name)(C, H)
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
        xt = torch.from_numpy(x)
        dyt = torch.from_numpy(dy)

        def t_forward():
            with torch.no_grad():
                ref(xt)

        def t_train(need_dx):
            def run():
                xi = xt.detach().requires_grad_(need_dx)
                y, _ = ref(xi)
                y.backward(dyt)
            return run

        fns["forward"]["torch"] = t_forward
        fns["train (dx)"]["torch"] = t_train(True)
        fns["train (no dx)"]["torch"] = t_train(False)
    if cell == "rnn" and not ARGS.no_numpy:
        w_ih, w_hh = p["weight_ih_l0"], p["weight_hh_l0"]
        fns["forward"]["numpy"] = lambda: numpy_forward(x, h0, w_ih, w_hh, b)
        fns["train (dx)"]["numpy"] = lambda: numpy_train(x, h0, w_ih, w_hh, b, dy, True)
        fns["train (no dx)"]["numpy"] = lambda: numpy_train(x, h0, w_ih, w_hh, b, dy, False)

    rows = []
    for task, impls in fns.items():
        med = interleaved_medians(impls, rounds, warmup=2)
        flops = 2.0 * T * N * gates * H * (C + H) * (1 if task == "forward" else 3)
        row = {"cell": cell, "T": T, "N": N, "C": C, "H": H, "task": task, "rnnkit_ms": med["rnnkit"] * 1e3,
               "rnnkit_gflops": flops / med["rnnkit"] / 1e9}
        for other in ("torch", "numpy"):
            if other in med:
                row[f"{other}_ms"] = med[other] * 1e3
                row[f"{other}_ratio"] = med[other] / med["rnnkit"]
        rows.append(row)
    return rows


def main() -> int:
    shapes = SHAPES
    if ARGS.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in ARGS.shapes.split(";")]
    if torch is not None:
        torch.set_num_threads(ARGS.threads)
    rnnkit.set_num_threads(ARGS.threads)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# machine: {cpu}, {os.cpu_count()} logical CPUs; threads: {ARGS.threads}")
    print(f"# rnnkit {rnnkit.__version__} ({rnnkit.build_info()['blas']}); "
          f"torch {torch.__version__ if torch else 'not installed'}; numpy {np.__version__}")
    print(f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; command: python {' '.join(sys.argv)}")
    if torch is None:
        print("# torch is not installed: the PyTorch columns are skipped")
    header = f"{'cell':<5} {'shape (T,N,C,H)':<20} {'task':<14} {'rnnkit ms':>10} {'GFLOP/s':>8} {'torch ms':>10} {'vs torch':>9} {'numpy ms':>10} {'vs numpy':>9}"
    print(header)
    all_rows = []
    cells = [c.strip() for c in ARGS.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        raise SystemExit(f"--cells: expected a subset of {list(CELLS)}, got {unknown}")
    for cell, (T, N, C, H) in ((c, s) for c in cells for s in shapes):
        rounds = ARGS.rounds or (30 if N * H <= 4096 else 15 if N * H <= 8192 else 5)
        for r in bench_shape(cell, T, N, C, H, rounds):
            all_rows.append(r)

            def fmt(key, spec, unit=""):
                return format(r[key], spec) + unit if key in r else "-"

            print(f"{cell:<5} {str((T, N, C, H)):<20} {r['task']:<14} {r['rnnkit_ms']:>10.3f} {r['rnnkit_gflops']:>8.1f} "
                  f"{fmt('torch_ms', '.3f'):>10} {fmt('torch_ratio', '.2f', 'x'):>9} "
                  f"{fmt('numpy_ms', '.3f'):>10} {fmt('numpy_ratio', '.2f', 'x'):>9}", flush=True)
    if ARGS.csv:
        keys = sorted({k for r in all_rows for k in r}, key=lambda k: list(all_rows[0]).index(k) if k in all_rows[0] else 99)
        with open(ARGS.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(all_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
