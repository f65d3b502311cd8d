"""rnnkit's CUDA backend against torch.nn.RNN/LSTM/GRU (cuDNN) in the same process.

Run by bench/gpu_check.sh on a GPU machine; `--dry-run` runs the same logic end to end with tiny
shapes against whatever CUDA backend is installed (the host-emulation build in CI), timing with the
wall clock and comparing against torch.nn on the CPU when torch has no GPU.

Timing: per (cell, B, H, mode) each library gets warm-up calls, then >= 20 timed calls, each timed
with CUDA events on the default stream (rnnkit's calls run there and synchronise before returning);
the median is reported, and the ratio torch / rnnkit (> 1: rnnkit faster). Inputs and parameters sit
on the device before timing; training is forward + backward into gradient buffers. TF32 is off for
both (torch.backends.cuda.matmul.allow_tf32 = False, cudnn.allow_tf32 = False; cuBLAS' default math
mode for rnnkit). A second table runs precision="bfloat16" against torch under
torch.autocast("cuda", torch.bfloat16) (cuDNN's bf16 path) at a few batch sizes, with rnnkit's own
float32 beside it. Writes gpu_bench.md (the tables) and gpu_bench.json under --out.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

import rnnkit
from rnnkit import _core

CELLS = {"RNN_TANH": "RNN", "LSTM": "LSTM", "GRU": "GRU"}
# The goals, torch time / rnnkit time per batch size (B=1 also: <= 2 us per step).
GOALS = {1: 3.0, 8: 2.0, 64: 1.0, 256: 0.9}
B1_STEP_GOAL_US = 2.0


def _timer(use_events):
    """A function running fn() and returning its time in ms (CUDA events, or the wall clock)."""
    if use_events:
        import torch

        def timed(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return timed


def _median(timed, fn, warmup, repeats):
    for _ in range(warmup):
        timed(fn)
    return statistics.median(timed(fn) for _ in range(repeats))


def _rnnkit_calls(mode, T, B, H, seed=0, precision="float32"):
    cfg = _core.StackConfig(mode, H, H, 1, False, 0, True, 0.0, precision=precision)
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(H)
    params = [_core.to_device((scale * rng.standard_normal(s)).astype(np.float32)) for _, s in cfg.param_specs()]
    grads = [_core.to_device(np.zeros(s, np.float32)) for _, s in cfg.param_specs()]
    x = _core.to_device(rng.standard_normal((T, B, H)).astype(np.float32))
    dy = _core.to_device(rng.standard_normal((T, B, H)).astype(np.float32))

    def inference():
        _core.forward(cfg, params, x, None, None, None, False, 0)

    def training():
        _, _, _, cache = _core.forward(cfg, params, x, None, None, None, True, 0)
        _core.backward(cache, dy, None, None, grads, True)

    return inference, training, (cfg, params, x)


def _torch_calls(mode, T, B, H, device, seed=0, autocast=False):
    import torch

    torch.manual_seed(seed)
    cls = getattr(torch.nn, CELLS[mode])
    layer = cls(H, H, 1).to(device)
    x = torch.randn(T, B, H, device=device, requires_grad=True)
    dy = torch.randn(T, B, H, device=device)

    def inference():
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            layer(x)

    def training():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            y, _ = layer(x)
        y.backward(dy.to(y.dtype))

    return inference, training


def _check_agreement(mode, T, B, H, device):
    """rnnkit's CUDA forward against its CPU forward on the same parameters (a sanity check of the
    benchmarked path, not the test suite's job)."""
    cfg = _core.StackConfig(mode, H, H, 1, False, 0, True, 0.0)
    rng = np.random.default_rng(1)
    params = [(rng.standard_normal(s) / np.sqrt(H)).astype(np.float32) for _, s in cfg.param_specs()]
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    want = _core.forward(cfg, params, x, None, None, None, False, 0)[0]
    got = _core.forward(cfg, [_core.to_device(p) for p in params], _core.to_device(x), None, None, None, False, 0)[0]
    return float(np.max(np.abs(got.numpy() - want)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes, few repeats (CI, emulation build)")
    ap.add_argument("--T", type=int, default=100)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    if not rnnkit.cuda.is_available():
        print(f"gpu_bench: the CUDA backend is unavailable: {rnnkit.cuda.status()}", file=sys.stderr)
        return 1
    try:
        import torch
    except ImportError:
        torch = None
    gpu = torch is not None and torch.cuda.is_available() and not rnnkit.cuda.is_emulated()
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if gpu else "cpu"
    timed = _timer(gpu)
    if args.dry_run:
        T, batches, hiddens, warmup, repeats = 4, [1, 8], [16], 1, 3
    else:
        T, batches, hiddens, warmup, repeats = args.T, [1, 8, 64, 256], [256, 512, 1024], 5, 21

    header = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rnnkit": rnnkit.__version__,
        "cuda_status": rnnkit.cuda.status(),
        "emulated": rnnkit.cuda.is_emulated(),
        "torch": getattr(torch, "__version__", None),
        "torch_device": device,
        "card": torch.cuda.get_device_name(0) if gpu else None,
        "tf32": False,
        "python": platform.python_version(),
        "T": T,
        "timing": f"{'CUDA events' if gpu else 'wall clock'}, {warmup} warm-up, median of {repeats}",
    }
    rows = []
    for mode in CELLS:
        for H in hiddens:
            for B in batches:
                r_inf, r_train, _ = _rnnkit_calls(mode, T, B, H)
                row = {"cell": mode, "B": B, "H": H, "max_abs_err_vs_cpu": _check_agreement(mode, 3, B, H, device)}
                before = rnnkit.cuda.persistent_launches()
                r_inf()
                # Which forward the default ("auto") chose for this shape (cuda/persistent.h).
                row["forward_path"] = "persistent" if rnnkit.cuda.persistent_launches() > before else "standard"
                row["rnnkit_inference_ms"] = _median(timed, r_inf, warmup, repeats)
                row["rnnkit_training_ms"] = _median(timed, r_train, warmup, repeats)
                # The standard path's per-step launches one by one instead of as CUDA graphs
                # (cuda/graph.h): whether graphs pay off at this shape.
                rnnkit.cuda.set_graphs(False)
                try:
                    row["rnnkit_training_no_graphs_ms"] = _median(timed, r_train, warmup, repeats)
                finally:
                    rnnkit.cuda.set_graphs(True)
                row["graph_speedup_training"] = row["rnnkit_training_no_graphs_ms"] / row["rnnkit_training_ms"]
                if torch is not None:
                    t_inf, t_train = _torch_calls(mode, T, B, H, device)
                    row["torch_inference_ms"] = _median(timed, t_inf, warmup, repeats)
                    row["torch_training_ms"] = _median(timed, t_train, warmup, repeats)
                    for m in ("inference", "training"):
                        row[f"ratio_{m}"] = row[f"torch_{m}_ms"] / row[f"rnnkit_{m}_ms"]
                row["rnnkit_us_per_step_inference"] = row["rnnkit_inference_ms"] * 1e3 / T
                rows.append(row)
                print(json.dumps(row), flush=True)

    # precision="bfloat16" against torch's bf16 autocast (cuDNN), rnnkit's float32 beside it.
    bf16_rows = []
    bf16_batches, bf16_H = ([8], hiddens[0]) if args.dry_run else ([8, 64, 256], 512)
    for mode in CELLS:
        for B in bf16_batches:
            row = {"cell": mode, "B": B, "H": bf16_H}
            for precision in ("bfloat16", "float32"):
                inf, train, _ = _rnnkit_calls(mode, T, B, bf16_H, precision=precision)
                row[f"rnnkit_{precision}_inference_ms"] = _median(timed, inf, warmup, repeats)
                row[f"rnnkit_{precision}_training_ms"] = _median(timed, train, warmup, repeats)
            if torch is not None:
                t_inf, t_train = _torch_calls(mode, T, B, bf16_H, device, autocast=True)
                row["torch_autocast_inference_ms"] = _median(timed, t_inf, warmup, repeats)
                row["torch_autocast_training_ms"] = _median(timed, t_train, warmup, repeats)
                for m in ("inference", "training"):
                    row[f"ratio_{m}"] = row[f"torch_autocast_{m}_ms"] / row[f"rnnkit_bfloat16_{m}_ms"]
            bf16_rows.append(row)
            print(json.dumps(row), flush=True)

    (args.out / "gpu_bench.json").write_text(json.dumps({"header": header, "rows": rows, "bf16_rows": bf16_rows},
                                                        indent=1))
    lines = [f"# rnnkit CUDA vs torch.nn ({device})", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| cell | B | H | rnnkit inf ms | torch inf ms | ratio | rnnkit train ms | torch train ms | ratio | "
              "goal | us/step (inf) | forward | graphs x (train) | err vs CPU |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def f(key):
            return f"{r[key]:.3f}" if key in r else "-"
        goal = GOALS.get(r["B"])
        lines.append(f"| {r['cell']} | {r['B']} | {r['H']} | {f('rnnkit_inference_ms')} | {f('torch_inference_ms')} | "
                     f"{f('ratio_inference')} | {f('rnnkit_training_ms')} | {f('torch_training_ms')} | "
                     f"{f('ratio_training')} | {'>= ' + str(goal) if goal else '-'} | "
                     f"{r['rnnkit_us_per_step_inference']:.2f} | {r['forward_path']} | {r['graph_speedup_training']:.2f} | "
                     f"{r['max_abs_err_vs_cpu']:.1e} |")
    lines += ["", f"precision=\"bfloat16\" vs torch.autocast(\"{device}\", torch.bfloat16) (ratio torch / rnnkit):", "",
              "| cell | B | H | rnnkit bf16 inf ms | torch autocast inf ms | ratio | rnnkit bf16 train ms | "
              "torch autocast train ms | ratio | rnnkit fp32 inf ms | rnnkit fp32 train ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in bf16_rows:
        def g(key):
            return f"{r[key]:.3f}" if key in r else "-"
        lines.append(f"| {r['cell']} | {r['B']} | {r['H']} | {g('rnnkit_bfloat16_inference_ms')} | "
                     f"{g('torch_autocast_inference_ms')} | {g('ratio_inference')} | {g('rnnkit_bfloat16_training_ms')} | "
                     f"{g('torch_autocast_training_ms')} | {g('ratio_training')} | {g('rnnkit_float32_inference_ms')} | "
                     f"{g('rnnkit_float32_training_ms')} |")
    (args.out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    bad = [r for r in rows if not r["max_abs_err_vs_cpu"] < 1e-3]
    if bad:
        print(f"gpu_bench: {len(bad)} shapes disagree with the CPU backend", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
