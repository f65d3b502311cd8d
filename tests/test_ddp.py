"""DistributedDataParallel over ``rnnkit.torch`` modules: two processes on this machine (gloo over
the loopback interface) each take one shard of a batch and do one DDP step; afterwards (a) both
hold the same parameters and (b) those equal one single-process step on the whole batch (float64).
DDP averages the gradients, so the single-process loss is the mean over the whole batch, which
with equal shards is the mean of the shards' means. Also runs examples/ddp_train.py under
torchrun. Every child process has a deadline, so a stuck rendezvous fails instead of hanging.

This file is also the worker: ``python tests/test_ddp.py WORKDIR`` with torch.distributed's
environment variables set runs one rank's step.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from typing import Dict, List

import numpy as np
import pytest

from conftest import require_torch
from reference import max_relative_diff

torch = require_torch()
import rnnkit  # noqa: E402
import rnnkit.torch as rt  # noqa: E402

pytestmark = pytest.mark.torch

# DDP's averaged gradient ((g0 + g1) / 2) and the whole batch's gradient differ only in the order
# of floating-point sums: parameters after the step agree to this relative difference (float64).
DDP_VS_SINGLE_RTOL_F64 = 1e-12
# Seconds a child may run before it is killed and the test fails (startup is most of it).
CHILD_DEADLINE_S = 120
WORLD_SIZE = 2
SHARD = 3  # sequences per rank
LEARNING_RATE = 0.5
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Model(torch.nn.Module):
    """A bidirectional two-layer rnnkit LSTM (batch_first) with a linear head on every step."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = rt.LSTM(3, 5, 2, batch_first=True, bidirectional=True, dtype=torch.float64)
        self.head = torch.nn.Linear(10, 2, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x)
        return self.head(y)


def _one_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), target)
    loss.backward()
    optimizer.step()
    return loss.item()


def _worker(workdir: str) -> None:
    """One rank: its shard of the batch, one DDP step, its parameters written to WORKDIR."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    rnnkit.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=CHILD_DEADLINE_S))
    rank = dist.get_rank()
    inputs = torch.load(os.path.join(workdir, "inputs.pt"))
    model = _Model()
    model.load_state_dict(inputs["state"])
    ddp = DistributedDataParallel(model)
    shard = slice(rank * SHARD, (rank + 1) * SHARD)
    loss = _one_step(ddp, inputs["x"][shard], inputs["target"][shard])
    torch.save({"loss": loss, "state": model.state_dict()}, os.path.join(workdir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", RNNKIT_NUM_THREADS="1", **extra)
    if sys.platform.startswith("linux"):
        # gloo otherwise picks the interface the hostname resolves to, which may not be reachable.
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def _run_all(commands: List[List[str]], envs: List[Dict[str, str]]) -> List[subprocess.CompletedProcess]:
    """Runs the commands at once; kills them all and fails if any passes the deadline or fails."""
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for cmd, env in zip(commands, envs)]
    deadline = time.monotonic() + CHILD_DEADLINE_S
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        logs = [proc.communicate()[0] for proc in procs]
        pytest.fail(f"child processes passed the {CHILD_DEADLINE_S} s deadline; output:\n" + "\n---\n".join(logs))
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, f"child {proc.args} failed:\n{out}"
    return [subprocess.CompletedProcess(p.args, p.returncode, o) for p, o in zip(procs, outputs)]


def test_ddp_step_matches_single_process(tmp_path):
    torch.manual_seed(0)
    model = _Model()
    x = torch.randn(WORLD_SIZE * SHARD, 4, 3, dtype=torch.float64)
    target = torch.randn(WORLD_SIZE * SHARD, 4, 2, dtype=torch.float64)
    torch.save({"state": model.state_dict(), "x": x, "target": target}, tmp_path / "inputs.pt")

    port = str(_free_port())
    envs = [_child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(r), WORLD_SIZE=str(WORLD_SIZE),
                       LOCAL_RANK=str(r)) for r in range(WORLD_SIZE)]
    _run_all([[sys.executable, os.path.abspath(__file__), str(tmp_path)]] * WORLD_SIZE, envs)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    initial = {name: value.clone() for name, value in model.state_dict().items()}
    single_loss = _one_step(model, x, target)
    assert abs(np.mean([r["loss"] for r in ranks]) - single_loss) <= DDP_VS_SINGLE_RTOL_F64 * abs(single_loss)
    failures = []
    for name, want in model.state_dict().items():
        # (a) Every rank applied the same all-reduced gradient: identical bits.
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name
        # (b) ... and it is the whole batch's gradient.
        err = max_relative_diff(ranks[0]["state"][name].numpy(), want.numpy())
        if not err < DDP_VS_SINGLE_RTOL_F64:
            failures.append(f"{name}: relative difference {err:.2e}")
        if torch.equal(want, initial[name]):
            failures.append(f"{name}: unchanged by the step, so the comparison proves nothing")
    assert not failures, failures


def test_example_runs_under_torchrun(tmp_path):
    save = tmp_path / "model.pt"
    done = _run_all(
        [[sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}",
          "examples/ddp_train.py", "--steps", "6", "--print-every", "3", "--batch", "8", "--seq-len", "5",
          "--save", str(save)]],
        [_child_env()],
    )[0]
    lines = [line for line in done.stdout.splitlines() if line.startswith("step")]
    assert [line.split()[1] for line in lines] == ["3", "6"], done.stdout  # rank 0 alone prints
    assert f"{WORLD_SIZE} process(es), backend gloo" in done.stdout
    state = torch.load(save)
    assert "lstm.weight_ih_l0" in state and "head.weight" in state


if __name__ == "__main__":
    _worker(sys.argv[1])
