"""Two builds of the compiled core in one process, timed round-robin: a refactoring's A/B.

    python bench/ab_core.py --other /path/to/old/site-packages/rnnkit/_core*.so [--rounds 21]

Loads this checkout's installed ``rnnkit._core`` and another build's ``_core`` (as
``rnnkit_other._core``) side by side, then times the same calls through both, interleaved round by
round (``interleaved_medians``), so that a busy neighbour slows both alike -- which separate runs of
bench/goals.py cannot promise on a shared machine. Calls: every cell's inference forward and
training step (forward + BPTT with dx) at the three standard shapes, the streaming step at B=1,
C=H=256, and a network's training step and one-step inference, all float32, 1 thread (or
--threads). It prints
other/this for each (above 1: this build is faster) and writes JSON with --json.

Both builds must share the compiled module's Python-facing API for these calls (StackConfig,
forward, backward, step, NetworkConfig, network_forward; network_backward with or without its
``need_dx`` argument).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import platform
import sys
import types

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import rnnkit  # noqa: E402, F401  (loads libscipy_openblas, which the other build links too)
from rnnkit import _core as this  # noqa: E402
from rnnkit.app.timing import interleaved_medians  # noqa: E402

SHAPES = {"small": (100, 1, 128, 128), "mid": (100, 16, 256, 256), "large": (100, 64, 512, 512)}
MODES = {"rnn": "RNN_TANH", "lstm": "LSTM", "gru": "GRU"}


def load_other(path: str) -> types.ModuleType:
    """Another build's _core, as rnnkit_other._core (its init function is PyInit__core)."""
    pkg = types.ModuleType("rnnkit_other")
    pkg.__path__ = [os.path.dirname(path)]
    sys.modules["rnnkit_other"] = pkg
    loader = importlib.machinery.ExtensionFileLoader("rnnkit_other._core", path)
    spec = importlib.util.spec_from_file_location("rnnkit_other._core", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def params_for(core, cfg, rng):
    return [rng.uniform(-0.1, 0.1, shape).astype(np.float32) for _, shape in cfg.param_specs()]


def stack_calls(core, mode, shape, rng):
    T, N, C, H = shape
    cfg = core.StackConfig(mode, C, H)
    params = params_for(core, cfg, np.random.default_rng(0))
    grads = [np.zeros_like(p) for p in params]
    x = rng.standard_normal((T, N, C)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)

    def forward():
        core.forward(cfg, params, x, None, None, None, False, 0)

    def train():
        _, _, _, cache = core.forward(cfg, params, x, None, None, None, True, 0)
        core.backward(cache, dy, None, None, grads, True)

    return forward, train


def step_call(core, mode, reps=200):
    C = H = 256
    cfg = core.StackConfig(mode, C, H)
    params = params_for(core, cfg, np.random.default_rng(0))
    x = np.full((1, C), 0.1, np.float32)
    h = np.zeros((1, 1, H), np.float32)
    c = h.copy() if mode == "LSTM" else None

    def run():
        for _ in range(reps):
            core.step(cfg, params, x, h, c)

    return run, reps


def network_calls(core, mode, T=100, N=32, vocab=103, E=64, H=256):
    cfg = core.NetworkConfig(core.StackConfig(mode, E, H), vocab, vocab)
    params = params_for(core, cfg, np.random.default_rng(0))
    grads = [np.zeros_like(p) for p in params]
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, vocab, (T, N)).astype(np.int64)
    targets = rng.integers(0, vocab, (T, N)).astype(np.int64)
    one = tokens[:1, :1].copy()

    # Decided once, not by catching the TypeError per call: pybind11 builds that error's message
    # from the repr of every argument array, which would be timed as the other build's work.
    extra = (False,) if "need_dx" in (core.network_backward.__doc__ or "") else ()  # a build before need_dx

    def train():
        *_, cache = core.network_forward(cfg, params, tokens, None, None, None, targets, True, 0, False, False)
        core.network_backward(cache, grads, None, *extra)

    def step(reps=200):
        for _ in range(reps):
            core.network_forward(cfg, params, one, None, None, None, None, False, 0, True, True)

    return train, step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--other", required=True, help="the other build's _core*.so")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--threads", type=int, default=1, help="rnnkit threads for both builds")
    p.add_argument("--shapes", default="small,mid,large", help="which standard shapes")
    p.add_argument("--json", default="")
    args = p.parse_args()
    other = load_other(args.other)
    this.set_num_threads(args.threads)
    other.set_num_threads(args.threads)
    rows = []

    def compare(what, make, scale=1.0, unit="ms", rounds=args.rounds):
        fns = {}
        for name, core in (("this", this), ("other", other)):
            fns[name] = make(core)
        m = interleaved_medians(fns, rounds, warmup=2)
        ratio = m["other"] / m["this"]
        rows.append({"what": what, "this": m["this"] * scale, "other": m["other"] * scale, "unit": unit,
                     "other_over_this": ratio})
        print(f"  {what:<38} this {m['this'] * scale:10.3f} {unit}  other {m['other'] * scale:10.3f} {unit}  "
              f"other/this {ratio:5.3f}", flush=True)

    print(f"this: {this.__file__}\nother: {args.other}\n{platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; {this.build_info()['blas']}; {args.threads} thread(s); {args.rounds} interleaved "
          "rounds, medians")
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        rounds = max(5, args.rounds // (3 if shape_name == "large" else 1))
        for cell, mode in MODES.items():
            rng = np.random.default_rng(2)
            compare(f"{cell} {shape_name} forward", lambda core: stack_calls(core, mode, shape, rng)[0], 1e3,
                    rounds=rounds)
            compare(f"{cell} {shape_name} train (with dx)", lambda core: stack_calls(core, mode, shape, rng)[1], 1e3,
                    rounds=rounds)
    for cell, mode in MODES.items():
        compare(f"{cell} layer step (B=1, C=H=256)", lambda core: step_call(core, mode)[0], 1e6 / 200, "us")
    for cell, mode in MODES.items():
        compare(f"{cell} network train step (T=100, N=32)", lambda core: network_calls(core, mode)[0], 1e3)
        compare(f"{cell} network step (T=1, N=1)", lambda core: network_calls(core, mode)[1], 1e6 / 200, "us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"this": this.__file__, "other": args.other, "rounds": args.rounds, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
