"""``rnnkit compare``: the comparison the project exists for, written to ``report.md`` with plots.

(a) **Recurrent layer vs recurrent network.** Time per training step and per forward of an LSTM
    layer alone, and of the whole network around it (embedding + layer + output layer + softmax +
    loss), for growing output (vocabulary) sizes; the share of the time spent in the recurrence.

(b) **Learning long-range dependencies.** Elman-tanh, Elman-ReLU with identity initialisation
    (IRNN), LSTM, GRU and the LayerNorm variants on the adding problem at T = 50, 100, 200, with and
    without gradient-norm clipping: final MSE, steps to solve (MSE < 0.01, where always answering
    1 scores ~0.167), the gradient norm during training (exploding without clipping, vanishing for
    tanh), and after training the gradient reaching each input step (how far back a signal gets).

``--quick`` runs a reduced version (T = 50, fewer steps, small vocabularies) in under 3 minutes.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from ..train.data import ADDING_BASELINE_MSE
from .timing import interleaved_medians

# The thresholds every sentence of the report is measured against (stated in the report).
SOLVED_MSE = 0.01           # the adding problem counts as solved below this validation MSE
CLIP_NORM = 1.0             # the clipped runs' global gradient-norm limit
SPIKE_FACTOR = 10.0         # a gradient spike: a step's norm above this many times its run's median
VANISHED_RATIO = 1e-3       # vanished: the gradient at the first input step below this share of the last's
ADDING_BASELINE = ADDING_BASELINE_MSE  # always answering 1
MSE_PLOT_TOP = 2.0          # the adding plots' MSE axis ends here (worse runs are drawn at the edge)

# name -> (network cell, extra network options, description, short label, plot colour, line style,
# marker). Distinct hues, and markers of distinct shapes so that curves lying on each other (two
# cells stuck at the baseline) both stay visible.
CELLS = {
    "rnn_tanh": ("rnn_tanh", {}, "Elman tanh, default init", "Elman tanh", "black", "-", "o"),
    "rnn_relu_identity": ("rnn_relu", {"init": "identity"}, "Elman ReLU, identity init (IRNN)", "IRNN",
                          "tab:orange", "-", "s"),
    "lstm": ("lstm", {"forget_bias": 1.0}, "LSTM, forget bias 1", "LSTM", "tab:blue", "-", "^"),
    "gru": ("gru", {}, "GRU", "GRU", "tab:red", "-", "v"),
    "ln_lstm": ("ln_lstm", {"forget_bias": 1.0}, "LayerNorm LSTM, forget bias 1", "LN-LSTM", "tab:green", "--", "D"),
    "ln_gru": ("ln_gru", {}, "LayerNorm GRU", "LN-GRU", "tab:purple", "--", "x"),
    # Two layers, as Li et al. (2018) run IndRNN on the adding problem: one layer of independent
    # units stays at the baseline at T=200 (final MSE 0.197, seed 0, lr 0.01 and 2e-3); two solve it
    # by step 550 (seeds 0-2).
    "indrnn": ("indrnn", {"recurrent_max_abs": 1.0, "num_layers": 2}, "IndRNN (ReLU), 2 layers, u kept in [-1, 1]",
               "IndRNN", "tab:brown", ":", "P"),
    "mingru": ("mingru", {}, "minGRU", "minGRU", "tab:pink", ":", "*"),
    "minlstm": ("minlstm", {}, "minLSTM", "minLSTM", "tab:olive", ":", "h"),
}


def _settings(quick: bool) -> Dict[str, Any]:
    if quick:
        return {"lengths": [50], "steps": 600, "eval_every": 50, "hidden": 32, "batch": 32,
                "vocab_sizes": [64, 1024], "timing_repeats": 3, "timing_shape": (50, 16, 64, 128)}
    return {"lengths": [50, 100, 200], "steps": 1500, "eval_every": 50, "hidden": 64, "batch": 64,
            "vocab_sizes": [64, 1024, 8192, 32768], "timing_repeats": 7, "timing_shape": (100, 32, 64, 256)}


# ---- (a) layer vs network ------------------------------------------------------------------------
def layer_vs_network(vocab_sizes: List[int], shape, repeats: int, seed: int) -> List[Dict[str, float]]:
    import rnnkit

    T, N, E, H = shape
    rng = np.random.default_rng(seed)
    rows = []
    layer = rnnkit.LSTM(E, H, seed=seed)
    x = rng.standard_normal((T, N, E)).astype(np.float32)
    dy = rng.standard_normal((T, N, H)).astype(np.float32)

    def layer_train():
        layer.train()
        layer(x)
        layer.backward(dy, compute_dx=True)

    def layer_forward():
        layer.eval()
        layer(x)

    for K in vocab_sizes:
        net = rnnkit.RNNNetwork(vocab_size=K, embedding_dim=E, hidden_size=H, cell="lstm", seed=seed)
        tokens = rng.integers(0, K, (T, N))
        targets = rng.integers(0, K, (T, N))

        def net_train():
            net.train()
            net.train_step(tokens, targets)

        def net_forward():
            net.eval()
            net.forward(tokens)

        t = interleaved_medians({"layer_train": layer_train, "net_train": net_train,
                                  "layer_fwd": layer_forward, "net_fwd": net_forward}, repeats)
        rows.append({"vocab": K, "layer_train_ms": 1e3 * t["layer_train"], "network_train_ms": 1e3 * t["net_train"],
                     "layer_forward_ms": 1e3 * t["layer_fwd"], "network_forward_ms": 1e3 * t["net_fwd"],
                     "recurrence_share_train": t["layer_train"] / t["net_train"],
                     "recurrence_share_forward": t["layer_fwd"] / t["net_fwd"],
                     "network_train_tokens_per_s": T * N / t["net_train"],
                     "layer_train_tokens_per_s": T * N / t["layer_train"]})
    return rows


# ---- (b) the adding problem -------------------------------------------------------------------------
def adding_run(cell_key: str, T: int, clip: bool, s: Dict[str, Any], seed: int) -> Dict[str, Any]:
    import rnnkit
    from rnnkit import data

    cell, extra = CELLS[cell_key][:2]
    model = rnnkit.RNNNetwork(input_size=2, hidden_size=s["hidden"], output_size=1, cell=cell, head="last",
                              loss="mse", seed=seed, **extra)
    opt = rnnkit.optim.Adam(model, lr=1e-2)
    train = data.TaskStream("adding", T, s["batch"], seed=seed)
    val = train.fixed(2, seed=seed + 1000)
    trainer = rnnkit.Trainer(model, opt, clip_norm=CLIP_NORM if clip else None, eval_every=s["eval_every"],
                             progress=False, restore_best=False)
    solved_at: Optional[int] = None
    diverged_at: Optional[int] = None
    t0 = time.perf_counter()
    # Train in slices so a solved run can stop a little after it solved.
    while trainer.step < s["steps"]:
        stop = min(trainer.step + s["eval_every"], s["steps"])
        try:
            trainer.fit(train, val, steps=stop)
        except FloatingPointError:  # exploding gradients: the loss overflowed
            diverged_at = trainer.step
            break
        last = trainer.evals[-1]["val_loss"]
        if not math.isfinite(last):
            diverged_at = trainer.step
            break
        if solved_at is None and last < SOLVED_MSE:
            solved_at = trainer.step
        if solved_at is not None and trainer.step >= solved_at + 4 * s["eval_every"]:
            break
    elapsed = time.perf_counter() - t0
    # After training: the gradient of the loss reaching each input step, ||dL/dx_t||, from the
    # network's own backward (its gradients are not kept: the run is over).
    batch = next(val.batches())
    model.train()
    with np.errstate(all="ignore"):
        model.forward_loss(batch.inputs, batch.targets)
        dx, _ = model.backward(compute_dx=True)
    model.zero_grad()
    with np.errstate(all="ignore"):  # a diverged run's gradients overflow: reported as inf/nan
        grad_by_step = np.linalg.norm(dx.astype(np.float64).reshape(T, -1), axis=1).tolist()
    final = float("nan") if diverged_at is not None else trainer.evals[-1]["val_loss"]
    return {"cell": cell_key, "T": T, "clip": clip, "final_mse": final, "solved_at": solved_at,
            "diverged_at": diverged_at,
            "steps": trainer.step, "seconds": elapsed,
            "evals": [(e["step"], e["val_loss"]) for e in trainer.evals],
            "grad_norms": [float(v) for v in trainer.grad_norms], "grad_by_step": grad_by_step}


# ---- findings: every sentence of the report's prose, computed from the measured runs -----------------
def _label(key: str) -> str:
    return CELLS[key][3]


def _names(items: List[str]) -> str:
    return ", ".join(items) if items else "none"


def _run(runs: List[Dict[str, Any]], T: int, clip: bool, key: str) -> Optional[Dict[str, Any]]:
    """The run of one cell at one T with or without clipping (None when the grid lacks it)."""
    return next((r for r in runs if r["T"] == T and r["clip"] == clip and r["cell"] == key), None)


def clipped_steps(run: Dict[str, Any]) -> int:
    """Steps whose gradient norm (before clipping) exceeded CLIP_NORM: where clipping acted."""
    return sum(g > CLIP_NORM for g in run["grad_norms"])


def spike_count(grad_norms: List[float]) -> int:
    """Steps whose gradient norm exceeds SPIKE_FACTOR times the run's median (finite steps only)."""
    finite = [g for g in grad_norms if math.isfinite(g)]
    if not finite:
        return 0
    median = float(np.median(finite))
    return sum(g > SPIKE_FACTOR * median for g in finite)


