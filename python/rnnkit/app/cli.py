"""The ``rnnkit`` command.

    rnnkit train      train a model (default: a character-level language model on the Python
                      documentation that ships with CPython; --data FILE or --task adding|copy)
    rnnkit sample     generate text from a trained character model's checkpoint
    rnnkit compare    the recurrent layer vs the recurrent network, and how well each cell learns
                      long-range dependencies (writes report.md with tables and plots)
    rnnkit info       version, build (BLAS, SIMD, threads, CUDA) and a timed forward/backward demo

``python -m rnnkit`` is the same command; with no subcommand it prints the command list. The
console script ``rnnkit`` is this module's ``main``.

How it fails: a command that cannot run as typed (a bad value, a file that is not what its flag
needs, a run that is finished) prints one ``rnnkit CMD: error: ...`` line naming the flag and
exits 2, before anything is read, built or written; a failure while running (a diverging loss,
a disk error) prints one such line and exits 1. SIGINT and SIGTERM during ``train`` end it after
the current step with a saved checkpoint (exit 130 / 143); ``kill -9`` loses at most the steps
since the last periodic checkpoint (``--checkpoint-every``). A new run never overwrites a folder
holding one; ``--resume`` continues it with the settings stored in its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .._cells import CELL_NAMES, PRECISIONS, REGULARISERS

OPTIMIZER_NAMES = ("adam", "adamw", "sgd", "rmsprop")


class CommandError(Exception):
    """What the command reports in one line: ``status`` 2 when it cannot run as typed, 1 when
    something failed while it ran."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def available_cpus() -> int:
    """CPUs this process may run on: the commands' default thread count (like PyTorch's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ---- option types: each names what it expects; argparse adds the flag -------------------------------
def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def _float_in(low: float, high: float = math.inf, low_open: bool = True, high_open: bool = True) -> Callable[[str], float]:
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    want = (f"a number > {low:g}" if high == math.inf and low_open else
            f"a number >= {low:g}" if high == math.inf else f"a number in {lo}{low:g}, {high:g}{hi}")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if low_open else value >= low)
                and (value < high if high_open else value <= high)):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text}")
        return value
    parse.__name__ = want
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one --help away) and defaults in every help line."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to each option's help unless the help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        shown = getattr(action, "shown_default", action.default)
        if isinstance(action, argparse._StoreTrueAction):
            shown = "off"
        elif isinstance(shown, (list, tuple)):
            shown = " ".join(map(str, shown))
        return f"{text} (default: {shown})"


def _add(group, *flags: str, default: Any = None, shown: Any = None, **kw) -> argparse.Action:
    """An option whose parsed default is None, so a command can tell a typed value from the
    default (a resumed run keeps its own settings); ``default`` is what None means. The help shows
    it with the per-task defaults of TASK_DEFAULTS."""
    action = group.add_argument(*flags, default=None, **kw)
    per_task = [f"{d[action.dest]} for --task {task}" for task, d in TASK_DEFAULTS.items() if action.dest in d]
    action.shown_default = "; ".join([str(default if shown is None else shown)] + per_task)
    action.real_default = default
    return action


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


def cmd_info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import rnnkit

    info = rnnkit.build_info()
    print(f"rnnkit {rnnkit.__version__}")
    print(f"  python     {sys.version.split()[0]}, numpy {np.__version__}")
    print(f"  compiler   {info['compiler']}  (Eigen {info['eigen']}, SIMD: {info['simd']})")
    print(f"  BLAS       {info['blas']}")
    print(f"  CPU ISA    {info['cpu_vector_isa']} (the widest vector instructions this CPU has; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')})")
    kernel_note = rnnkit._runtime.blas_kernel_warning()
    if kernel_note:
        print(f"  warning: {kernel_note}")
    print(f"  bfloat16   precision='bfloat16' GEMMs run on {info['bf16_kernel']}")
    print(f"  threads    {info['num_threads']} (set with RNNKIT_NUM_THREADS or rnnkit.set_num_threads)")
    built = "built" if info["cuda_built"] else "not built"
    usable = "available" if info["cuda_available"] else "not available"
    print(f"  CUDA       {built}, {usable}: {info['cuda_status']}")
    _demo(*args.shape, repeats=args.repeats)
    return 0


# ---- train: settings --------------------------------------------------------------------------------
# What defines a run: stored in its checkpoint; a resumed run keeps them (typing a different value
# is an error). Everything else (how long, how many threads, what is printed) may change on resume.
RUN_SETTINGS = ("data", "task", "task_length", "cell", "hidden", "layers", "embedding", "dropout", "seq_len",
                "batch", "optimizer", "lr", "clip", "eval_every", "val_fraction", "seed", "checkpoint_every",
                "metrics_every", *REGULARISERS)
# The regularisers' flags (--weight-dropout for weight_dropout, ...), settings of the layers' names;
# a run checkpointed before one existed resumes without it.
REGULARISER_HELP = {
    "weight_dropout": "DropConnect on the recurrent weights in training (AWD-LSTM's weight drop)",
    "zoneout": "zoneout of h: each unit keeps its previous value with probability P in training",
    "zoneout_cell": "zoneout of an LSTM's cell state c",
    "input_dropout": "variational dropout of every layer's input (one mask per sequence)",
    "recurrent_dropout": "variational dropout of h_{t-1} in the recurrent product (one mask per sequence)",
}
# Per-task defaults where the character model's would not do. The adding problem at T=100: with
# the character model's LSTM, hidden 256 and lr 2e-3 it ends at the baseline (validation MSE 0.197
# against 0.167); a GRU with hidden 64 and lr 0.01 (the settings of rnnkit compare) is below 0.0025
# by step 500 for every seed tried (0-3) and at 0.0001 after 2000 steps, 16 s of training on 2 cores.
TASK_DEFAULTS = {"adding": {"cell": "gru", "hidden": 64, "lr": 1e-2}}


def _task_of(settings: Dict[str, Any]) -> str:
    return settings["task"] or "charlm"


def _resolve_settings(args: argparse.Namespace, parser: argparse.ArgumentParser,
                      stored: Optional[Dict[str, Any]], out: str) -> Dict[str, Any]:
    """The run's settings: typed values, else (on resume) the stored ones, else the defaults."""
    defaults = {a.dest: a.real_default for a in parser._actions if hasattr(a, "real_default")}
    flag = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    settings: Dict[str, Any] = {}
    # Where and at which GEMM precision to train are not settings of the run: a checkpoint holds
    # float32 host arrays, so a run started on one device or precision resumes on either.
    for name in RUN_SETTINGS + ("steps", "minutes", "patience", "threads", "log_every", "device", "precision"):
        typed = getattr(args, name)
        if stored is not None and name in RUN_SETTINGS:
            if typed is not None and typed != stored.get(name):
                was = f"{flag[name]} {stored[name]}" if stored.get(name) is not None else f"no {flag[name]}"
                raise CommandError(f"{flag[name]}: the run in {out} was started with {was}, got {typed} (a resumed "
                                   "run keeps its settings; start a new run with another --out to change it)")
            settings[name] = stored.get(name)
        elif typed is not None:
            settings[name] = typed
        elif stored is not None and name in ("steps", "minutes", "patience"):
            settings[name] = stored.get(name)
        else:
            settings[name] = defaults.get(name)
    task = _task_of(settings)
    for name, value in TASK_DEFAULTS.get(task, {}).items():
        if getattr(args, name) is None and stored is None:
            settings[name] = value
    if settings["steps"] is None and settings["minutes"] is None:
        settings["steps"] = 2000
    if settings["checkpoint_every"] is None:
        settings["checkpoint_every"] = settings["eval_every"]
    if settings["log_every"] is None:
        settings["log_every"] = settings["eval_every"]
    return settings


