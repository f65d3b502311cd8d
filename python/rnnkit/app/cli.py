"""The ``rnnkit`` command.

    rnnkit train      train a model (default: a character-level language model on the Python
                      documentation that ships with CPython; --data FILE or --task adding|copy)
    rnnkit sample     generate text from a trained character model's checkpoint
    rnnkit compare    the recurrent layer vs the recurrent network, and how well each cell learns
                      long-range dependencies (writes report.md with tables and plots)
    rnnkit info       version, build (BLAS, SIMD, threads, CUDA) and a timed forward/backward demo

``python -m rnnkit`` is the same command; with no subcommand it runs ``info``. The console script
``rnnkit`` is this module's ``main``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

import numpy as np

from .._cells import CELL_NAMES


def available_cpus() -> int:
    """CPUs this process may run on: the commands' default thread count (like PyTorch's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ---- info ---------------------------------------------------------------------------------------
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
    gnorm = rnnkit.optim.grad_norm(layer)
    print(f"  |y| = {float(np.linalg.norm(y)):.4f}, |h_n| = {float(np.linalg.norm(h_n)):.4f}, "
          f"|grads| = {gnorm:.4f}")


def cmd_info(args: argparse.Namespace) -> int:
    import rnnkit

    if min(args.shape) < 1 or args.repeats < 1:
        raise SystemExit("rnnkit info: --shape values and --repeats must be positive")
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


