"""The ``rnnkit`` command as a user meets it, run as a subprocess: one-line errors naming the flag
(exit 2 for a command that cannot run as typed, before anything is read or written), Ctrl-C /
SIGTERM / kill -9 during training and the resume after them, resuming a finished run, the help
text, log lines without a progress bar, and the adding task's defaults."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

# A small character model that trains a step in milliseconds.
TINY = ("--hidden", "16", "--seq-len", "20", "--batch", "4", "--eval-every", "10", "--no-progress", "--threads", "1")
STEP_WAIT_S = 120  # the longest a test waits for a training run to reach a step


def _cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "rnnkit", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _snapshot(folder):
    """Every file under `folder` with its bytes: what "nothing written or changed" is checked on."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def _one_error_line(proc, command):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"rnnkit {command}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _metrics(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def files(tmp_path):
    """Inputs the error cases point at."""
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "short.txt").write_text("abc def\n")
    (tmp_path / "binary.bin").write_bytes(b"\x00\xff\xfe\x80 binary")
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    (tmp_path / "folder").mkdir()
    return tmp_path


USAGE_ERRORS = [
    (("train", "--threads", "0"), ["--threads", ">= 1", "0"]),
    (("train", "--task", "adding", "--task-length", "0"), ["--task-length", ">= 1"]),
    (("sample", "--length", "-1"), ["--length", ">= 0"]),
    (("train", "--steps", "0"), ["--steps"]),
    (("train", "--lr", "-1"), ["--lr", "> 0"]),
    (("train", "--minutes", "0"), ["--minutes", "> 0"]),
    (("train", "--dropout", "1.5"), ["--dropout", "[0, 1)"]),
    (("train", "--batch", "x"), ["--batch", "'x'"]),
    (("info", "--repeats", "0"), ["--repeats"]),
    (("train", "--data", "folder"), ["--data", "folder", "is a folder"]),
    (("train", "--data", "missing.txt"), ["--data", "no such file", "missing.txt"]),
    (("train", "--out", "a_file"), ["--out", "a_file", "is a file"]),
    (("train", "--resume", "--out", "fresh"), ["--resume", "no checkpoint", "without --resume"]),
    (("train", "--data", "empty.txt"), ["--data", "empty.txt", "is empty"]),
    (("train", "--data", "short.txt"), ["--data", "short.txt", "8 characters", "too short", "--batch", "--seq-len"]),
    (("train", "--data", "binary.bin"), ["--data", "binary.bin", "not UTF-8", "offset 1"]),
    (("sample", "--checkpoint", "notes.txt"), ["--checkpoint", "notes.txt", "not an rnnkit checkpoint"]),
    (("sample", "--checkpoint", "folder"), ["--checkpoint", "is a folder"]),
    (("sample", "--prime", ""), ["--prime", "at least one character"]),
    (("compare", "--out", "a_file"), ["--out", "is a file"]),
]


