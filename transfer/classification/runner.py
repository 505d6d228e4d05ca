"""Planning and launching the seeds of a classification protocol (``transfer/run_linear.py``).

Same guarantees and layout as the detection runners (``transfer.runner``): the weights are
converted once and cached by content hash, seed ``k`` has the recorded seed value
``1000 + k``, finished seeds are skipped, an unfinished one resumes from its last epoch
checkpoint, each seed runs in its own process (or Slurm job), so a failing seed never takes
the others down. Under ``torchrun`` the seeds run one after another in the torchrun
processes instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from pathlib import Path

from common.archs import get_arch
from common.atomic import atomic_write_json
from common.cli import EXIT_INTERRUPTED, EXIT_OK, ConfigError, Interrupted
from common.locks import held_or_none
from transfer.classification.protocols import resolve
from transfer.runner import (
    RunPlan,
    add_seeds,
    config_overrides,
    devices,
    launch_and_summarise,
    report_held,
    resolve_weights,
    seed_template,
    still_to_run,
    summarise_run,
)
from transfer.spec import SeedSpec, seed_lock_path

ENTRY = "transfer.classification.train:train_cls_seed"  # the per-process function of a seed


def synthetic_data(args: argparse.Namespace, output: Path) -> Path:
    """The built-in shapes' ImageFolder (written when absent), with SimCLR-style subset
    files, or the synthetic ImageFolder the user named with ``--data``."""
    from synthetic import generate, write_label_subsets

    if args.data:
        root = Path(args.data)
    else:
        root = generate(args.shapes_root or output / "datasets" / "shapes") / "imagefolder"
    write_label_subsets(root)
    return root


def plan_cls(args: argparse.Namespace) -> RunPlan:
    """Check the data and the weights, and list the seeds that still need running."""
    from transfer.classification.data import check_layout, read_subset

    smoke = args.dataset == "synthetic"
    num_gpus, device = devices(args)
    opts = config_overrides(args)
    protocol = resolve(args.protocol, smoke, opts)  # validates the overrides early
    output = args.output.resolve()
    if smoke:
        data = synthetic_data(args, output)
    elif not args.data:
        raise ConfigError("--data ROOT is required (the ImageNet layout ROOT/{train,val}/<class>)")
    else:
        data = Path(args.data)
    _, train, _ = check_layout(data)
    if protocol.kind == "finetune":
        read_subset(Path(args.subset_file or data / f"{protocol.subset}.txt"), train)
    weights = resolve_weights(args.weights, output, args.allow_pickle)
    arch = None
    if not weights["path"]:
        arch = get_arch(args.arch).key
        weights["stem"] = f"random_init_{arch.replace('resnet', 'r')}"
    run = RunPlan(output / protocol.name / weights["stem"])
    print(
        f"{protocol.name}{' (smoke, synthetic data)' if smoke else ''}: {args.seeds} seed(s) "
        f"of {weights['stem']} on {data} -> {run.run_dir}"
    )
    subset = str(Path(args.subset_file).resolve()) if args.subset_file else None
    template = seed_template(
        args,
        args.protocol,
        protocol.name,
        weights,
        opts,
        num_gpus,
        device,
        entry=ENTRY,
        family="classification",
        data=str(data.resolve()),
        arch=arch,
        subset_file=subset,
        allow_pickle=args.allow_pickle,
    )
    add_seeds(run, args.seeds, template)
    return run


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def launch_torchrun(run: RunPlan) -> int | None:
    """The seeds one after another in this torchrun group (every process calls this)."""
    import torch
    import torch.distributed as dist

    rank = dist.get_rank()
    for spec in run.specs:
        spec = spec.replace(device="cuda" if torch.cuda.is_available() else "cpu")
        with contextlib.ExitStack() as held:
            # rank 0 holds the seed's lock for the group; every rank follows its decision
            decision = ["run"]
            if rank == 0:
                lock = held.enter_context(
                    held_or_none(seed_lock_path(spec.seed_dir), wait=run.if_locked == "wait")
                )
                if lock is None:
                    decision = ["held"]
                elif (Path(spec.seed_dir) / "metrics.json").exists():
                    decision = ["finished"]
            dist.broadcast_object_list(decision, src=0)
            if decision[0] == "held":
                report_held(spec, run.statuses)
                continue
            if decision[0] == "finished":
                still_to_run(spec, run.statuses)
                continue
            code = _train_in_group(spec, run, rank)
            if code is not None:
                return code
        dist.barrier()
    return None


def _train_in_group(spec: SeedSpec, run: RunPlan, rank: int) -> int | None:
    """One seed in the torchrun group; EXIT_INTERRUPTED when it was stopped."""
    from transfer.classification.train import train_cls_seed

    try:
        train_cls_seed(spec)
        run.statuses[spec.seed_index] = "finished"
    except (Interrupted, KeyboardInterrupt) as e:
        print(f"seed {spec.seed_index}: {e or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a failing seed is recorded, the others go on
        if rank == 0:
            atomic_write_json(
                Path(spec.seed_dir) / "failed.json",
                {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()},
            )
        print(f"seed {spec.seed_index} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        run.statuses[spec.seed_index] = "failed"
    return None


def run_cls_protocol(args: argparse.Namespace) -> int:
    """Run ``args.seeds`` seeds of ``args.protocol``; returns the process exit code."""
    if under_torchrun():
        import torch
        import torch.distributed as dist

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if dist.get_rank() != 0:
            dist.barrier()  # rank 0 converts the weights and writes the data first
        run = plan_cls(args)
        run.if_locked = args.if_locked
        if dist.get_rank() == 0:
            dist.barrier()
        code = launch_torchrun(run)
        if dist.get_rank() != 0:
            return code or EXIT_OK
        return code if code is not None else summarise_run(run.run_dir, run.statuses)
    return launch_and_summarise(plan_cls(args), args)
