"""A single benchmark case in a loop, for `perf record` (bench/NOTES.md and RESULTS.md quote its
profiles): python bench/profile_case.py CELL SHAPE TASK [SECONDS [PRECISION]]

CELL: rnn | lstm | gru; SHAPE: small | mid | large | stream (B=1, C=H=256, one step);
TASK: forward | train (with dx) | train_nodx; PRECISION: float32 (default) | bfloat16. One thread,
float32 parameters.
"""
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

import rnnkit  # noqa: E402

SHAPES = {"small": (100, 1, 128, 128), "mid": (100, 16, 256, 256), "large": (100, 64, 512, 512),
          "stream": (1, 1, 256, 256)}
CELLS = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU}


def main() -> None:
    cell, shape, task = sys.argv[1:4]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    precision = sys.argv[5] if len(sys.argv) > 5 else "float32"
    T, N, C, H = SHAPES[shape]
    rnnkit.set_num_threads(1)
    layer = CELLS[cell](C, H, seed=0, precision=precision)
    rng = np.random.default_rng(0)
    if shape == "stream":
        layer.eval()
        x = rng.standard_normal((1, C)).astype(np.float32)
        state = None

        def run() -> None:
            nonlocal state
            _, state = layer.step(x, state)
    else:
        x = rng.standard_normal((T, N, C)).astype(np.float32)
        dy = rng.standard_normal((T, N, H)).astype(np.float32)
        if task == "forward":
            layer.eval()

            def run() -> None:
                layer(x)
        else:
            def run() -> None:
                layer(x)
                layer.backward(dy, compute_dx=(task == "train"))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run()
        n += 1
    print(f"{cell} {shape} {task}: {n} calls, {1e3 * (time.perf_counter() - t0) / n:.3f} ms each")


if __name__ == "__main__":
    main()