@pytest.mark.parametrize("args, wanted", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_a_command_that_cannot_run_says_why_in_one_line_and_touches_nothing(files, args, wanted):
    before = _snapshot(files)
    proc = _cli(*args, cwd=files)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    line = _one_error_line(proc, args[0])
    for w in wanted:
        assert w in line, (w, line)
    assert "allow_pickle" not in line
    assert proc.stdout == ""  # failed before loading data or building a model (they print)
    assert _snapshot(files) == before
    assert not (files / "rnnkit-run").exists() and not (files / "fresh").exists()


def test_resuming_a_finished_run_says_so_changes_nothing_and_a_larger_steps_extends_it(tmp_path):
    out = str(tmp_path / "run")
    assert _cli("train", *TINY, "--steps", "20", "--out", out).returncode == 0
    before = _snapshot(out)
    proc = _cli("train", "--resume", "--out", out)
    assert proc.returncode == 2
    line = _one_error_line(proc, "train")
    assert "finished" in line and "20 of --steps 20" in line and "larger --steps" in line
    assert _snapshot(out) == before
    proc = _cli("train", "--resume", "--out", out, "--steps", "30", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout and "30 steps in" in proc.stdout and "(10 in this run" in proc.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["steps_this_call"] == 10 and summary["last_train_loss"] is not None


def test_a_new_run_does_not_overwrite_an_earlier_one(tmp_path):
    out = str(tmp_path / "run")
    assert _cli("train", *TINY, "--steps", "10", "--out", out).returncode == 0
    before = _snapshot(out)
    proc = _cli("train", *TINY, "--steps", "10", "--out", out)
    assert proc.returncode == 2
    assert "already holds a run" in _one_error_line(proc, "train") and "--resume" in proc.stderr
    assert _snapshot(out) == before


def test_a_resumed_run_keeps_its_settings(tmp_path):
    out = str(tmp_path / "run")
    assert _cli("train", *TINY, "--steps", "10", "--out", out).returncode == 0
    before = _snapshot(out)
    proc = _cli("train", "--resume", "--out", out, "--steps", "20", "--hidden", "32")
    assert proc.returncode == 2
    line = _one_error_line(proc, "train")
    assert "--hidden" in line and "16" in line and "32" in line
    assert _snapshot(out) == before
    # The same value typed again is fine (the command line of the first run, plus --resume).
    proc = _cli("train", *TINY, "--steps", "20", "--out", out, "--resume")
    assert proc.returncode == 0, proc.stderr


def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "rnnkit", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_step(path, step, proc):
    """Until the metrics file has a row of `step` (or later)."""
    deadline = time.monotonic() + STEP_WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {step}: {proc.stderr.read()}")
        try:
            rows = _metrics(path)
            if rows and int(rows[-1]["step"]) >= step:
                return
        except (FileNotFoundError, KeyError, ValueError):
            pass
        time.sleep(0.005)
    pytest.fail(f"no step {step} within {STEP_WAIT_S} s")


RUN = TINY + ("--metrics-every", "1")
LONG = ("--steps", "1000000")  # a run the test ends; its length does not change its steps


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_and_the_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path, signum, status):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    proc = _start(["train", *RUN, *LONG, "--out", split], tmp_path)
    _wait_for_step(os.path.join(split, "metrics.csv"), 30, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=STEP_WAIT_S)
    assert proc.returncode == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    step = int(lines[0].split("interrupted at step ")[1].split(";")[0])
    assert step >= 30
    assert lines[0] == f"rnnkit train: interrupted at step {step}; resume with: rnnkit train --resume --out {split}"
    assert [int(r["step"]) for r in _metrics(os.path.join(split, "metrics.csv"))][-1] == step
    # The resume runs to 25 steps past the interruption (crossing an evaluation and a checkpoint);
    # the uninterrupted run trains as long in one go.
    total = step + 25
    resumed = _cli("train", "--resume", "--out", split, "--steps", str(total), "--threads", "1", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert _cli("train", *RUN, "--steps", str(total), "--out", straight).returncode == 0
    a, b = _metrics(os.path.join(straight, "metrics.csv")), _metrics(os.path.join(split, "metrics.csv"))
    assert [(r["step"], r["train_loss"], r["val_loss"]) for r in a] == [(r["step"], r["train_loss"], r["val_loss"]) for r in b]
    assert len(a) > total  # every step's row and the evaluations' rows
    elapsed = [float(r["elapsed_s"]) for r in b]
    assert elapsed == sorted(elapsed)  # training time continues across the interruption
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["steps"] == total and summary["steps_this_call"] == 25
    assert summary["total_elapsed_s"] >= elapsed[-1] - 1e-3


def test_kill_9_loses_at_most_the_steps_since_the_last_periodic_checkpoint(tmp_path):
    from rnnkit.train.checkpoint import load_checkpoint

    period = 25
    out = str(tmp_path / "run")
    proc = _start(["train", *RUN, *LONG, "--checkpoint-every", str(period), "--out", out], tmp_path)
    _wait_for_step(os.path.join(out, "metrics.csv"), 90, proc)
    proc.kill()
    proc.communicate(timeout=STEP_WAIT_S)
    last_logged = int(_metrics(os.path.join(out, "metrics.csv"))[-1]["step"])
    saved = load_checkpoint(os.path.join(out, "checkpoint.npz")).step
    assert saved % period == 0 and 0 < saved <= last_logged and last_logged - saved <= period
    # The resume continues from the checkpoint: the rows past it are dropped, then written again.
    resumed = _cli("train", "--resume", "--out", out, "--steps", str(saved + 5), "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr
    rows = [(int(r["step"]), r["val_loss"] != "") for r in _metrics(os.path.join(out, "metrics.csv"))]
    assert len(rows) == len(set(rows)) and rows[-1][0] == saved + 5  # (a step has a training and an evaluation row)


def _options(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((name, a) for a in sub._actions if a.option_strings and a.dest != "help")


def test_every_option_has_a_help_line_with_its_default():
    from rnnkit.app.cli import _HelpFormatter, build_parser

    parser = build_parser()
    seen = set()
    for command, action in _options(parser):
        text = _HelpFormatter("rnnkit")._get_help_string(action)
        assert action.help and "default" in text, (command, action.option_strings, text)
        seen.add((command, action.option_strings[0]))
    assert {("train", "--cell"), ("train", "--lr"), ("sample", "--checkpoint"), ("sample", "--prime"),
            ("compare", "--quick"), ("info", "--shape")} <= seen
    for command in ("train", "sample", "compare", "info"):
        proc = _cli(command, "--help")
        assert proc.returncode == 0 and proc.stdout.count("(default") >= 2, proc.stdout


def test_bare_command_lists_the_commands_and_version_prints():
    proc = _cli()
    assert proc.returncode == 0
    for command in ("train", "sample", "compare", "info"):
        assert command in proc.stdout
    assert "GFLOP/s" not in proc.stdout  # the list, not a run of info
    from rnnkit import __version__

    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"rnnkit {__version__}"


def test_without_a_progress_bar_a_line_is_printed_every_log_every_steps(tmp_path):
    proc = _cli("train", *TINY, "--steps", "20", "--log-every", "5", "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    logged = [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert logged == ["step 5/20", "step 10/20", "step 15/20", "step 20/20"]
    assert "validation loss" in next(line for line in proc.stdout.splitlines() if line.startswith("step 10/20"))
    # Default: a line at every evaluation.
    proc = _cli("train", *TINY, "--steps", "20", "--out", str(tmp_path / "d"))
    assert [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("step ")] == ["step 10/20",
                                                                                                   "step 20/20"]


def test_a_library_warning_is_one_warning_line(tmp_path):
    proc = _cli("train", *TINY, "--steps", "2", "--dropout", "0.5", "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnnkit train: warning: ") and "dropout" in lines[0], proc.stderr
    assert "UserWarning" not in proc.stderr and ".py:" not in proc.stderr


def test_sample_refuses_a_prime_outside_the_vocabulary_and_a_task_checkpoint(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("abcabcabc " * 200)
    assert _cli("train", *TINY, "--data", str(text), "--steps", "2", "--out", str(tmp_path / "c")).returncode == 0
    proc = _cli("sample", "--checkpoint", str(tmp_path / "c" / "checkpoint.npz"), "--prime", "xyz")
    assert proc.returncode == 2 and "--prime" in _one_error_line(proc, "sample")
    assert _cli("train", *TINY, "--task", "adding", "--task-length", "5", "--steps", "2",
                "--out", str(tmp_path / "a")).returncode == 0
    proc = _cli("sample", "--checkpoint", str(tmp_path / "a" / "checkpoint.npz"))
    assert proc.returncode == 2 and "character language model" in _one_error_line(proc, "sample")


def test_a_diverging_run_is_a_runtime_error_of_one_line(tmp_path):
    proc = _cli("train", *TINY, "--steps", "50", "--lr", "1e38", "--clip", "1e30", "--optimizer", "sgd",
                "--out", str(tmp_path / "r"))
    assert proc.returncode == 1, proc.stderr
    assert "loss became" in _one_error_line(proc, "train")


def test_the_adding_task_with_its_defaults_gets_below_a_tenth_of_the_baseline(tmp_path):
    """`rnnkit train --task adding` as advertised: its own defaults (GRU, hidden 64, lr 0.01,
    2000 steps) end far below the always-answer-1 baseline."""
    from rnnkit.train.data import ADDING_BASELINE_MSE

    proc = _cli("train", "--task", "adding", "--no-progress", "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert "cell='gru'" in proc.stdout and "hidden_size=64" in proc.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["steps"] == 2000
    assert summary["final_val_loss"] < ADDING_BASELINE_MSE / 10, summary


def test_train_on_cuda_without_the_backend_is_a_one_line_error(tmp_path):
    import rnnkit

    if rnnkit.cuda.is_available():
        pytest.skip(f"rnnkit's CUDA backend runs here ({rnnkit.cuda.status()}): tests/test_cuda_network.py trains on it")
    proc = _cli("train", *TINY, "--steps", "2", "--device", "cuda", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    line = _one_error_line(proc, "train")
    assert line == f"rnnkit train: error: --device: CUDA is unavailable here: {rnnkit.cuda.status()}", line
    assert not (tmp_path / "run").exists()
