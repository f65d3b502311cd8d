"""The training loop: batching, truncated BPTT, clipping, evaluation, early stopping, progress,
metrics and checkpoints.

    trainer = rnnkit.Trainer(model, rnnkit.optim.Adam(model, lr=2e-3), clip_norm=1.0,
                             eval_every=200, patience=5, metrics_path="run/metrics.csv",
                             checkpoint_path="run/checkpoint.npz", checkpoint_every=200)
    result = trainer.fit(train_source, val_source, steps=2000)

Truncated BPTT: a source's batches carry ``reset``; when it is False the model starts from the
state the previous batch ended in. That state is a plain array (no gradient flows into the
previous chunk), so chunks of k steps train with k-step BPTT while the state spans the stream.

Stopping and resuming: ``request_stop()`` (safe from a signal handler) ends ``fit`` after the step
in progress, which then saves its checkpoint and returns with ``interrupted`` set; ``resume``
restores everything, including the training time so far, and cuts the metrics CSV back to the
checkpoint's step, so a resumed run's files read as if it had never stopped.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .. import _device as D
from .. import _validate as V
from . import optim as _optim
from .checkpoint import Checkpoint, atomic_write, load_checkpoint, save_checkpoint


class _Window:
    """Losses, gradient norms and tokens since the last summary (the metrics CSV's rows and the
    printed log lines each keep one)."""

    def __init__(self) -> None:
        self._restart(time.perf_counter())

    def _restart(self, now: float) -> None:
        self.losses: List[float] = []
        self.norms: List[float] = []
        self.tokens, self.start = 0, now

    def add(self, loss: float, norm: float, tokens: int) -> None:
        self.losses.append(loss)
        self.norms.append(norm)
        self.tokens += tokens

    def take(self) -> Tuple[float, float, float]:
        """(mean loss, mean gradient norm, tokens per second) since the last take (at least one
        step added), and starts the next window."""
        now = time.perf_counter()
        summary = (float(np.mean(self.losses)), float(np.mean(self.norms)), self.tokens / max(now - self.start, 1e-9))
        self._restart(now)
        return summary


class Trainer:
    """Runs training steps of an ``RNNNetwork`` with an optimizer from ``rnnkit.optim``.

    Args:
        clip_norm: clip the global gradient norm to this (None: no clipping; the norm is still
            measured and reported every step).
        clip_value: clamp every gradient element to [-clip_value, clip_value] first.
        eval_every: evaluate on the validation source every this many steps (and at the end).
        patience: stop after this many evaluations without a better validation loss.
        restore_best: at the end, put back the parameters of the best evaluation.
        progress: show a tqdm progress bar (loss, gradient norm, tokens/s, ETA).
        print_every: without a progress bar, print a line (loss, validation loss, gradient norm,
            tokens/s, time) every this many steps (None: never).
        metrics_path: CSV file of the metrics, a row every ``log_every`` steps and at each evaluation.
        checkpoint_path / checkpoint_every: save a checkpoint every so many steps and at the end.
        extra_meta: JSON-serialisable facts stored in every checkpoint (e.g. the vocabulary).
    """

    def __init__(self, model: Any, optimizer: Any, *, clip_norm: Optional[float] = None,
                 clip_value: Optional[float] = None, eval_every: Optional[int] = None,
                 patience: Optional[int] = None, restore_best: bool = True, progress: bool = True,
                 log_every: int = 50, print_every: Optional[int] = None, metrics_path: Optional[str] = None,
                 checkpoint_path: Optional[str] = None, checkpoint_every: Optional[int] = None,
                 extra_meta: Optional[Dict[str, Any]] = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.clip_norm = None if clip_norm is None else V.check_positive_float("clip_norm", clip_norm)
        self.clip_value = None if clip_value is None else V.check_positive_float("clip_value", clip_value)
        self.eval_every = None if eval_every is None else V.check_size("eval_every", eval_every)
        self.patience = None if patience is None else V.check_size("patience", patience)
        self.restore_best = V.check_bool("restore_best", restore_best)
        self.progress = V.check_bool("progress", progress)
        self.log_every = V.check_size("log_every", log_every)
        self.print_every = None if print_every is None else V.check_size("print_every", print_every)
        self.metrics_path = metrics_path
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = None if checkpoint_every is None else V.check_size("checkpoint_every", checkpoint_every)
        self.extra_meta = dict(extra_meta or {})
        self.step = 0
        self.state = None           # the carried recurrent state (truncated BPTT)
        self.best_val = math.inf
        self.best_params: Optional[Dict[str, np.ndarray]] = None
        self.bad_evals = 0
        self.losses: List[float] = []      # training loss of every step of this process
        self.grad_norms: List[float] = []
        self.evals: List[Dict[str, float]] = []
        self.elapsed_before = 0.0   # training seconds of earlier runs of this training (resume)
        self.stopped_early = False
        self._metrics_file = None
        self._metrics_writer = None
        self._metrics_started = False  # this training has a metrics file: append to it
        self._fit_start: Optional[float] = None
        self._stop_requested = False

    def request_stop(self) -> None:
        """Ends ``fit`` after the step in progress (it saves and returns ``interrupted=True``).
        Only sets a flag, so a signal handler may call it."""
        self._stop_requested = True

    def elapsed(self) -> float:
        """Training seconds so far, earlier runs of a resumed training included."""
        running = 0.0 if self._fit_start is None else time.perf_counter() - self._fit_start
        return self.elapsed_before + running

    # ---- evaluation ----------------------------------------------------------------------------
    def evaluate(self, source: Any) -> float:
        """Mean loss over every batch of ``source.batches()``, weighted by target count, with the
        state carried between batches that do not reset; no dropout, nothing cached."""
        total, count, state = 0.0, 0, None
        for batch in source.batches():
            loss, state = self.model.evaluate(batch.inputs, batch.targets, None if batch.reset else state,
                                              batch.lengths)
            total += loss * batch.tokens
            count += batch.tokens
        if count == 0:
            raise ValueError("source: expected at least one evaluation batch, got none")
        return total / count

    # ---- checkpoints ---------------------------------------------------------------------------
    def save(self, path: str, source: Any = None) -> None:
        """Everything needed to continue exactly: model, optimizer, random states, step, the
        carried state and the training source's position."""
        arrays: Dict[str, np.ndarray] = {}
        if self.state is not None:
            for i, a in enumerate(self.state if isinstance(self.state, tuple) else (self.state,)):
                arrays[f"state/{i}"] = D.to_numpy(a)  # a network on the GPU carries device arrays
        if self.best_params is not None:
            arrays.update({f"best/{k}": v for k, v in self.best_params.items()})
        meta = dict(self.extra_meta)
        meta["trainer"] = {
            "step": self.step, "best_val": None if math.isinf(self.best_val) else self.best_val,
            "bad_evals": self.bad_evals, "source": None if source is None else source.state_dict(),
            "elapsed_s": self.elapsed(), "stopped_early": self.stopped_early,
        }
        save_checkpoint(path, self.model, self.optimizer, self.step, meta, arrays)

    def resume(self, path: Union[str, Checkpoint], source: Any = None) -> None:
        """Loads a checkpoint written by ``save`` (a path, or one ``load_checkpoint`` has read) into
        this trainer's model, optimizer and source."""
        ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path)
        self.model.load_state_dict(ckpt.params)
        self.model.dropout_rng.bit_generator.state = ckpt.meta["dropout_rng"]
        opt_info = ckpt.meta.get("optimizer")
        if opt_info is None or opt_info.get("class") != type(self.optimizer).__name__:
            raise ValueError(f"checkpoint: expected optimizer {type(self.optimizer).__name__}, got {opt_info and opt_info.get('class')}")
        self.optimizer.load_state_dict({"step": opt_info["step"], "buffers": ckpt.optimizer_buffers})
        info = ckpt.meta.get("trainer", {})
        self.step = int(info.get("step", ckpt.step))
        self.best_val = math.inf if info.get("best_val") is None else float(info["best_val"])
        self.bad_evals = int(info.get("bad_evals", 0))
        self.elapsed_before = float(info.get("elapsed_s", 0.0))
        self.stopped_early = bool(info.get("stopped_early", False))
        states = [ckpt.arrays[k] for k in sorted(k for k in ckpt.arrays if k.startswith("state/"))]
        self.state = None if not states else (tuple(states) if len(states) == 2 else states[0])
        best = {k[5:]: v for k, v in ckpt.arrays.items() if k.startswith("best/")}
        self.best_params = best or None
        if source is not None and info.get("source") is not None:
            source.load_state_dict(info["source"])
        if self.metrics_path is not None:
            self._truncate_metrics(self.step)

    def _truncate_metrics(self, step: int) -> None:
        """Keeps the metrics rows up to ``step`` (what a resumed run continues from), atomically."""
        if not os.path.exists(self.metrics_path):
            self._metrics_started = False
            return
        with open(self.metrics_path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        text = io.StringIO(newline="")
        csv.writer(text).writerows(kept)
        atomic_write(self.metrics_path, lambda f: f.write(text.getvalue().encode("utf-8")))
        self._metrics_started = True

    # ---- metrics -------------------------------------------------------------------------------
    def _log_row(self, row: Dict[str, Any]) -> None:
        if self.metrics_path is None:
            return
        if self._metrics_writer is None:
            folder = os.path.dirname(os.path.abspath(self.metrics_path))
            os.makedirs(folder, exist_ok=True)
            new = not self._metrics_started or not os.path.exists(self.metrics_path)
            self._metrics_file = open(self.metrics_path, "w" if new else "a", newline="")
            self._metrics_started = True
            self._metrics_writer = csv.DictWriter(
                self._metrics_file,
                fieldnames=["step", "elapsed_s", "train_loss", "grad_norm", "tokens_per_s", "val_loss"])
            if new:
                self._metrics_writer.writeheader()
        self._metrics_writer.writerow(row)
        self._metrics_file.flush()

    # ---- training ------------------------------------------------------------------------------
    def fit(self, train: Any, val: Any = None, *, steps: Optional[int] = None,
            minutes: Optional[float] = None) -> Dict[str, Any]:
        """Trains until ``steps`` (total, counting steps of a resumed run) or ``minutes`` (of this
        call) run out, early stopping triggers or ``request_stop`` is called. Returns a summary
        dict: ``steps`` (total), ``steps_this_call``, ``elapsed_s`` (this call), ``total_elapsed_s``
        (resumed runs included), losses, ``stopped_early`` and ``interrupted``."""
        if steps is None and minutes is None:
            raise ValueError("fit: expected steps, minutes or both, got neither")
        steps = None if steps is None else V.check_size("steps", steps)
        budget_s = None if minutes is None else 60.0 * V.check_positive_float("minutes", minutes)
        model, opt = self.model, self.optimizer
        model.train()
        start = self._fit_start = time.perf_counter()
        first_step = self.step
        interrupted = False
        logged, printed = _Window(), _Window()  # the CSV rows' and the log lines' summaries
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=self.step, unit="step", dynamic_ncols=True, mininterval=0.5)
        stopped_early = False
        try:
            opt.zero_grad()
            while True:
                if steps is not None and self.step >= steps:
                    break
                if budget_s is not None and time.perf_counter() - start >= budget_s:
                    break
                if self._stop_requested:
                    interrupted, self._stop_requested = True, False
                    break
                batch = train.next_batch()
                state = None if batch.reset else self.state
                loss, self.state = model.train_step(batch.inputs, batch.targets, state, batch.lengths)
                if self.clip_value is not None:
                    _optim.clip_grad_value(model, self.clip_value)
                norm = (_optim.clip_grad_norm(model, self.clip_norm) if self.clip_norm is not None
                        else _optim.grad_norm(model))
                opt.step()
                opt.zero_grad()
                self.step += 1
                self.losses.append(loss)
                self.grad_norms.append(norm)
                logged.add(loss, norm, batch.tokens)
                printed.add(loss, norm, batch.tokens)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss} at step {self.step}")
                if bar is not None:
                    bar.update(1)
                if self.step % self.log_every == 0:
                    mean_loss, mean_norm, tps = logged.take()
                    self._log_row({"step": self.step, "elapsed_s": round(self.elapsed(), 3), "train_loss": mean_loss,
                                   "grad_norm": mean_norm, "tokens_per_s": round(tps, 1), "val_loss": ""})
                    if bar is not None:
                        postfix = {"loss": f"{mean_loss:.4f}", "gnorm": f"{mean_norm:.3g}", "tok/s": f"{tps:,.0f}"}
                        if budget_s is not None:
                            postfix["left"] = f"{max(budget_s - (time.perf_counter() - start), 0) / 60:.1f}m"
                        bar.set_postfix(postfix, refresh=False)
                evaluated = val is not None and self.eval_every and self.step % self.eval_every == 0
                if evaluated and self._evaluate_and_check(val):
                    stopped_early = True
                if bar is None and self.print_every and self.step % self.print_every == 0:
                    mean_loss, mean_norm, tps = printed.take()
                    print(f"step {self.step}" + (f"/{steps}" if steps is not None else "")
                          + f": train loss {mean_loss:.4f}"
                          + (f", validation loss {self.evals[-1]['val_loss']:.4f}" if evaluated else "")
                          + f", grad norm {mean_norm:.3g}, {tps:,.0f} tokens/s, {self.elapsed():.1f} s", flush=True)
                if stopped_early:
                    break
                if self.checkpoint_path and self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self.save(self.checkpoint_path, train)
        finally:
            if bar is not None:
                bar.close()
        self.stopped_early = stopped_early
        final_val = None
        if interrupted:
            # Stopped mid-run: no final evaluation and the last parameters (not the best) saved,
            # so that resuming continues exactly where the run was.
            final_val = self.evals[-1]["val_loss"] if self.evals else None
        elif val is not None:
            if not self.evals or self.evals[-1]["step"] != self.step:
                self._evaluate_and_check(val)
            final_val = self.evals[-1]["val_loss"]
            if self.restore_best and self.best_params is not None and self.best_val < final_val:
                self.model.load_state_dict(self.best_params)
        if self.checkpoint_path:
            self.save(self.checkpoint_path, train)
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = self._metrics_writer = None
        elapsed = time.perf_counter() - start
        total = self.elapsed()
        self.elapsed_before, self._fit_start = total, None
        return {"steps": self.step, "steps_this_call": self.step - first_step, "elapsed_s": elapsed,
                "total_elapsed_s": total, "final_val_loss": final_val,
                "best_val_loss": None if math.isinf(self.best_val) else self.best_val,
                "stopped_early": stopped_early, "interrupted": interrupted,
                "last_train_loss": self.losses[-1] if self.losses else None}

    def _evaluate_and_check(self, val: Any) -> bool:
        """Evaluates, records, tracks the best parameters; True when patience has run out."""
        val_loss = self.evaluate(val)
        self.model.train()
        self.evals.append({"step": self.step, "val_loss": val_loss})
        self._log_row({"step": self.step, "elapsed_s": round(self.elapsed(), 3), "train_loss": "",
                       "grad_norm": "", "tokens_per_s": "", "val_loss": val_loss})
        if val_loss < self.best_val:
            self.best_val = val_loss
            self.best_params = self.model.state_dict()
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        return self.patience is not None and self.bad_evals >= self.patience
