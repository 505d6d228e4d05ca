#!/usr/bin/env python
"""ImageNet classification protocols (linear, multi-layer linear, kNN, semi-supervised), seeds.

    python transfer/run_linear.py --weights care_r50.pth --protocol linear_care --seeds 3 \\
        --data /data/imagenet
    python transfer/run_linear.py --weights care_r50.pth --protocol knn --data /data/imagenet
    python transfer/run_linear.py --weights care_r50.pth --protocol semisup_1pct \\
        --data /data/imagenet --subset-file imagenet_subsets/1percent.txt
    python transfer/run_linear.py --weights care_r50.pth --protocol linear_care --seeds 2 \\
        --dataset synthetic
    torchrun --nproc-per-node 8 transfer/run_linear.py --weights care_r50.pth \\
        --protocol linear_care --data /data/imagenet

Protocols (transfer/classification/protocols.py, docs/protocols.md): linear_care (CARE's, Linear +
BatchNorm1d, 80 epochs cosine), linear_moco (MoCo's, 100 epochs, steps 60/80),
linear_multilayer (MaskCo's conv1..conv5 probes), knn (GSG's, k 20 and 200), semisup_1pct
and semisup_10pct (SimCLR's fine-tuning on its label subsets). Trailing KEY VALUE pairs
override protocol settings, e.g. ``epochs 10 batch_size 128``. Results:
<output>/<protocol>/<weights-stem>/seed<k>/{config.yaml, log.txt, train_metrics.jsonl,
environment.json, checkpoint.pth, metrics.json}.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

from common.archs import ARCHS
from common.cli import doc_parser, run_cli
from transfer.classification.protocols import CLS_PROTOCOLS
from transfer.runner import add_common_args


def get_args_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    p.add_argument(
        "--protocol", choices=list(CLS_PROTOCOLS), default="linear_care", help="(%(default)s)"
    )
    p.add_argument(
        "--data",
        default=None,
        help="ImageNet-layout root ROOT/{train,val}/<class>/, or a CIFAR folder "
        "(cifar-10-batches-py/ or cifar-100-python/, or one holding it: train / test batches) "
        "(with --dataset synthetic: a synthetic ImageFolder instead of the built-in shapes)",
    )
    p.add_argument(
        "--subset-file",
        default=None,
        help="semi-supervised: SimCLR's 1percent.txt / 10percent.txt (default: in --data)",
    )
    p.add_argument(
        "--arch",
        choices=list(ARCHS),
        default="resnet50",
        help="the ResNet of --weights none (random initialisation); otherwise read from the "
        "checkpoint (default: %(default)s)",
    )
    add_common_args(p)
    p.set_defaults(seeds=3)
    for action in p._actions:
        if action.dest == "seeds":
            action.help = "number of seeds (default: 3); seed k uses seed value 1000+k"
        elif action.dest == "amp":
            action.help = "bf16 autocast (CUDA only; off by default: the protocols are fp32)"
        elif action.dest == "opts":
            action.help = "trailing KEY VALUE protocol overrides, e.g. epochs 10"
    return p


def main(args: argparse.Namespace) -> int:
    from transfer.classification.runner import run_cls_protocol

    return run_cls_protocol(args)


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