def _read_text(path: str) -> str:
    if os.path.isdir(path):
        raise CommandError(f"--data: {path} is a folder, expected a UTF-8 text file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CommandError(f"--data: no such file: {path}") from None
    except OSError as exc:
        raise CommandError(f"--data: cannot read {path}: {exc.strerror or exc}") from None
    if not raw:
        raise CommandError(f"--data: {path} is empty, expected UTF-8 text to train on")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"--data: {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                           f"{exc.start} is not valid UTF-8); expected a UTF-8 text file") from None


def _characters_needed(batch: int, seq_len: int, val_fraction: float) -> int:
    """The shortest text whose training part fills one batch (batch * seq_len + 1 characters) and
    whose validation part one sequence (seq_len + 1), after the --val-fraction split."""
    n = max(1, int((batch * seq_len + 0.5) / (1.0 - val_fraction)) - 3, int((seq_len + 0.5) / val_fraction) - 3)
    while True:
        cut = int(round(n * (1.0 - val_fraction)))
        if cut >= batch * seq_len + 1 and n - cut >= seq_len + 1:
            return n
        n += 1


def _check_out_folder(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise CommandError(f"--out: {out} is a file, expected a folder (new or existing)")


def _read_checkpoint(flag: str, path: str):
    """load_checkpoint, its refusal said as the flag's error."""
    from rnnkit.train.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path)
    except ValueError as exc:
        reason = str(exc).split("cannot be loaded: ", 1)[-1]
        raise CommandError(f"{flag}: {path} cannot be loaded: it is not an rnnkit checkpoint ({reason})") from None


