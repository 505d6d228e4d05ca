"""Planning the seeds of a detection protocol (``transfer/run_voc.py``, ``run_coco.py``).

Checks the data (``$DETECTRON2_DATASETS``, or writes the synthetic shapes), converts the
weights once (``transfer.runner.resolve_weights``), builds the backbone's config overrides
from the converted ResNet, and lists the seeds still to run; launching, skipping, locking
and the summary are the shared core's (``transfer.runner``).
"""

from __future__ import annotations

import argparse

from transfer.d2engine import arch_opts
from transfer.detection.config import PROTOCOLS, build_config
from transfer.runner import (
    RunPlan,
    add_seeds,
    config_overrides,
    devices,
    launch_and_summarise,
    resolve_weights,
    seed_template,
)

__all__ = ["arch_opts", "plan", "run_protocol"]

ENTRY = "transfer.detection.trainer:train_seed"  # the per-process function of a seed


def check_data(protocol: str, smoke: bool, opts: list, device: str, shapes_root) -> None:
    """Foreign classes and unreadable evaluation images: one line before any seed runs."""
    from transfer.detection.checks import check_datasets
    from transfer.detection.datasets import register_shapes

    if shapes_root:
        register_shapes(shapes_root)
    check_datasets(build_config(protocol, smoke=smoke, opts=opts, device=device))


def plan(args: argparse.Namespace, protocol: str) -> RunPlan:
    """Check the inputs, convert the weights, and list the seeds that still need running."""
    from transfer.detection.datasets import check_real

    smoke = args.dataset == "synthetic"
    num_gpus, device = devices(args)
    opts = config_overrides(args)
    cfg = build_config(protocol, smoke=smoke, opts=opts, device=device)  # validates opts early
    output = args.output.resolve()
    shapes_root = None
    if smoke:
        from synthetic import generate

        shapes_root = str(generate(args.shapes_root or output / "datasets" / "shapes"))
    else:
        check_real(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    check_data(protocol, smoke, opts, device, shapes_root)
    weights = resolve_weights(args.weights, output, args.allow_pickle)
    opts = arch_opts(weights.get("arch")) + opts  # the user's overrides come last and win
    protocol_name = f"{protocol}_smoke" if smoke else protocol
    result = RunPlan(output / protocol_name / weights["stem"])
    full = build_config(protocol, device=device)
    this_run = ""
    if (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH) != (full.SOLVER.MAX_ITER,
                                                          full.SOLVER.IMS_PER_BATCH):  # fmt: skip
        this_run = (
            f"; this run: {cfg.SOLVER.MAX_ITER} iterations at batch {cfg.SOLVER.IMS_PER_BATCH}"
        )
    print(
        f"{PROTOCOLS[protocol]}{' (smoke, synthetic data)' if smoke else ''}{this_run}: "
        f"{args.seeds} seed(s) of {weights['stem']} -> {result.run_dir}"
    )
    template = seed_template(
        args,
        protocol,
        protocol_name,
        weights,
        opts,
        num_gpus,
        device,
        entry=ENTRY,
        family="detection",
        shapes_root=shapes_root,
    )
    add_seeds(result, args.seeds, template)
    return result


def run_protocol(args: argparse.Namespace, protocol: str) -> int:
    """Run ``args.seeds`` seeds of ``protocol``; returns the process exit code."""
    return launch_and_summarise(plan(args, protocol), args)
