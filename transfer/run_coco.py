#!/usr/bin/env python
"""COCO Mask R-CNN, R50-C4 (1x / 2x) or R50-FPN (1x), several seeds.

    python transfer/run_coco.py --weights care_r50.pth --seeds 5
    python transfer/run_coco.py --weights care_r50.pth --seeds 5 --arch fpn
    python transfer/run_coco.py --weights gsg_r50.pth --seeds 5 --arch fpn --schedule 3x
    python transfer/run_coco.py --weights care_r50.pth --seeds 2 --dataset synthetic

Trains on coco_2017_train, tests on coco_2017_val (bbox and segm AP, AP50, AP75 and
per-category AP with detectron2's COCOEvaluator). See transfer/runner.py for outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

from common.cli import ConfigError, doc_parser, run_cli
from transfer.detection.runner import run_protocol
from transfer.runner import add_common_args

# (arch, schedule) -> protocol: MoCo's / CARE's C4 1x and 2x and FPN 1x, and the GSG
# paper's FPN 3x (270k iterations)
COCO_PROTOCOLS = {("c4", "1x"): "coco_c4_1x", ("c4", "2x"): "coco_c4_2x",
                  ("fpn", "1x"): "coco_fpn_1x", ("fpn", "3x"): "coco_fpn_3x"}  # fmt: skip


def protocol_for(arch: str, schedule: str) -> str:
    """The COCO protocol of a backbone and schedule; the others are refused by name."""
    if (arch, schedule) not in COCO_PROTOCOLS:
        known = ", ".join(f"--arch {a} --schedule {s}" for a, s in COCO_PROTOCOLS)
        raise ConfigError(f"no COCO protocol for --arch {arch} --schedule {schedule}; known: "
                          f"{known}")  # fmt: skip
    return COCO_PROTOCOLS[(arch, schedule)]


def get_args_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    p.add_argument(
        "--arch",
        choices=["c4", "fpn"],
        default="c4",
        help="Mask R-CNN backbone: R50-C4 (CARE Table 4) or R50-FPN (CARE Table 5, GSG)",
    )
    p.add_argument(
        "--schedule",
        choices=["1x", "2x", "3x"],
        default="1x",
        help="1x = 90k iterations (CARE), 2x = 180k (MoCo, MaskCo; C4), 3x = 270k (the GSG "
        "paper's, FPN with detectron2's FrozenBN base)",
    )
    return add_common_args(p)


def main(args: argparse.Namespace) -> int:
    return run_protocol(args, protocol_for(args.arch, args.schedule))


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