def _load_resume_checkpoint(out: str):
    path = os.path.join(out, "checkpoint.npz")
    if not os.path.isfile(path):
        raise CommandError(f"--resume: no checkpoint to resume in {out} (expected {path}); "
                           "start the run without --resume")
    ckpt = _read_checkpoint("--resume", path)
    stored = ckpt.meta.get("settings")
    if not isinstance(stored, dict):
        raise CommandError(f"--resume: {path} holds no run settings (written by the Python API or an older "
                           "rnnkit train), so rnnkit train cannot resume it")
    return ckpt, stored


def _finished_reason(ckpt, settings: Dict[str, Any], patience_typed: bool) -> Optional[str]:
    info = ckpt.meta.get("trainer", {})
    step = int(info.get("step", ckpt.step))
    if settings["steps"] is not None and step >= settings["steps"]:
        return (f"it has trained {step} of --steps {settings['steps']}; to train further, resume with a "
                f"larger --steps, e.g. --steps {step + max(step, 1)}")
    if settings["minutes"] is not None and float(info.get("elapsed_s", 0.0)) >= 60.0 * settings["minutes"]:
        return (f"it has used its --minutes {settings['minutes']:g} ({float(info['elapsed_s']):.0f} s of training); "
                "to train further, resume with a larger --minutes")
    if info.get("stopped_early") and not patience_typed:
        return (f"it stopped early at step {step} (no better validation loss in --patience "
                f"{settings['patience']} evaluations); to train further, resume with a larger --patience")
    return None


