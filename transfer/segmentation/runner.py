"""Planning the seeds of the segmentation protocol (``transfer/run_segmentation.py``).

Checks the data (ADE20K's release layout under ``$DETECTRON2_DATASETS``, preparing
``annotations_detectron2`` when missing; or writes the synthetic twin), checks every
validation image before any seed runs, converts the weights once, and lists the seeds still
to run; launching, skipping, locking and the summary are the shared core's
(``transfer.runner``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import BadInput
from transfer.d2engine import arch_opts
from transfer.runner import (
    RunPlan,
    add_seeds,
    config_overrides,
    devices,
    launch_and_summarise,
    resolve_weights,
    seed_template,
)
from transfer.segmentation.config import build_config

ENTRY = "transfer.segmentation.trainer:train_seed"  # the per-process function of a seed


def check_test_images(names) -> int:
    """Decode every evaluation image (at 1/8 scale) and compare its size with its label's
    (headers only): one line naming the file before any seed runs; returns the count."""
    from PIL import Image

    from common.badimages import UNREADABLE
    from transfer.segmentation.data import dataset_dicts

    n = 0
    for name in names:
        for d in dataset_dicts(name)[0]:
            try:
                with Image.open(d["file_name"]) as im:
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                    im.load()
                with Image.open(d["sem_seg_file_name"]) as seg:
                    size, mode = seg.size, seg.mode
            except UNREADABLE as e:
                raise BadInput(
                    f"{d['file_name']}: unreadable evaluation image or label of {name} "
                    f"({type(e).__name__}: {e}); every validation image is scored: replace it"
                ) from None
            if size != (d["width"], d["height"]) or mode != "L":
                raise BadInput(
                    f"{d['sem_seg_file_name']}: label {size} mode {mode}, expected the image's "
                    f"size {(d['width'], d['height'])} in mode L ({d['file_name']})"
                )
            n += 1
    return n


def prepare_data(args: argparse.Namespace, output: Path) -> str:
    """The data root (the folder holding ADEChallengeData2016), ready and registered."""
    from transfer.segmentation import data

    if args.dataset == "synthetic":
        from synthetic.ade20k import RELEASE, STAMP, write_ade20k

        root = Path(args.shapes_root or output / "datasets" / "ade20k_synthetic")
        if not (root / RELEASE / STAMP).exists():  # a twin already there is used as it is
            write_ade20k(root)
    else:
        root = data.datasets_root()
    for folder in data.prepare(root):
        print(f"ADE20K: wrote {folder} (labels - 1, unlabelled 255: detectron2's layout)")
    data.register(root, synthetic=args.dataset == "synthetic")
    return str(Path(root).resolve())


def schedule_line(cfg) -> str:
    """The run's real schedule, from its config (smoke overlay and overrides included)."""
    iters = cfg.SOLVER.MAX_ITER
    n = f"{iters // 1000}k" if iters >= 1000 and iters % 1000 == 0 else str(iters)
    return (
        f"ADE20K UPerNet R50 (CSAIL toolkit), {n} iterations at batch "
        f"{cfg.SOLVER.IMS_PER_BATCH} ({cfg.SOLVER.IMS_PER_BATCH // cfg.INPUT.IMS_PER_GROUP} "
        f"groups), {len(cfg.INPUT.TEST_SHORT_SIDES)}-scale test"
    )


def plan(args: argparse.Namespace, protocol: str = "ade20k_upernet") -> RunPlan:
    """Check the inputs, convert the weights, and list the seeds that still need running."""
    smoke = args.dataset == "synthetic"
    num_gpus, device = devices(args)
    opts = config_overrides(args)
    if args.ignore_padding:
        opts = ["MODEL.UPERNET.BATCH_PAD_LABEL", "255"] + opts
    cfg = build_config(protocol, smoke=smoke, opts=opts, device=device)  # validates opts early
    output = args.output.resolve()
    root = prepare_data(args, output)
    check_test_images(cfg.DATASETS.TEST)
    weights = resolve_weights(args.weights, output, args.allow_pickle)
    opts = arch_opts(weights.get("arch"), "run_linear.py or run_recognition.py") + opts
    variant = f"{protocol}_ignorepad" if args.ignore_padding else protocol
    protocol_name = f"{variant}_smoke" if smoke else variant
    result = RunPlan(output / protocol_name / weights["stem"])
    print(
        f"{schedule_line(cfg)}{' (smoke, synthetic data)' if smoke else ''}: "
        f"{args.seeds} seed(s) of {weights['stem']} -> {result.run_dir}"
    )
    template = seed_template(
        args, protocol, protocol_name, weights, opts, num_gpus, device,
        entry=ENTRY, family="segmentation", shapes_root=root,
    )  # fmt: skip
    add_seeds(result, args.seeds, template)
    return result


def run_protocol(args: argparse.Namespace, protocol: str = "ade20k_upernet") -> int:
    """Run ``args.seeds`` seeds of ``protocol``; returns the process exit code."""
    return launch_and_summarise(plan(args, protocol), args)
