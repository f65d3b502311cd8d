"""The main job against PyTorch: `rnnkit train` with its defaults, and the same model trained in
PyTorch from the same initial weights on the same batches for the same number of steps.

    python bench/charlm_vs_torch.py                # 2000 steps, both at their default threads
    python bench/charlm_vs_torch.py --steps 300 --threads 1

rnnkit runs through the real command (`rnnkit train`, read back from its summary.json); the
PyTorch twin (nn.Embedding + nn.LSTM + nn.Linear, Adam, clip_grad_norm_, truncated BPTT with the
state carried and detached between chunks) is built here from the same data pipeline
(rnnkit.data) and the model's initial state_dict. Both are timed in this process's machine state,
one after the other; the script prints the final validation losses, their relative difference and
steps per minute, and the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="threads for both (default: the CPUs available, as PyTorch and rnnkit train use)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--json", default="", help="also write the summary here")
    args = p.parse_args()

    import torch

    import rnnkit
    from rnnkit import data

    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(prefix="charlm-")
    cmd = [sys.executable, "-m", "rnnkit", "train", "--steps", str(args.steps), "--eval-every", str(args.eval_every),
           "--threads", str(args.threads), "--out", out, "--no-progress"]
    print("$ " + " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout)
    if proc.returncode != 0:
        print(proc.stderr)
        return 1
    ours = json.load(open(os.path.join(out, "summary.json")))

    # The same data, batches and initial weights as `rnnkit train`'s defaults.
    text = data.default_corpus()
    vocab = data.CharVocab.from_text(text)
    train_tokens, val_tokens = data.split_train_val(vocab.encode(text), 0.1)
    train = data.TokenStream(train_tokens, 32, 100)
    val = data.TokenStream(val_tokens, min(32, max(1, (len(val_tokens) - 1) // 100)), 100)
    model = rnnkit.RNNNetwork(vocab_size=len(vocab), embedding_dim=64, hidden_size=256, cell="lstm", seed=0)
    V = len(vocab)

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, 64)
            self.rnn = torch.nn.LSTM(64, 256)
            self.output = torch.nn.Linear(256, V)

        def forward(self, x, state=None):
            y, state = self.rnn(self.embedding(x), state)
            return self.output(y), state

    twin = Twin()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    opt = torch.optim.Adam(twin.parameters(), lr=2e-3)

    def evaluate():
        twin.eval()
        total, count, state = 0.0, 0, None
        with torch.no_grad():
            for b in val.batches():
                logits, state = twin(torch.from_numpy(b.inputs), None if b.reset else state)
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(b.targets).reshape(-1))
                total += float(loss) * b.tokens
                count += b.tokens
        twin.train()
        return total / count

    state = None
    evals = []
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        b = train.next_batch()
        if b.reset:
            state = None
        opt.zero_grad()
        logits, state = twin(torch.from_numpy(b.inputs), state)
        state = tuple(s.detach() for s in state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.from_numpy(b.targets).reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            evals.append((step, evaluate()))
    elapsed = time.perf_counter() - start
    theirs = {"final_val_loss": evals[-1][1], "steps_per_minute": 60.0 * args.steps / elapsed, "elapsed_s": elapsed}

    diff = (ours["final_val_loss"] - theirs["final_val_loss"]) / theirs["final_val_loss"]
    summary = {
        "steps": args.steps, "threads": args.threads, "rnnkit": {k: ours[k] for k in ("final_val_loss", "steps_per_minute", "elapsed_s")},
        "torch": theirs, "val_loss_relative_difference": diff,
        "speed_ratio": ours["steps_per_minute"] / theirs["steps_per_minute"],
        "torch_version": torch.__version__, "rnnkit_version": rnnkit.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "command": "python " + " ".join(sys.argv),
    }
    print(f"validation loss after {args.steps} steps: rnnkit {ours['final_val_loss']:.4f}, "
          f"PyTorch {theirs['final_val_loss']:.4f} ({100 * diff:+.2f}%)")
    print(f"steps per minute at {args.threads} thread(s): rnnkit {ours['steps_per_minute']:.0f}, "
          f"PyTorch {theirs['steps_per_minute']:.0f} ({summary['speed_ratio']:.2f}x)")
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