def _build_run(settings: Dict[str, Any]):
    """Data sources and model of a run; user-facing errors name the flags."""
    import rnnkit
    from rnnkit import data

    task = _task_of(settings)
    B, S = settings["batch"], settings["seq_len"]
    model_kw = dict(hidden_size=settings["hidden"], cell=settings["cell"], num_layers=settings["layers"],
                    dropout=settings["dropout"], seed=settings["seed"], precision=settings["precision"],
                    **{key: settings.get(key) or 0.0 for key in REGULARISERS})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if task == "charlm":
            if settings["data"] is None:
                text, source = data.default_corpus(), "pydoc_data.topics (CPython's documentation)"
            else:
                text, source = _read_text(settings["data"]), settings["data"]
            need = _characters_needed(B, S, settings["val_fraction"])
            if len(text) < need:
                raise CommandError(
                    f"--data: {source} has {len(text):,} characters, too short for --batch {B} and --seq-len {S} "
                    f"with --val-fraction {settings['val_fraction']:g} (needs at least {need:,}); use a smaller "
                    "--batch or --seq-len, another --val-fraction, or a longer file")
            vocab = data.CharVocab.from_text(text)
            tokens = vocab.encode(text)
            train_tokens, val_tokens = data.split_train_val(tokens, settings["val_fraction"])
            train_src = data.TokenStream(train_tokens, B, S)
            val_src = data.TokenStream(val_tokens, min(B, max(1, (len(val_tokens) - 1) // S)), S)
            model = rnnkit.RNNNetwork(vocab_size=len(vocab), embedding_dim=settings["embedding"], **model_kw)
            meta = {"task": "charlm", "vocab": vocab.chars}
            described = (f"data: {source}: {len(text):,} characters, vocabulary {len(vocab)}; "
                         f"train {len(train_tokens):,} / validation {len(val_tokens):,}")
            baseline = None
        else:
            T = settings["task_length"]
            train_src = data.TaskStream(task, T, B, seed=settings["seed"])
            val_src = train_src.fixed(4, seed=10_000 + (settings["seed"] or 0))
            if task == "adding":
                model = rnnkit.RNNNetwork(input_size=2, output_size=1, head="last", loss="mse", **model_kw)
                baseline = data.ADDING_BASELINE_MSE
            else:
                model = rnnkit.RNNNetwork(vocab_size=10, embedding_dim=settings["embedding"], **model_kw)
                baseline = data.copy_memory_baseline(T)
            meta = {"task": task, "task_length": T}
            unit = "MSE" if task == "adding" else "nats/symbol"
            described = f"data: {task} task, T={T}, generated on the fly (baseline loss {baseline:.4f} {unit})"
    for w in caught:
        print(f"rnnkit train: warning: {w.message}", file=sys.stderr)
    return train_src, val_src, model, meta, described, baseline


def _plot_losses(metrics_path: str, png_path: str, title: str, ylabel: str) -> Optional[str]:
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
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return None


class _StopOnSignal:
    """SIGINT/SIGTERM ask the trainer to stop after the current step (a second one stops at once)."""

    def __init__(self, trainer) -> None:
        self.trainer, self.signum, self._old = trainer, None, {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        self.trainer.request_stop()

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def cmd_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import rnnkit
    from rnnkit.train.checkpoint import atomic_write

    out = args.out
    _check_out_folder(out)
    if args.data is not None:
        args.data = os.path.abspath(args.data)  # stored so that a resume from elsewhere finds it
    ckpt, stored = _load_resume_checkpoint(out) if args.resume else (None, None)
    if not args.resume and os.path.exists(os.path.join(out, "checkpoint.npz")):
        raise CommandError(f"--out: {out} already holds a run (checkpoint.npz); continue it with --resume, or "
                           "start a new one in another --out (or remove the folder first)")
    settings = _resolve_settings(args, parser, stored, out)
    if ckpt is not None:
        why = _finished_reason(ckpt, settings, patience_typed=args.patience is not None)
        if why:
            raise CommandError(f"--resume: the run in {out} is finished: {why}")
    if settings["device"] == "cuda" and not rnnkit.cuda.is_available():
        raise CommandError(f"--device: CUDA is unavailable here: {rnnkit.cuda.status()}")
    rnnkit.set_num_threads(settings["threads"] or available_cpus())
    train_src, val_src, model, meta, described, baseline = _build_run(settings)
    model.to(settings["device"])
    meta["settings"] = settings
    meta["command"] = " ".join(["rnnkit"] + sys.argv[1:])
    print(described)
    print(f"model: {model!r}, {model.num_parameters:,} parameters; threads {rnnkit.get_num_threads()}"
          + ("" if settings["device"] == "cpu" else f"; device {settings['device']} ({rnnkit.cuda.status()})"))
    optimizer = rnnkit.optim.OPTIMIZERS[settings["optimizer"]](model, lr=settings["lr"])
    os.makedirs(out, exist_ok=True)  # only now: a command that fails its checks leaves nothing behind
    metrics = os.path.join(out, "metrics.csv")
    ckpt_path = os.path.join(out, "checkpoint.npz")
    trainer = rnnkit.Trainer(model, optimizer, clip_norm=settings["clip"], eval_every=settings["eval_every"],
                             patience=settings["patience"], progress=not args.no_progress,
                             log_every=settings["metrics_every"], print_every=settings["log_every"],
                             metrics_path=metrics, checkpoint_path=ckpt_path,
                             checkpoint_every=settings["checkpoint_every"], extra_meta=meta)
    if ckpt is not None:
        try:
            trainer.resume(ckpt, train_src)
        except (ValueError, KeyError) as exc:
            raise CommandError(f"--resume: {ckpt_path} does not match this run: {exc}") from None
        print(f"resumed from {ckpt_path} at step {trainer.step} ({trainer.elapsed_before:.1f} s of training so far)")
    budget = None if settings["minutes"] is None else settings["minutes"] - trainer.elapsed_before / 60.0
    with _StopOnSignal(trainer) as stop:
        try:
            result = trainer.fit(train_src, val_src, steps=settings["steps"], minutes=budget)
        except FloatingPointError as exc:
            raise CommandError(f"{exc} (try a smaller --lr or --clip)", status=1) from None
    if result["interrupted"]:
        print(f"rnnkit train: interrupted at step {result['steps']}; resume with: "
              f"rnnkit train --resume --out {out}", file=sys.stderr)
        return 128 + (stop.signum or signal.SIGINT)
    this_call = result["steps_this_call"]
    steps_per_min = 60.0 * this_call / max(result["elapsed_s"], 1e-9)
    summary = dict(result, steps_per_minute=steps_per_min, out=out)
    text = json.dumps(summary, indent=2).encode("utf-8")
    atomic_write(os.path.join(out, "summary.json"), lambda f: f.write(text))
    resumed = f" ({this_call} in this run, {result['elapsed_s']:.1f} s)" if ckpt is not None else ""
    last = result["last_train_loss"]
    print(f"done: {result['steps']} steps in {result['total_elapsed_s']:.1f} s of training{resumed}, "
          f"{steps_per_min:.0f} steps/min; last train loss {last:.4f}, validation loss {result['final_val_loss']:.4f}"
          f" (best {result['best_val_loss']:.4f})" + (", stopped early" if result["stopped_early"] else "")
          + ("" if baseline is None else f"; baseline {baseline:.4f}"))
    ylabel = {"charlm": "cross-entropy (nats/char)", "adding": "MSE", "copy": "cross-entropy (nats/symbol)"}[meta["task"]]
    why = _plot_losses(metrics, os.path.join(out, "loss.png"), f"rnnkit train ({meta['task']}, {settings['cell']})",
                       ylabel)
    print(f"wrote {ckpt_path}, {metrics}, {os.path.join(out, 'summary.json')}"
          + ("" if why else f", {os.path.join(out, 'loss.png')}"))
    if why:
        print(why)
    if meta["task"] == "charlm":
        from rnnkit import data

        vocab = data.CharVocab(meta["vocab"])
        prime = "def " if all(c in vocab.index for c in "def ") else vocab.chars[0]
        ids = model.generate(vocab.encode(prime), 200, temperature=0.8, seed=0)
        print("sample:\n" + prime + vocab.decode(ids))
    return 0


# ---- sample ---------------------------------------------------------------------------------------
def cmd_sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from rnnkit import data
    from rnnkit.train.checkpoint import model_from_checkpoint

    path = args.checkpoint
    if args.prime == "":
        raise CommandError("--prime: expected at least one character, got an empty string")
    if os.path.isdir(path):
        raise CommandError(f"--checkpoint: {path} is a folder, expected a checkpoint file "
                           f"(e.g. {os.path.join(path, 'checkpoint.npz')})")
    if not os.path.exists(path):
        raise CommandError(f"--checkpoint: no such file: {path} (train a model first: rnnkit train)")
    ckpt = _read_checkpoint("--checkpoint", path)
    if "vocab" not in ckpt.meta:
        raise CommandError(f"--checkpoint: {path} holds a {ckpt.meta.get('task', 'non-text')} model, expected a "
                           "character language model (trained on text)")
    vocab = data.CharVocab(ckpt.meta["vocab"])
    unknown = sorted({c for c in args.prime if c not in vocab.index})
    if unknown:
        raise CommandError(f"--prime: expected characters of the model's vocabulary, got {unknown[:10]!r}")
    model = model_from_checkpoint(ckpt)
    model.eval()
    ids = model.generate(vocab.encode(args.prime), args.length, temperature=args.temperature, top_k=args.top_k,
                         seed=args.seed)
    sys.stdout.write(args.prime + vocab.decode(ids) + "\n")
    return 0


# ---- compare ---------------------------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import rnnkit
    from rnnkit.app.compare import run_compare

    _check_out_folder(args.out)
    rnnkit.set_num_threads(args.threads if args.threads is not None else available_cpus())
    run_compare(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    return 0


# ---- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    fmt = _HelpFormatter
    p = _Parser(prog="rnnkit", description="rnnkit: fast recurrent neural networks.", formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"rnnkit {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=_Parser)

    info = sub.add_parser("info", help="build information and a timed demo", formatter_class=fmt,
                          description="Version, build (BLAS, SIMD, threads, CUDA) and a timed demo.")
    info.add_argument("--shape", type=_int_at_least(1), nargs=4, metavar=("T", "N", "C", "H"), default=(100, 16, 256, 256),
                      help="demo shape: steps, batch, input and hidden size")
    info.add_argument("--repeats", type=_int_at_least(1), default=10, help="demo repetitions")
    info.set_defaults(func=cmd_info, parser=info)

    t = sub.add_parser("train", help="train a model (default: character LM on CPython's documentation)",
                       formatter_class=fmt, description=(
                           "Train a recurrent network and save it to --out (checkpoint.npz, metrics.csv, "
                           "summary.json, loss.png). Ctrl-C or SIGTERM stops after the current step with a "
                           "saved checkpoint; --resume continues from it with the run's own settings."))
    src = t.add_mutually_exclusive_group()
    _add(src, "--data", metavar="FILE", shown="CPython's documentation text, pydoc_data.topics",
         help="a UTF-8 text file to train a character language model on")
    _add(src, "--task", choices=("adding", "copy"), shown="none, a character language model",
         help="a long-range-dependency task instead: the adding problem (MSE) or copy memory")
    _add(t, "--task-length", type=_int_at_least(1), default=100, metavar="T", help="sequence length T of --task")
    _add(t, "--cell", choices=CELL_NAMES, default="lstm", help="recurrent cell")
    _add(t, "--hidden", type=_int_at_least(1), default=256, metavar="H", help="hidden size")
    _add(t, "--layers", type=_int_at_least(1), default=1, metavar="L", help="stacked recurrent layers")
    _add(t, "--embedding", type=_int_at_least(1), default=64, metavar="E", help="embedding size for token inputs")
    _add(t, "--dropout", type=_float_in(0.0, 1.0, low_open=False), default=0.0, metavar="P",
         help="dropout between stacked layers (needs --layers >= 2)")
    for key in REGULARISERS:
        _add(t, "--" + key.replace("_", "-"), type=_float_in(0.0, 1.0, low_open=False), default=0.0, metavar="P",
             help=REGULARISER_HELP[key])
    _add(t, "--seq-len", type=_int_at_least(1), default=100, metavar="K",
         help="truncated-BPTT chunk length of the character model")
    _add(t, "--batch", type=_int_at_least(1), default=32, metavar="N", help="sequences per step")
    _add(t, "--optimizer", choices=OPTIMIZER_NAMES, default="adam", help="optimizer")
    _add(t, "--lr", type=_float_in(0.0), default=2e-3, help="learning rate")
    _add(t, "--clip", type=_float_in(0.0), default=1.0, metavar="NORM", help="global gradient-norm clip")
    _add(t, "--steps", type=_int_at_least(1), shown="2000 unless --minutes",
         help="training steps of the whole run (a resumed run counts its earlier steps)")
    _add(t, "--minutes", type=_float_in(0.0), shown="no limit",
         help="training time of the whole run, in minutes (with --steps: whichever ends first)")
    _add(t, "--eval-every", type=_int_at_least(1), default=250, metavar="STEPS",
         help="steps between evaluations on the validation data")
    _add(t, "--patience", type=_int_at_least(1), metavar="EVALS", shown="no early stopping",
         help="stop after this many evaluations without a better validation loss")
    _add(t, "--val-fraction", type=_float_in(0.0, 1.0), default=0.1, metavar="F",
         help="share of the text held out for validation")
    _add(t, "--seed", type=_int_at_least(0), default=0, help="seed of the weights, data order and dropout")
    _add(t, "--checkpoint-every", type=_int_at_least(1), metavar="STEPS", shown="--eval-every (250)",
         help="steps between checkpoint saves (a kill -9 loses at most these)")
    _add(t, "--metrics-every", type=_int_at_least(1), default=50, metavar="STEPS",
         help="steps between metrics.csv rows (mean loss, gradient norm, tokens/s)")
    _add(t, "--log-every", type=_int_at_least(1), metavar="STEPS", shown="--eval-every (250)",
         help="steps between printed log lines when there is no progress bar")
    _add(t, "--threads", type=_int_at_least(1), metavar="N", shown="the CPUs available to this process", help="compute threads")
    _add(t, "--device", choices=("cpu", "cuda"), default="cpu",
         help="where the model trains: the CPU, or the GPU through rnnkit's CUDA backend (a RNNKIT_CUDA=1 build); "
              "a run resumes on either")
    _add(t, "--precision", choices=PRECISIONS, default="float32",
         help="the GEMMs' precision: float32, or bfloat16 operands with float32 sums (parameters, gradients "
              "and optimizer state stay float32), on either device; a run resumes at either")
    t.add_argument("--out", default="rnnkit-run", metavar="DIR", help="output folder")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the settings it was started with")
    t.add_argument("--no-progress", action="store_true", help="no progress bar: log lines instead (--log-every)")
    t.set_defaults(func=cmd_train, parser=t)

    s = sub.add_parser("sample", help="generate text from a character model checkpoint", formatter_class=fmt,
                       description="Generate text from a character language model trained by rnnkit train.")
    s.add_argument("--checkpoint", default="rnnkit-run/checkpoint.npz", metavar="FILE",
                   help="checkpoint of a character model (what rnnkit train wrote)")
    s.add_argument("--length", type=_int_at_least(0), default=500, help="characters to generate after the prime")
    s.add_argument("--temperature", type=_float_in(0.0, low_open=False), default=0.8,
                   help="softmax temperature (0: always the most likely character)")
    s.add_argument("--top-k", type=_int_at_least(0), default=0, metavar="K",
                   help="sample among the K most likely characters (0: all)")
    s.add_argument("--prime", default="def ", metavar="TEXT", help="text the model continues")
    s.add_argument("--seed", type=_int_at_least(0), help="sampling seed (default: a fresh one each run)")
    s.set_defaults(func=cmd_sample, parser=s)

    c = sub.add_parser("compare", help="layer vs network timing, and learning long dependencies (report.md)",
                       formatter_class=fmt, description=(
                           "Time the recurrent layer against the whole network, and train every cell on the "
                           "adding problem with and without clipping; writes report.md, results.json and plots."))
    c.add_argument("--out", default="rnnkit-compare", metavar="DIR", help="output folder")
    c.add_argument("--quick", action="store_true", help="a small version that finishes in under 3 minutes")
    c.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of every run")
    c.add_argument("--threads", type=_int_at_least(1), metavar="N", help="compute threads (default: the CPUs available to this process)")
    c.add_argument("--no-progress", action="store_true", help="no progress output")
    c.set_defaults(func=cmd_compare, parser=c)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, args.parser) or 0)
    except CommandError as exc:
        print(f"rnnkit {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"rnnkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        # The library's own checks (ValueError, naming the argument) and the system's (disk full, ...)
        # while the command ran: one line, no traceback.
        print(f"rnnkit {args.command}: error: {exc}", file=sys.stderr)
        return 1
