"""Trainer, truncated BPTT, data sources, checkpoints (atomic, resumable bit for bit) and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import rnnkit
from rnnkit import data
from compare_claims import Checker
from rnnkit.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

TEXT = ("The quick brown fox jumps over the lazy dog. " * 40 + "def f(x):\n    return x * 2\n" * 30)


def char_setup(seed=0, cell="lstm", hidden=16, batch=4, seq_len=12):
    vocab = data.CharVocab.from_text(TEXT)
    tokens = vocab.encode(TEXT)
    train_tokens, val_tokens = data.split_train_val(tokens, 0.2)
    model = rnnkit.RNNNetwork(vocab_size=len(vocab), embedding_dim=8, hidden_size=hidden, cell=cell,
                              num_layers=2, dropout=0.1, seed=seed)
    return vocab, model, data.TokenStream(train_tokens, batch, seq_len), data.TokenStream(val_tokens, 2, seq_len)


def test_token_stream_batches_are_consecutive_chunks():
    tokens = np.arange(101)
    s = data.TokenStream(tokens, batch_size=4, seq_len=5)
    b1, b2 = s.next_batch(), s.next_batch()
    assert b1.reset and not b2.reset
    np.testing.assert_array_equal(b1.inputs[:, 0], np.arange(5))
    np.testing.assert_array_equal(b1.targets[:, 0], np.arange(1, 6))
    np.testing.assert_array_equal(b2.inputs[:, 0], np.arange(5, 10))
    np.testing.assert_array_equal(b1.inputs[:, 1], np.arange(25, 30))
    for _ in range(s.chunks_per_epoch - 2):
        s.next_batch()
    assert s.next_batch().reset and s.epoch == 1


def test_carried_state_equals_one_long_sequence():
    """Truncated BPTT's forward: chunks with the state carried give the same loss as the whole
    stream in one piece."""
    vocab, model, _, _ = char_setup(cell="gru")
    model.eval()
    tokens = vocab.encode(TEXT[:241])
    stream = data.TokenStream(tokens, batch_size=2, seq_len=20)
    trainer = rnnkit.Trainer(model, rnnkit.optim.SGD(model, lr=0.1), progress=False)
    chunked = trainer.evaluate(stream)
    whole, _ = model.evaluate(stream.inputs[:stream.chunks_per_epoch * 20], stream.targets[:stream.chunks_per_epoch * 20])
    assert abs(chunked - whole) < 1e-6 * whole


def test_training_reduces_the_loss_and_writes_metrics(tmp_path):
    _, model, train, val = char_setup()
    trainer = rnnkit.Trainer(model, rnnkit.optim.Adam(model, lr=1e-2), clip_norm=1.0, eval_every=40,
                             progress=False, log_every=10, metrics_path=str(tmp_path / "m.csv"))
    before = trainer.evaluate(val)
    result = trainer.fit(train, val, steps=120)
    assert result["steps"] == 120 and result["final_val_loss"] < before - 0.3
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == "step,elapsed_s,train_loss,grad_norm,tokens_per_s,val_loss"
    assert len(lines) == 1 + 12 + 3
    assert len(trainer.grad_norms) == 120 and all(np.isfinite(trainer.grad_norms))


def test_early_stopping_and_restore_best():
    _, model, train, val = char_setup()
    trainer = rnnkit.Trainer(model, rnnkit.optim.SGD(model, lr=1e-12), eval_every=5, patience=3, progress=False)
    result = trainer.fit(train, val, steps=1000)
    assert result["stopped_early"] and result["steps"] == 20  # first eval is the best; three more fail


def test_checkpoint_round_trip_rebuilds_the_model(tmp_path):
    vocab, model, train, _ = char_setup()
    opt = rnnkit.optim.Adam(model)
    save_checkpoint(str(tmp_path / "c.npz"), model, opt, step=7, meta={"vocab": vocab.chars})
    ckpt = load_checkpoint(str(tmp_path / "c.npz"))
    assert ckpt.step == 7 and ckpt.meta["vocab"] == vocab.chars
    again = model_from_checkpoint(ckpt)
    for k, v in model.params.items():
        np.testing.assert_array_equal(again.params[k], v)
    assert again.config() == model.config()


def _train_script(folder, steps, resume):
    return textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np, rnnkit
        from test_training import char_setup
        _, model, train, val = char_setup(seed=1)
        trainer = rnnkit.Trainer(model, rnnkit.optim.Adam(model, lr=5e-3), clip_norm=1.0, progress=False,
                                 checkpoint_path={os.path.join(folder, 'ckpt.npz')!r})
        if {resume}:
            trainer.resume({os.path.join(folder, 'ckpt.npz')!r}, train)
        trainer.fit(train, steps={steps})
        np.save({os.path.join(folder, 'losses_')!r} + str({steps}) + ".npy", np.array(trainer.losses))
    """)


def test_resume_gives_bit_identical_losses(tmp_path):
    """20 steps straight vs 10 steps, checkpoint, a new process resumes for 10 more: the same
    losses bit for bit (model, optimizer, dropout and data position all restored)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir()
    split.mkdir()
    for folder, runs in ((straight, [(20, False)]), (split, [(10, False), (20, True)])):
        for steps, resume in runs:
            proc = subprocess.run([sys.executable, "-c", _train_script(str(folder), steps, resume)],
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
    full = np.load(straight / "losses_20.npy")
    first, second = np.load(split / "losses_10.npy"), np.load(split / "losses_20.npy")
    assert full.shape == (20,) and first.shape == second.shape == (10,)
    np.testing.assert_array_equal(full, np.concatenate([first, second]))


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from rnnkit.checkpoint import atomic_write_npz
    path = sys.argv[1]
    i = 0
    while True:
        i += 1
        # Big enough that a kill often lands mid-write; every entry says which version it is.
        atomic_write_npz(path, {"version": np.array([i]), "payload": np.full(2_000_000, i, np.float32)})
        print(i, flush=True)
""")