def largest_at(grad_norms: List[float]) -> int:
    """The index of a run's largest finite gradient norm (-1 when none is finite)."""
    g = np.asarray(grad_norms, dtype=np.float64)
    finite = np.isfinite(g)
    return int(np.argmax(np.where(finite, g, -np.inf))) if finite.any() else -1


def first_to_last_ratio(grad_by_step: List[float]) -> float:
    """||dL/dx_0|| / ||dL/dx_{T-1}||: how much of the gradient reaches the sequence's start."""
    first, last = grad_by_step[0], grad_by_step[-1]
    return first / last if last > 0 and math.isfinite(first) and math.isfinite(last) else float("nan")


def findings(timing: List[Dict[str, float]], runs: List[Dict[str, Any]], lengths: List[int],
             plotted_T: int) -> Dict[str, List[str]]:
    """The report's sentences by section, each stated with its measured numbers and threshold."""
    layer = []
    for r in timing:
        layer.append(f"Vocabulary {r['vocab']}: the recurrent layer is {100 * r['recurrence_share_train']:.0f}% of a "
                     f"training step ({r['layer_train_ms']:.2f} of {r['network_train_ms']:.2f} ms).")
    over = [r["vocab"] for r in timing if r["recurrence_share_train"] < 0.5]
    if over:
        layer.append(f"The output layer, softmax and loss take more than half of the training step from vocabulary "
                     f"{over[0]} on.")
    else:
        layer.append("The recurrent layer is more than half of the training step at every measured vocabulary.")

    outcome, clipping, spikes = [], [], []
    for T in lengths:
        for clip in (False, True):
            group = [r for r in runs if r["T"] == T and r["clip"] == clip]
            solved = [f"{_label(r['cell'])} (step {r['solved_at']})" for r in group if r["solved_at"] is not None]
            unsolved = [f"{_label(r['cell'])} ({_fmt(r['final_mse'], '.3g')})" for r in group
                        if r["solved_at"] is None and r["diverged_at"] is None]
            diverged = [f"{_label(r['cell'])} (step {r['diverged_at']})" for r in group if r["diverged_at"] is not None]
            outcome.append(f"T={T}, {'clipping ' + format(CLIP_NORM, 'g') if clip else 'no clipping'}: solved "
                           f"(validation MSE < {SOLVED_MSE:g}) by {_names(solved)}; not solved (final MSE) by "
                           f"{_names(unsolved)}; diverged by {_names(diverged)}.")
        acted, never = [], []
        for key in CELLS:
            clipped = _run(runs, T, True, key)
            if clipped is None:
                continue
            n = clipped_steps(clipped)
            (acted.append(f"{_label(key)} ({n} of {len(clipped['grad_norms'])} steps)") if n else
             never.append(_label(key)))
        clipping.append(f"T={T}: clipping at {CLIP_NORM:g} acted (gradient norm > {CLIP_NORM:g}) on {_names(acted)}"
                        + (f"; never on {_names(never)}, whose clipped and unclipped runs are therefore the same run"
                           if never else "") + ".")
        at_start = [_label(key) for key in CELLS
                    if all(largest_at(r["grad_norms"]) == 0 for r in runs if r["T"] == T and r["cell"] == key)]
        clipping.append(f"T={T}: the largest gradient norm (before clipping) is at step 1, where a clipped run is "
                        f"still the same as its unclipped twin, for {_names(at_start)}.")
        with_spikes, without = [], []
        for r in runs:
            if r["T"] == T and not r["clip"]:
                n = spike_count(r["grad_norms"])
                (with_spikes.append(f"{_label(r['cell'])} ({n})") if n else without.append(_label(r["cell"])))
        spikes.append(f"T={T}, no clipping: gradient spikes (steps whose norm exceeds {SPIKE_FACTOR:g}x the run's "
                      f"median) in {_names(with_spikes)}" + (f"; none in {_names(without)}" if without else "") + ".")
    ratios, vanished, reached = [], [], []
    for r in runs:
        if r["T"] == plotted_T and r["clip"]:
            q = first_to_last_ratio(r["grad_by_step"])
            ratios.append(f"{_label(r['cell'])} {_fmt(q, '.2g')}")
            (vanished if math.isfinite(q) and q < VANISHED_RATIO else reached).append(_label(r["cell"]))
    reach = [f"After training (T={plotted_T}, clipped runs), the gradient reaching the first input step relative to "
             f"the last: {_names(ratios)}; below {VANISHED_RATIO:g} (vanished before the start) for {_names(vanished)}; "
             f"at least {VANISHED_RATIO:g} (or not measurable) for {_names(reached)}."]
    return {"layer": layer, "outcome": outcome, "clipping": clipping, "spikes": spikes, "reach": reach}


