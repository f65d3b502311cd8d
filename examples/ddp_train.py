"""Data-parallel training of an ``rnnkit.torch.LSTM`` with PyTorch's DistributedDataParallel.

A small, complete script: an LSTM + linear head learns a synthetic sequence-regression task (the
target is the mean of the first input channel minus the mean of the second, over the whole
sequence). Every process trains on its own shard of each global batch; DDP averages the gradients,
so all processes keep identical weights. rank 0 prints the loss.

    torchrun --nproc_per_node=2 examples/ddp_train.py            # 2 processes on this machine
    python examples/ddp_train.py                                 # 1 process, same code path

rnnkit computes on the CPU, so the processes talk over gloo. Give each process its share of the
cores (``--threads``, default 1) so they do not compete. docs/torch.md shows multi-machine launches.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import rnnkit
import rnnkit.torch


class SequenceRegressor(torch.nn.Module):
    """rnnkit's LSTM over the sequence, a linear head on the last step's output."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = rnnkit.torch.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.head = torch.nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.head(y[:, -1]).squeeze(-1)


def synthetic_dataset(size: int, seq_len: int, input_size: int, seed: int) -> TensorDataset:
    """The same data on every process (a fixed seed); the sampler gives each its shard."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(size, seq_len, input_size, generator=gen)
    y = x[:, :, 0].mean(dim=1) - x[:, :, 1].mean(dim=1)
    return TensorDataset(x, y)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_distributed(backend: str) -> None:
    """Joins the process group torchrun set up, or makes a one-process group when the script is
    run directly, so both launches take the same code path."""
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    dist.init_process_group(backend, timeout=timedelta(minutes=5))


def _train(args: argparse.Namespace, rank: int, world: int) -> None:
    torch.manual_seed(args.seed)  # DDP also broadcasts rank 0's weights, but start equal anyway
    model = DistributedDataParallel(SequenceRegressor(2, args.hidden, args.layers))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = synthetic_dataset(args.batch * 64, args.seq_len, 2, seed=args.seed + 1)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(data, batch_size=args.batch // world, sampler=sampler, drop_last=True)
    if rank == 0:
        print(f"{world} process(es), backend {dist.get_backend()}, {args.batch // world} sequences each per step; "
              f"model {sum(p.numel() for p in model.parameters())} parameters")

    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.steps:
        sampler.set_epoch(epoch)
        for x, target in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), target)
            loss.backward()  # DDP averages the gradients over the processes here
            optimizer.step()
            step += 1
            if step % args.print_every == 0 or step == args.steps:
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss)
                if rank == 0:
                    print(f"step {step:5d}  loss {mean_loss.item() / world:.5f}  "
                          f"{time.perf_counter() - start:.1f} s", flush=True)
            if step == args.steps:
                break
        epoch += 1

    if rank == 0 and args.save:
        torch.save(model.module.state_dict(), args.save)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    parser.add_argument("--batch", type=int, default=64, help="global batch, split over the processes")
    parser.add_argument("--seq-len", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch and rnnkit threads per process")
    parser.add_argument("--print-every", type=int, default=20)
    parser.add_argument("--backend", default=None,
                        help="gloo (default: rnnkit.torch computes on the CPU) or nccl for GPU modules")
    parser.add_argument("--save", default=None, help="rank 0 writes the final state_dict here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rnnkit.set_num_threads(args.threads)
    device = torch.device("cpu")  # rnnkit.torch computes on the CPU (its CUDA backend has no RNN kernels yet)
    _init_distributed(args.backend or ("nccl" if device.type == "cuda" else "gloo"))
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch: expected a multiple of the process count {world}, got {args.batch}")

    _train(args, rank, world)
    # Every tensor and module that took part in a collective died with _train's frame; collect any
    # cycles too, so Gloo's worker threads have released them and are joined while the interpreter is
    # alive. A worker that releases a Python-owned tensor during interpreter shutdown aborts the
    # process ("terminate called without an active exception"; see pytorch/pytorch#179291).
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
