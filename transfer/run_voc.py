#!/usr/bin/env python
"""VOC07+12 Faster R-CNN R50-C4 (24k iterations) or R50-FPN (GSG's 144k), several seeds.

    python transfer/run_voc.py --weights care_r50.pth --seeds 5
    python transfer/run_voc.py --weights gsg_r50.pth --seeds 5 --arch fpn
    python transfer/run_voc.py --weights care_r50.pth --seeds 2 --dataset synthetic

Trains on voc_2007_trainval + voc_2012_trainval, tests on voc_2007_test (AP, AP50, AP75 with
detectron2's PascalVOCDetectionEvaluator, 2007 metric). See transfer/runner.py for outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

from common.cli import doc_parser, run_cli
from transfer.detection.runner import run_protocol
from transfer.runner import add_common_args

PROTOCOLS = {"c4": "voc_c4_24k", "fpn": "voc_fpn_144k"}


def get_args_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    p.add_argument(
        "--arch",
        choices=list(PROTOCOLS),
        default="c4",
        help="c4: Faster R-CNN R50-C4, 24k iterations (MoCo / CARE Table 4); fpn: Faster "
        "R-CNN R50-FPN, 144k iterations at batch 2 (the GSG paper, ssl-transfer's config)",
    )
    return add_common_args(p)


def main(args: argparse.Namespace) -> int:
    return run_protocol(args, PROTOCOLS[args.arch])


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