# ---- report -------------------------------------------------------------------------------------------
def _line(ax, key: str, x, y, markers: bool = False, **kw) -> None:
    _, _, _, label, colour, style, marker = CELLS[key]
    if markers:
        # Earlier cells draw wider and hollow: a later curve on top of one leaves it showing.
        order = list(CELLS).index(key)
        kw.update(marker=marker, ms=7 - 0.6 * order, mfc="none", lw=2.6 - 0.3 * order)
    ax.plot(x, y, color=colour, ls=style, label=label, **kw)


def _legend_outside(ax) -> None:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _plots(out: str, timing: List[Dict[str, float]], runs: List[Dict[str, Any]], lengths: List[int],
           plotted_T: int) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    panels = (False, True)  # every two-panel figure: no clipping left, clipping right

    fig, ax = plt.subplots(figsize=(7, 4))
    vocab = [str(r["vocab"]) for r in timing]
    rec = [r["layer_train_ms"] for r in timing]
    rest = [r["network_train_ms"] - r["layer_train_ms"] for r in timing]
    ax.bar(vocab, rec, label="recurrent layer (forward + BPTT)")
    ax.bar(vocab, rest, bottom=rec, label="embedding + output layer + softmax + loss")
    for i, r in enumerate(timing):
        ax.annotate(f"{100 * r['recurrence_share_train']:.0f}% recurrent", (i, r["network_train_ms"]),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_ylim(0, 1.35 * max(r["network_train_ms"] for r in timing))  # room for the legend above the bars
    ax.set_xlabel("vocabulary / output size")
    ax.set_ylabel("ms per training step")
    ax.set_title("Where a training step of the network goes")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    files.append("layer_vs_network.png")
    fig.savefig(os.path.join(out, files[-1]), dpi=110)
    plt.close(fig)

    for T in lengths:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
        lowest = ADDING_BASELINE
        for ax, clip in zip(axes, panels):
            off_scale = []
            for key in CELLS:
                r = _run(runs, T, clip, key)
                if r is not None and r["evals"]:
                    steps, vals = zip(*r["evals"])
                    vals = np.asarray(vals, dtype=np.float64)
                    # A blown-up run is drawn at the top edge (its value in the title), so that it does
                    # not squash the curves that matter into the bottom of a log axis.
                    worst = np.nanmax(np.where(np.isfinite(vals), vals, np.nan)) if np.isfinite(vals).any() else np.inf
                    if worst > MSE_PLOT_TOP:
                        off_scale.append(f"{_label(key)} up to {worst:.2g}")
                    shown = np.clip(np.nan_to_num(vals, nan=MSE_PLOT_TOP, posinf=MSE_PLOT_TOP), 1e-6, MSE_PLOT_TOP)
                    lowest = min(lowest, float(shown.min()))
                    _line(ax, key, steps, shown, markers=True, alpha=0.85)
            ax.axhline(ADDING_BASELINE, color="gray", ls="--", lw=1, label=f"baseline: always 1 (MSE {ADDING_BASELINE:.3f})")
            ax.axhline(SOLVED_MSE, color="green", ls=":", lw=1, label=f"solved (MSE {SOLVED_MSE:g})")
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_title(f"adding problem T={T}, {'clip ' + format(CLIP_NORM, 'g') if clip else 'no clipping'}"
                         + (f"\n({', '.join(off_scale)}: drawn at the top)" if off_scale else ""), fontsize=10)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("validation MSE")
        axes[0].set_ylim(lowest / 1.5, MSE_PLOT_TOP * 1.5)  # shared: both panels' curves whole
        _legend_outside(axes[1])
        fig.tight_layout()
        files.append(f"adding_T{T}.png")
        fig.savefig(os.path.join(out, files[-1]), dpi=110)
        plt.close(fig)

    T = plotted_T
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, clip in zip(axes, panels):
        for key in CELLS:
            r = _run(runs, T, clip, key)
            if r is not None:
                _line(ax, key, np.arange(1, len(r["grad_norms"]) + 1), np.maximum(r["grad_norms"], 1e-12),
                      lw=0.8, alpha=0.8)
        if clip:
            ax.axhline(CLIP_NORM, color="gray", ls="--", lw=1, label=f"clip limit ({CLIP_NORM:g})")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"gradient norm before clipping, T={T}, {'clip ' + format(CLIP_NORM, 'g') if clip else 'no clipping'}",
                     fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("global gradient norm ||grad||")
    _legend_outside(axes[1])
    fig.tight_layout()
    files.append(f"grad_norm_T{T}.png")
    fig.savefig(os.path.join(out, files[-1]), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    floored = []
    for key in CELLS:
        r = _run(runs, T, True, key)
        if r is not None:
            g = np.asarray(r["grad_by_step"], dtype=np.float64)
            if (g < 1e-30).any():
                floored.append(_label(key))
            _line(ax, key, np.arange(T), np.maximum(g, 1e-30), markers=True, markevery=max(1, T // 12), alpha=0.85)
    ax.set_yscale("log")
    ax.set_xlabel("input step t (the loss is at t = T-1)")
    ax.set_ylabel("||dL/dx_t||")
    ax.set_title(f"gradient reaching each input step after training, T={T}, clip {CLIP_NORM:g}"
                 + (f"\n({', '.join(floored)} below 1e-30 at early steps: drawn at 1e-30)" if floored else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    fig.tight_layout()
    files.append(f"grad_by_step_T{T}.png")
    fig.savefig(os.path.join(out, files[-1]), dpi=110)
    plt.close(fig)
    return files


def _fmt(v: Optional[float], spec: str = ".4f") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def plotted_length(lengths: List[int]) -> int:
    """The T of the gradient figures and of the reach finding."""
    return 100 if 100 in lengths else lengths[0]


def write_report(out: str, s: Dict[str, Any], timing, runs, plots, quick: bool, seconds: float) -> str:
    import rnnkit

    found = findings(timing, runs, s["lengths"], plotted_length(s["lengths"]))
    bullets = lambda key: [f"- {line}" for line in found[key]]  # noqa: E731
    lines = [f"# rnnkit compare{' (quick)' if quick else ''}", "",
             f"rnnkit {rnnkit.__version__}, {rnnkit.get_num_threads()} thread(s) (rnnkit.set_num_threads); "
             f"finished in {seconds:.0f} s; `rnnkit compare{' --quick' if quick else ''}`. Every sentence below "
             "is computed from the measurements in results.json.", ""]
    T, N, E, H = s["timing_shape"]
    lines += ["## (a) Recurrent layer vs recurrent network", "",
              f"LSTM, T={T}, N={N}, embedding {E}, hidden {H}, float32. *Layer*: the recurrent layer's "
              "forward and BPTT alone. *Network*: embedding + the same layer + output layer + softmax + "
              "cross-entropy, forward and backward (one fused C++ call each).", "",
              "| vocabulary | layer train ms | network train ms | recurrence share (train) | layer fwd ms | network fwd ms | recurrence share (fwd) | network tokens/s |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in timing:
        lines.append(f"| {r['vocab']} | {r['layer_train_ms']:.2f} | {r['network_train_ms']:.2f} | "
                     f"{100 * r['recurrence_share_train']:.0f}% | {r['layer_forward_ms']:.2f} | "
                     f"{r['network_forward_ms']:.2f} | {100 * r['recurrence_share_forward']:.0f}% | "
                     f"{r['network_train_tokens_per_s']:,.0f} |")
    lines += [""] + bullets("layer") + [""]
    if "layer_vs_network.png" in plots:
        lines += ["![layer vs network](layer_vs_network.png)", ""]

    lines += ["## (b) Learning long-range dependencies: the adding problem", "",
              f"Hidden {s['hidden']}, batch {s['batch']}, Adam lr 0.01, at most {s['steps']} steps (a run "
              f"stops {4 * s['eval_every']} steps after it solves), evaluated every {s['eval_every']} steps on a "
              f"fixed set. Solved: validation MSE < {SOLVED_MSE:g} (always answering 1 scores "
              f"{ADDING_BASELINE:.3f}). Thresholds: clipping at global norm {CLIP_NORM:g}; a gradient spike is a "
              f"step whose norm exceeds {SPIKE_FACTOR:g}x its run's median; a gradient has vanished when the part "
              f"reaching the first input step is below {VANISHED_RATIO:g} of the part at the last.", "",
              "| cell | T | clipping | final MSE | steps to solve | steps run | max grad norm (before clipping) | steps clipped | seconds |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        finite = [g for g in r["grad_norms"] if math.isfinite(g)]
        gmax = max(finite) if finite else float("nan")
        outcome = (r["solved_at"] if r["solved_at"] is not None
                   else f"diverged (step {r['diverged_at']})" if r["diverged_at"] is not None else "not solved")
        clipped = str(clipped_steps(r)) if r["clip"] else "—"
        lines.append(f"| {CELLS[r['cell']][2]} | {r['T']} | {format(CLIP_NORM, 'g') if r['clip'] else 'off'} | "
                     f"{_fmt(r['final_mse'], '.4g')} | {outcome} | {r['steps']} | {_fmt(gmax, '.3g')} | {clipped} | "
                     f"{r['seconds']:.1f} |")
    lines += ["", "What the runs show:", ""] + bullets("outcome") + bullets("clipping") + bullets("spikes") + \
        bullets("reach") + [""]
    for p in plots:
        if p.startswith("adding_T") or p.startswith("grad_"):
            lines += [f"![{p}]({p})", ""]
    if not plots:
        lines += ["(matplotlib is not installed, so the plots were skipped: `pip install 'rnnkit[plot]'`.)", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def run_compare(out: str, quick: bool = False, seed: int = 0, progress: bool = True) -> str:
    import rnnkit

    os.makedirs(out, exist_ok=True)
    s = _settings(quick)
    t0 = time.perf_counter()
    print(f"rnnkit compare{' --quick' if quick else ''}: (a) layer vs network, vocabularies {s['vocab_sizes']}")
    timing = layer_vs_network(s["vocab_sizes"], s["timing_shape"], s["timing_repeats"], seed)
    for r in timing:
        print(f"  vocab {r['vocab']:>6}: layer {r['layer_train_ms']:.2f} ms, network {r['network_train_ms']:.2f} ms "
              f"per training step ({100 * r['recurrence_share_train']:.0f}% recurrence)")
    runs = []
    grid = [(c, T, clip) for T in s["lengths"] for clip in (True, False) for c in CELLS]
    print(f"(b) adding problem: {len(grid)} runs (cells x T {s['lengths']} x clipping on/off)")
    for i, (cell, T, clip) in enumerate(grid, 1):
        r = adding_run(cell, T, clip, s, seed)
        runs.append(r)
        print(f"  [{i}/{len(grid)}] {CELLS[cell][2]:<32} T={T:<3} clip={'on ' if clip else 'off'} "
              f"final MSE {_fmt(r['final_mse'])}  solved at {r['solved_at'] or '-'}"
              + (f"  diverged at step {r['diverged_at']}" if r["diverged_at"] is not None else "")
              + f"  ({r['seconds']:.1f} s)", flush=True)
    plots = _plots(out, timing, runs, s["lengths"], plotted_length(s["lengths"]))
    path = write_report(out, s, timing, runs, plots, quick, time.perf_counter() - t0)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
                   "thresholds": {"solved_mse": SOLVED_MSE, "clip_norm": CLIP_NORM, "spike_factor": SPIKE_FACTOR,
                                  "vanished_ratio": VANISHED_RATIO, "adding_baseline": ADDING_BASELINE},
                   "labels": {k: v[3] for k, v in CELLS.items()}, "descriptions": {k: v[2] for k, v in CELLS.items()},
                   "timing": timing, "runs": runs, "threads": rnnkit.get_num_threads()}, f)
    print(f"wrote {path}" + (f" and {len(plots)} plots" if plots else " (no plots: matplotlib is not installed)"))
    return path
