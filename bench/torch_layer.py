"""One rnnkit.torch layer's training step against torch.nn's, and the two C++ backward paths under
it, all in one process: where the time of the PyTorch bridge goes.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/torch_layer.py
    python bench/torch_layer.py --quick          # tiny, few rounds: checks the script runs

Rows (each a forward + backward of x [T, N, C], dy given, median of interleaved rounds):
- ``core, cache used up``: ``_core.forward`` + ``_core.backward`` (what the eager modules run);
- ``core, reserve read``: ``_core.forward`` + ``_core.backward_reserve`` over ``Cache.reserve()``
  (what the pure operators run under torch.compile / torch.export: backward leaves the reserve as it
  was, so it gathers the gate gradients in a buffer of its own);
- ``core, forward only``: the training forward alone;
- ``rnnkit.torch``, ``torch.nn``: the modules, ``y.backward(dy)``; ``rnnkit.torch, reserve read``:
  the module with its backward made to read the reserve (as under torch.compile);
- ``rnnkit.torch inference`` / ``_core inference``: ``torch.no_grad()`` forward and the bare call.
The bridge's cost is the module row less the matching core row: the Python glue, torch's autograd
engine and gradient accumulation, and fresh outputs where the core rows reuse their arrays.
"""

from __future__ import annotations

import argparse


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", default="LSTM", choices=["RNN", "LSTM", "GRU"])
    p.add_argument("--steps-T", dest="T", type=int, default=50)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--input", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--dx", action="store_true", help="the input requires a gradient (dx is computed)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--reps", type=int, default=5, help="calls per timed round")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.T, args.batch, args.input, args.hidden, args.rounds, args.reps = 5, 2, 4, 8, 2, 1

    import numpy as np
    import torch

    import rnnkit
    from rnnkit.app.timing import interleaved_medians
    import rnnkit.torch as rt
    from rnnkit import _core
    from rnnkit.interop import torch_ops

    torch.set_num_threads(1)
    rnnkit.set_num_threads(1)
    T, N, C, H = args.T, args.batch, args.input, args.hidden
    torch.manual_seed(0)
    ref = getattr(torch.nn, args.cell)(C, H)
    ours = getattr(rt, args.cell)(C, H)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, N, C, requires_grad=args.dx)
    dy = torch.randn(T, N, H)
    cfg = torch_ops.stack_config(*ours._config_args(0.0))
    weights = [p.detach().numpy() for p in ours.parameters()]
    x_np, dy_np = x.detach().numpy(), dy.numpy()
    grads = [np.zeros(shape, np.float32) for _, shape in cfg.param_specs()]

    def core_cache():
        *_, cache = _core.forward(cfg, weights, x_np, None, None, None, True, 0)
        _core.backward(cache, dy_np, None, None, grads, args.dx)

    def core_reserve():
        *_, cache = _core.forward(cfg, weights, x_np, None, None, None, True, 0)
        _core.backward_reserve(cfg, cache.reserve(), T, N, None, 0, dy_np, None, None, grads, args.dx)

    def core_forward():
        _core.forward(cfg, weights, x_np, None, None, None, True, 0)

    def core_inference():
        _core.forward(cfg, weights, x_np, None, None, None, False, 0)

    def module(m):
        def step():
            y, _ = m(x)
            y.backward(dy)
        return step

    real_run = torch_ops._forward_run

    def module_reserve():
        # The module with no cache beside its reserve: backward reads the reserve, as the
        # operators' autograd does under torch.compile / torch.export.
        torch_ops._forward_run = lambda *a, **k: (real_run(*a, **k)[0], None)
        try:
            module(ours)()
        finally:
            torch_ops._forward_run = real_run

    def module_inference():
        with torch.no_grad():
            ours(x)

    rows = {"core, cache used up": core_cache, "core, reserve read": core_reserve,
            "core, forward only": core_forward, "rnnkit.torch": module(ours),
            "rnnkit.torch, reserve read": module_reserve, "torch.nn": module(ref),
            "_core inference": core_inference, "rnnkit.torch inference": module_inference}
    for f in rows.values():
        for _ in range(3):
            f()
    def repeated(f):
        def run():
            for _ in range(args.reps):
                f()
        return run

    rounds = interleaved_medians({name: repeated(f) for name, f in rows.items()}, args.rounds, warmup=0)
    median = {name: t / args.reps for name, t in rounds.items()}

    from torch_compile import cpu_fields, machine_description  # bench/ is the script's directory

    print(f"machine: {machine_description(cpu_fields())}; torch {torch.__version__}; 1 thread")
    print(f"{args.cell}({C}, {H}), x [{T}, {N}, {C}], dx {'yes' if args.dx else 'no'}; "
          f"median of {args.rounds} rounds x {args.reps} calls")
    for name, t in median.items():
        print(f"{name:<28} {t * 1e3:9.3f} ms")
    print(f"reserve read / cache used up:       core {median['core, reserve read'] / median['core, cache used up']:.3f}, "
          f"module {median['rnnkit.torch, reserve read'] / median['rnnkit.torch']:.3f}")
    print(f"torch.nn / rnnkit.torch:            {median['torch.nn'] / median['rnnkit.torch']:.3f}")
    print(f"bridge cost (training, inference):  "
          f"{(median['rnnkit.torch'] - median['core, cache used up']) * 1e3:.3f} ms, "
          f"{(median['rnnkit.torch inference'] - median['_core inference']) * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
