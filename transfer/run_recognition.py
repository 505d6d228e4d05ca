#!/usr/bin/env python
"""GSG's recognition transfer suite (ssl-transfer): many-shot linear and many-shot
fine-tuning on 11 datasets, few-shot ProtoNet on CD-FSL's four and ten of the eleven.

    python transfer/run_recognition.py --weights care_r50.pth byol_r50.pth \\
        --protocol manyshot_linear --datasets all --data /data/transfer
    python transfer/run_recognition.py --weights care_r50.pth --datasets cifar10 pets \\
        --data /data/transfer solver torch
    python transfer/run_recognition.py --weights care_r50.pth --protocol fewshot \\
        --datasets eurosat chestx --data /data/transfer --seeds 3
    python transfer/run_recognition.py --weights care_r50.pth --datasets all \\
        --dataset synthetic

--data holds ssl-transfer's data/ folders (Aircraft/, Caltech101/, Cars/, CIFAR10/,
CIFAR100/, DTD/, Flowers/, Food/, Pets/, SUN397/, VOC2007/; few-shot: CropDiseases/,
EuroSAT/, ISIC/, ChestX/) or torchvision's folders of the same files (docs/recognition.md).
Features are extracted once per (weights, dataset) and cached under <output>/features/.
Trailing KEY VALUE pairs override protocol settings, e.g. ``solver torch`` or ``shots 5``.
Results: <output>/<protocol>/<weights-stem>/<dataset>/seed<k>/{config.yaml, log.txt,
train_metrics.jsonl, metrics.json, ...}.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

from common.archs import ARCHS
from common.cli import doc_parser, run_cli
from transfer.recognition.datasets import DATASETS
from transfer.recognition.protocols import REC_PROTOCOLS
from transfer.runner import add_common_args


def get_args_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    p.add_argument(
        "--protocol", choices=list(REC_PROTOCOLS), default="manyshot_linear", help="(%(default)s)"
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=["all"],
        help=f"'all' or any of {', '.join(DATASETS)} (default: all)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="the folder holding the datasets (with --dataset synthetic: where the synthetic "
        "twins are written, default <output>/datasets/recognition)",
    )
    p.add_argument(
        "--arch",
        choices=list(ARCHS),
        default="resnet50",
        help="the ResNet of --weights none (random initialisation) (default: %(default)s)",
    )
    add_common_args(p)
    p.set_defaults(seeds=1)
    for action in p._actions:
        if action.dest == "weights":
            action.nargs = "+"
            action.help = "one or more checkpoints (any format the converter reads) or 'none'"
        elif action.dest == "seeds":
            action.help = (
                "seeds per (weights, dataset) (default: 1; the linear protocol is "
                "deterministic; fine-tuning and few-shot episodes are seeded); seed k uses "
                "seed value 1000+k"
            )
        elif action.dest == "opts":
            action.help = "trailing KEY VALUE protocol overrides, e.g. solver torch"
    return p


def main(args: argparse.Namespace) -> int:
    from transfer.recognition.runner import run_recognition

    return run_recognition(args)


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
