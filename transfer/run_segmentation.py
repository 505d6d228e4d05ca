#!/usr/bin/env python
"""ADE20K semantic segmentation, UPerNet R50 (the CSAIL toolkit's protocol, as GSG and
ssl-transfer run it), several seeds.

    python transfer/run_segmentation.py --weights care_r50.pth --seeds 3
    python transfer/run_segmentation.py --weights care_r50.pth --seeds 2 --dataset synthetic

Trains on ade20k_sem_seg_train (ADEChallengeData2016 under $DETECTRON2_DATASETS; its
annotations_detectron2 are written when missing) for 150k iterations at 4 images per
iteration, then tests on ade20k_sem_seg_val with the softmax averaged over 5 scales: mIoU and
pixel accuracy (detectron2's SemSegEvaluator, plus the toolkit's mIoU over all 150 classes).
See transfer/runner.py for the outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

from common.cli import doc_parser, run_cli
from transfer.runner import add_common_args
from transfer.segmentation.runner import run_protocol


def get_args_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    p.add_argument(
        "--ignore-padding",
        action="store_true",
        help="label the batch padding 'ignore' (255) instead of class 0 as the toolkit does "
        "(results go to ade20k_upernet_ignorepad[_smoke])",
    )
    p = add_common_args(p)
    for a in p._actions:  # the synthetic data here is the ADE20K twin, not the shapes
        if a.dest == "shapes_root":
            a.help = "where the synthetic ADE20K twin is written (default: " \
                "<output>/datasets/ade20k_synthetic)"  # fmt: skip
        if a.dest == "seeds":
            a.default = 3
            a.help = "number of seeds (default: 3); seed k uses seed value 1000+k"
    return p


def main(args: argparse.Namespace) -> int:
    return run_protocol(args)


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