# ---- train --------------------------------------------------------------------------------------
def _plot_losses(metrics_path: str, png_path: str, title: str) -> Optional[str]:
    """Loss curves from the metrics CSV; returns why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'rnnkit[plot]'): loss plot skipped"
    import csv

    steps, train, vsteps, val = [], [], [], []
    with open(metrics_path, newline="") as f:
        for row in csv.DictReader(f):
            if row["train_loss"]:
                steps.append(int(row["step"]))
                train.append(float(row["train_loss"]))
            if row["val_loss"]:
                vsteps.append(int(row["step"]))
                val.append(float(row["val_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, train, label="train")
    if val:
        ax.plot(vsteps, val, "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return None


def cmd_train(args: argparse.Namespace) -> int:
    import rnnkit
    from rnnkit import data

    rnnkit.set_num_threads(args.threads if args.threads is not None else available_cpus())
    os.makedirs(args.out, exist_ok=True)
    steps = args.steps
    if steps is None and args.minutes is None:
        steps = 2000
    meta = {"command": " ".join(["rnnkit"] + sys.argv[1:])}
    if args.task is None:
        if args.data is None:
            text, source_name = data.default_corpus(), "pydoc_data.topics (CPython's documentation)"
        else:
            with open(args.data, encoding="utf-8") as f:
                text = f.read()
            source_name = args.data
        vocab = data.CharVocab.from_text(text)
        tokens = vocab.encode(text)
        train_tokens, val_tokens = data.split_train_val(tokens, args.val_fraction)
        train_src = data.TokenStream(train_tokens, args.batch, args.seq_len)
        val_src = data.TokenStream(val_tokens, min(args.batch, max(1, (len(val_tokens) - 1) // args.seq_len)), args.seq_len)
        model = rnnkit.RNNNetwork(vocab_size=len(vocab), embedding_dim=args.embedding, hidden_size=args.hidden,
                                  cell=args.cell, num_layers=args.layers, dropout=args.dropout, seed=args.seed)
        meta.update({"task": "charlm", "vocab": vocab.chars})
        print(f"data: {source_name}: {len(text):,} characters, vocabulary {len(vocab)}; "
              f"train {len(train_tokens):,} / validation {len(val_tokens):,}")
    else:
        T = args.task_length
        train_src = data.TaskStream(args.task, T, args.batch, seed=args.seed)
        val_src = train_src.fixed(4, seed=10_000 + (args.seed or 0))
        if args.task == "adding":
            model = rnnkit.RNNNetwork(input_size=2, hidden_size=args.hidden, output_size=1, cell=args.cell,
                                      num_layers=args.layers, head="last", loss="mse", seed=args.seed,
                                      dropout=args.dropout)
            baseline = data.ADDING_BASELINE_MSE
        else:
            model = rnnkit.RNNNetwork(vocab_size=10, embedding_dim=args.embedding, hidden_size=args.hidden,
                                      cell=args.cell, num_layers=args.layers, seed=args.seed, dropout=args.dropout)
            baseline = data.copy_memory_baseline(T)
        meta.update({"task": args.task, "task_length": T})
        print(f"data: {args.task} task, T={T}, generated on the fly (baseline loss {baseline:.4f})")
    print(f"model: {model!r}, {model.num_parameters:,} parameters; threads {rnnkit.get_num_threads()}")
    opt_cls = rnnkit.optim.OPTIMIZERS[args.optimizer]
    optimizer = opt_cls(model, lr=args.lr)
    metrics = os.path.join(args.out, "metrics.csv")
    ckpt = os.path.join(args.out, "checkpoint.npz")
    trainer = rnnkit.Trainer(model, optimizer, clip_norm=args.clip, eval_every=args.eval_every,
                             patience=args.patience, progress=not args.no_progress, log_every=args.log_every,
                             metrics_path=metrics, checkpoint_path=ckpt, checkpoint_every=args.eval_every,
                             extra_meta=meta)
    if args.resume:
        trainer.resume(ckpt, train_src)
        print(f"resumed from {ckpt} at step {trainer.step}")
    result = trainer.fit(train_src, val_src, steps=steps, minutes=args.minutes)
    steps_per_min = 60.0 * result["steps_this_call"] / max(result["elapsed_s"], 1e-9)
    summary = dict(result, steps_per_minute=steps_per_min, out=args.out)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"done: {result['steps']} steps in {result['elapsed_s']:.1f} s ({steps_per_min:.0f} steps/min); "
          f"last train loss {result['last_train_loss']:.4f}, validation loss {result['final_val_loss']:.4f}"
          f" (best {result['best_val_loss']:.4f})" + (", stopped early" if result["stopped_early"] else ""))
    why = _plot_losses(metrics, os.path.join(args.out, "loss.png"), f"rnnkit train ({meta['task']}, {args.cell})")
    print(f"wrote {ckpt}, {metrics}, {os.path.join(args.out, 'summary.json')}"
          + ("" if why else f", {os.path.join(args.out, 'loss.png')}"))
    if why:
        print(why)
    if meta["task"] == "charlm":
        vocab = data.CharVocab(meta["vocab"])
        prime = "def " if all(c in vocab.index for c in "def ") else vocab.chars[0]
        ids = model.generate(vocab.encode(prime), 200, temperature=0.8, seed=0)
        print("sample:\n" + prime + vocab.decode(ids))
    return 0


# ---- sample ---------------------------------------------------------------------------------------
def cmd_sample(args: argparse.Namespace) -> int:
    from rnnkit import data
    from rnnkit.train.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    if "vocab" not in ckpt.meta:
        raise SystemExit(f"rnnkit sample: {args.checkpoint} is not a character language model (no vocabulary)")
    vocab = data.CharVocab(ckpt.meta["vocab"])
    model = model_from_checkpoint(ckpt)
    model.eval()
    try:
        prime_ids = vocab.encode(args.prime)
    except ValueError as exc:
        raise SystemExit(f"rnnkit sample: --prime: {exc}")
    if len(prime_ids) == 0:
        raise SystemExit("rnnkit sample: --prime: expected at least one character")
    ids = model.generate(prime_ids, args.length, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    sys.stdout.write(args.prime + vocab.decode(ids) + "\n")
    return 0


# ---- compare ---------------------------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace) -> int:
    import rnnkit
    from rnnkit.app.compare import run_compare

    rnnkit.set_num_threads(args.threads if args.threads is not None else available_cpus())
    run_compare(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    return 0


# ---- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rnnkit", description="rnnkit: fast recurrent neural networks.")
    sub = p.add_subparsers(dest="command")

    info = sub.add_parser("info", help="build information and a timed demo")
    info.add_argument("--shape", type=int, nargs=4, metavar=("T", "N", "C", "H"), default=(100, 16, 256, 256),
                      help="demo shape (default: 100 16 256 256)")
    info.add_argument("--repeats", type=int, default=10, help="demo repetitions (default: 10)")
    info.set_defaults(func=cmd_info)

    t = sub.add_parser("train", help="train a model (default: character LM on CPython's documentation)")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--data", help="a UTF-8 text file to train a character language model on")
    src.add_argument("--task", choices=("adding", "copy"), help="a long-range-dependency benchmark instead")
    t.add_argument("--task-length", type=int, default=100, help="T of --task (default 100)")
    t.add_argument("--cell", choices=CELL_NAMES, default="lstm")
    t.add_argument("--hidden", type=int, default=256)
    t.add_argument("--layers", type=int, default=1)
    t.add_argument("--embedding", type=int, default=64, help="embedding size for token inputs")
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--seq-len", type=int, default=100, help="truncated-BPTT chunk length (default 100)")
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--optimizer", choices=("adam", "adamw", "sgd", "rmsprop"), default="adam")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip (default 1.0)")
    t.add_argument("--steps", type=int, help="training steps (default 2000 unless --minutes)")
    t.add_argument("--minutes", type=float, help="time budget")
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--patience", type=int, help="early stopping after this many evaluations without improvement")
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, help="threads (default: the CPUs available to this process)")
    t.add_argument("--out", default="rnnkit-run", help="output folder (default ./rnnkit-run)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate text from a character model checkpoint")
    s.add_argument("--checkpoint", default="rnnkit-run/checkpoint.npz")
    s.add_argument("--length", type=int, default=500)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--prime", default="def ")
    s.add_argument("--seed", type=int)
    s.set_defaults(func=cmd_sample)

    c = sub.add_parser("compare", help="layer vs network timing, and learning long dependencies (report.md)")
    c.add_argument("--out", default="rnnkit-compare")
    c.add_argument("--quick", action="store_true", help="a small version that finishes in under 3 minutes")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, help="threads (default: the CPUs available to this process)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=cmd_compare)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["info"] + argv  # no subcommand: info (options included)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"rnnkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
