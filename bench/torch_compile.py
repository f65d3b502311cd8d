"""A small model trained under torch.compile: rnnkit.torch.LSTM compiled against the same model in
eager mode and against torch.nn.LSTM compiled the same way, all in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/torch_compile.py
    python bench/torch_compile.py --quick          # tiny, few rounds: checks the script runs

The model: nn.Embedding(V, E) -> LSTM(E, H, num_layers) -> nn.Linear(H, V), cross-entropy over
every step, SGD; one training step = forward + backward + update on a [T, N] batch of tokens. Each
variant is warmed up (compilation included) before timing; the rounds interleave the variants so
the machine's drift falls on all of them alike, and each figure is the median of the rounds. The
ratios are the result (this machine is shared): compiled rnnkit against eager rnnkit, and against
compiled torch.nn.LSTM (torch.compile cannot trace torch.nn.LSTM: dynamo gives up on the forward
that holds it and runs it eagerly, which is what a user of torch.compile gets); eager rnnkit
against eager torch.nn.LSTM for context.
"""

from __future__ import annotations

import argparse
import json
import os
import platform


def cpu_fields() -> dict:
    """model name, cpu family and model of the first CPU in /proc/cpuinfo (empty elsewhere)."""
    cpu = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "cpu family", "model") and key.strip() not in cpu:
                    cpu[key.strip()] = value.strip()
    except OSError:
        pass
    return cpu


def machine_description(cpu: dict) -> str:
    return (f"{platform.machine()} {cpu.get('model name', '?')} (cpu family {cpu.get('cpu family', '?')}, "
            f"model {cpu.get('model', '?')})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--steps-T", dest="T", type=int, default=50)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=5, help="training steps per timed round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args()
    if args.quick:
        args.vocab, args.embed, args.hidden, args.T, args.batch, args.rounds, args.steps = 16, 8, 16, 6, 2, 2, 1

    import torch

    import rnnkit
    from rnnkit.app.timing import interleaved_medians
    import rnnkit.torch as rt

    torch.set_num_threads(args.threads)
    rnnkit.set_num_threads(args.threads)

    class Model(torch.nn.Module):
        def __init__(self, lstm_cls):
            super().__init__()
            self.embedding = torch.nn.Embedding(args.vocab, args.embed)
            self.rnn = lstm_cls(args.embed, args.hidden, args.layers)
            self.head = torch.nn.Linear(args.hidden, args.vocab)

    # One forward (code object) per variant: dynamo keys its caches and its skip marks by code
    # object, and torch.nn.LSTM's failed trace must not mark rnnkit's forward as skipped too.
    class RnnkitModel(Model):
        def forward(self, tokens):
            y, _ = self.rnn(self.embedding(tokens))
            return self.head(y)

    class TorchModel(Model):
        def forward(self, tokens):
            y, _ = self.rnn(self.embedding(tokens))
            return self.head(y)

    def trainer(model, compiled):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        run = torch.compile(model, fullgraph=compiled == "fullgraph") if compiled else model

        def step(tokens, targets):
            opt.zero_grad(set_to_none=True)
            logits = run(tokens)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, args.vocab), targets.reshape(-1))
            loss.backward()
            opt.step()
            return loss

        return step

    torch.manual_seed(0)
    ref_model = TorchModel(torch.nn.LSTM)
    variants = {}
    for name, cls, compiled in [("rnnkit eager", rt.LSTM, None), ("rnnkit compiled", rt.LSTM, "fullgraph"),
                                ("torch.nn compiled", torch.nn.LSTM, "graph-breaks"),
                                ("torch.nn eager", torch.nn.LSTM, None)]:
        model = (RnnkitModel if cls is rt.LSTM else TorchModel)(cls)
        model.load_state_dict(ref_model.state_dict())
        variants[name] = trainer(model, compiled)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, args.vocab, (args.T, args.batch), generator=g)
    targets = torch.randint(0, args.vocab, (args.T, args.batch), generator=g)

    for step in variants.values():  # warm-up: compilation, allocator, first-call costs
        for _ in range(3):
            step(tokens, targets)
    def steps(step):
        def run():
            for _ in range(args.steps):
                step(tokens, targets)
        return run

    rounds = interleaved_medians({name: steps(step) for name, step in variants.items()}, args.rounds, warmup=0)
    median = {name: t / args.steps for name, t in rounds.items()}

    cpu = cpu_fields()
    print(f"machine: {machine_description(cpu)}; torch {torch.__version__}; threads {args.threads}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    print(f"model: Embedding({args.vocab}, {args.embed}) -> LSTM({args.embed}, {args.hidden}, {args.layers}) -> "
          f"Linear({args.hidden}, {args.vocab}); batch T={args.T}, N={args.batch}; SGD; "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':<20} {'ms / training step':>18}")
    for name, t in median.items():
        print(f"{name:<20} {t * 1e3:>18.3f}")
    r_eager = median["rnnkit eager"] / median["rnnkit compiled"]
    r_torch = median["torch.nn compiled"] / median["rnnkit compiled"]
    print(f"rnnkit compiled vs rnnkit eager:      {r_eager:.2f}x  (goal >= 1.0)")
    print(f"rnnkit compiled vs torch.nn compiled: {r_torch:.2f}x  (goal > 1.0)")
    r_eager_torch = median["torch.nn eager"] / median["rnnkit eager"]
    print(f"rnnkit eager vs torch.nn eager:       {r_eager_torch:.2f}x  (context: no compiler on either side)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"median_s": median, "ratios": {"vs_eager": r_eager, "vs_torch_compiled": r_torch,
                                                      "eager_vs_torch_eager": r_eager_torch},
                       "args": vars(args), "cpu": cpu}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
