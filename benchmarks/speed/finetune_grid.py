#!/usr/bin/env python
"""The many-shot fine-tuning grid on several processes: one grid run per process at once
(what ``run_recognition.py`` does), against each run trained by DDP over every process
(each rank half of each batch, gradients all-reduced), one run after another.

    python benchmarks/speed/finetune_grid.py                       # 2 CPU processes (gloo)
    python benchmarks/speed/finetune_grid.py --procs 2 --steps 10 --image-size 64

Prints, for the same ``--runs`` grid runs of ``--steps`` SGD steps (ResNet-``--depth``
FinetuneNet, batch ``--batch``, ``--image-size`` inputs): the wall time of each way, the
grid runs per hour, and their ratio. On GPUs start it with one process per GPU
(``--procs`` = the GPU count; NCCL). Each way's time includes its processes' start.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def _net(depth: int, device: torch.device):
    from common.archs import get_arch
    from transfer.backbone import FeatureResNet
    from transfer.recognition.finetune import FinetuneNet

    torch.manual_seed(0)
    return FinetuneNet(FeatureResNet(get_arch(f"resnet{depth}")), 10).to(device)


def _batches(args, run: int):
    g = torch.Generator().manual_seed(run)
    for _ in range(args.steps):
        x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g)
        yield x, torch.randint(0, 10, (args.batch,), generator=g)


def _train(args, run: int, device: torch.device, ddp: bool) -> None:
    """One grid run: ``--steps`` SGD steps; with ``ddp`` this rank's half of each batch."""
    import torch.distributed as dist
    from torch import nn

    net = _net(args.depth, device)
    model = nn.parallel.DistributedDataParallel(net) if ddp else net
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    share = args.batch // world
    for x, y in _batches(args, run):
        x, y = x[rank * share : (rank + 1) * share].to(device), y[rank * share : (rank + 1) * share]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y.to(device)).backward()
        opt.step()


def one_run_per_process(args) -> None:
    import torch.distributed as dist

    device = _device(args)
    for run in range(dist.get_rank(), args.runs, dist.get_world_size()):
        _train(args, run, device, ddp=False)
    dist.barrier()


def each_run_over_every_process(args) -> None:
    device = _device(args)
    for run in range(args.runs):
        _train(args, run, device, ddp=True)


def _device(args) -> torch.device:
    import torch.distributed as dist

    if args.cuda:
        return torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def main() -> None:
    from common.processes import start_workers

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--runs", type=int, default=4, help="grid runs timed (the grid has 20)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=64, help="ssl-transfer's batch: 64")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--depth", type=int, default=18, choices=[18, 50])
    args = p.parse_args()
    args.cuda = torch.cuda.is_available()
    kind = torch.cuda.get_device_name(0) if args.cuda else f"a {os.cpu_count()}-core CPU"
    print(
        f"{args.runs} grid runs x {args.steps} steps, batch {args.batch}, "
        f"{args.image_size}px, ResNet-{args.depth}, {args.procs} processes on {kind}"
    )
    times = {}
    for name, fn in (("one run per process", one_run_per_process),
                     ("each run DDP over all", each_run_over_every_process)):  # fmt: skip
        t0 = time.perf_counter()
        start_workers(fn, (args,), args.procs, cuda=args.cuda)
        times[name] = time.perf_counter() - t0
        print(f"{name:<24} {times[name]:7.1f} s   {3600 * args.runs / times[name]:8.1f} runs/h")
    a, b = times.values()
    print(f"one run per process is {b / a:.2f}x the DDP way's speed")


if __name__ == "__main__":
    main()