def test_killing_a_writer_mid_save_never_corrupts_the_checkpoint(tmp_path):
    """Over 20 trials a writer saving in a loop is killed (SIGKILL) at a random moment; the file
    always loads, whole and consistent, with a version the writer had finished."""
    path = str(tmp_path / "ckpt.npz")
    rng = np.random.default_rng(0)
    for trial in range(20):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "1" or trial > 0  # at least one save completed
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.stdout.read()
        proc.stdout.close()
        proc.wait()
        with np.load(path, allow_pickle=False) as f:
            version = int(f["version"][0])
            payload = f["payload"]
            assert payload.shape == (2_000_000,) and np.all(payload == version)
    # The next successful save clears the temporaries that killed writers left behind.
    subprocess.run([sys.executable, "-c", "import numpy as np; from rnnkit.checkpoint import atomic_write_npz; "
                    f"atomic_write_npz({path!r}, {{'version': np.array([0])}})"], check=True, timeout=120)
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _, model, _, _ = char_setup()
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, model, step=1)

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=2)
    monkeypatch.undo()
    assert load_checkpoint(path).step == 1
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.parametrize("content, pattern", [
    (b"not a zip at all", "cannot be loaded"),
    (b"PK\x03\x04truncated", "cannot be loaded"),
])
def test_broken_files_are_refused(tmp_path, content, pattern):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=pattern):
        load_checkpoint(str(path))


def test_truncated_checkpoint_is_refused(tmp_path):
    _, model, _, _ = char_setup()
    path = tmp_path / "c.npz"
    save_checkpoint(str(path), model)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_checkpoint(str(path))


def test_pickled_object_in_a_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.npz"
    np.savez(path, **{"meta.json": np.array([Evil()], dtype=object)})
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_checkpoint(str(path))
    assert not marker.exists()


# ---- the command line -----------------------------------------------------------------------------
def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "rnnkit", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_train_default_data_then_sample(tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", "--steps", "30", "--eval-every", "15", "--hidden", "32", "--seq-len", "20",
                "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "pydoc_data.topics" in proc.stdout and "validation loss" in proc.stdout
    for name in ("checkpoint.npz", "metrics.csv", "summary.json"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["steps_per_minute"] > 0
    proc = _cli("sample", "--checkpoint", str(out / "checkpoint.npz"), "--length", "50", "--prime", "def ", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("def ") and len(proc.stdout) >= 54


@pytest.mark.parametrize("task", ["adding", "copy"])
def test_cli_train_tasks(tmp_path, task):
    proc = _cli("train", "--task", task, "--task-length", "20", "--steps", "20", "--hidden", "16",
                "--batch", "8", "--eval-every", "10", "--out", str(tmp_path), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert f"{task} task" in proc.stdout


def test_cli_train_on_a_user_file_and_resume(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(TEXT)
    args = ("train", "--data", str(text), "--hidden", "16", "--seq-len", "10", "--batch", "4",
            "--eval-every", "10", "--out", str(tmp_path / "run"), "--no-progress")
    assert _cli(*args, "--steps", "10").returncode == 0
    proc = _cli(*args, "--steps", "20", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout and json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 20


def test_cli_reports_user_errors_without_a_traceback(tmp_path):
    proc = _cli("sample", "--checkpoint", str(tmp_path / "missing.npz"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"junk")
    proc = _cli("sample", "--checkpoint", str(bad))
    assert proc.returncode == 2 and "cannot be loaded" in proc.stderr


@pytest.fixture(scope="module")
def quick_compare(tmp_path_factory):
    """One `rnnkit compare --quick` run for the tests that read its output (it is the suite's longest call)."""
    out = tmp_path_factory.mktemp("compare")
    proc = _cli("compare", "--quick", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out


def test_cli_compare_quick(quick_compare):
    tmp_path = quick_compare
    report = (tmp_path / "report.md").read_text()
    assert "Recurrent layer vs recurrent network" in report and "adding problem" in report
    results = json.loads((tmp_path / "results.json").read_text())
    from rnnkit.app import compare

    # every cell x the quick run's one length x clipping on/off
    assert len(results["runs"]) == 2 * len(compare.CELLS) and len(results["timing"]) == 2
    assert Checker(str(tmp_path)).check() >= 7  # every sentence of the report, against results.json


def test_the_recorded_compare_report_states_only_what_its_results_show():
    folder = os.path.join(os.path.dirname(__file__), "..", "bench", "compare")
    checker = Checker(folder)
    assert checker.check() >= 20 and checker.results["settings"]["lengths"] == [50, 100, 200]


def test_plots_are_written_when_matplotlib_is_installed(tmp_path, quick_compare):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: the PNG plots are skipped")
    proc = _cli("train", "--task", "adding", "--task-length", "10", "--steps", "20", "--hidden", "8",
                "--batch", "4", "--eval-every", "10", "--log-every", "5", "--out", str(tmp_path / "t"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "t" / "loss.png").stat().st_size > 1000
    pngs = sorted(p.name for p in quick_compare.glob("*.png"))
    assert pngs == ["adding_T50.png", "grad_by_step_T50.png", "grad_norm_T50.png", "layer_vs_network.png"]
    assert "![layer vs network](layer_vs_network.png)" in (quick_compare / "report.md").read_text()
