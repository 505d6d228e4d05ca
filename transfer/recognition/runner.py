"""Planning the results of a recognition protocol (``transfer/run_recognition.py``): every
weights file x every dataset is one run folder ``<output>/<protocol>/<stem>/<dataset>/``
with its seeds (``seed0`` for the deterministic linear protocol), launched, skipped,
locked and summarised by the shared core (``transfer.runner``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.archs import get_arch
from common.cli import EXIT_INTERRUPTED, EXIT_OK, ConfigError
from transfer.recognition.datasets import CDFSL, DATASETS, find_dataset
from transfer.recognition.protocols import resolve
from transfer.runner import (
    RunPlan,
    add_seeds,
    config_overrides,
    devices,
    launch_and_summarise,
    resolve_weights,
    seed_template,
)

ENTRY = "transfer.recognition.run:run_recognition_seed"


def protocol_datasets(kind: str) -> list[str]:
    """The datasets a protocol runs on: the 11 many-shot ones; few-shot adds CD-FSL's four
    and leaves out multi-label VOC2007 (ssl-transfer's few-shot loader cannot take it)."""
    if kind == "fewshot":
        return list(CDFSL) + [n for n in DATASETS if n != "voc2007"]
    return list(DATASETS)


def dataset_names(names: list[str], kind: str = "manyshot_linear") -> list[str]:
    known = protocol_datasets(kind)
    if names == ["all"]:
        return known
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(f"unknown dataset(s) {bad} for {kind}; choose from all, "
                          f"{', '.join(known)}")  # fmt: skip
    return list(dict.fromkeys(names))


def data_root(args: argparse.Namespace, output: Path) -> Path:
    """``--data``, or the synthetic twins (written when absent) for ``--dataset synthetic``."""
    if args.dataset == "synthetic":
        from synthetic.recognition import write_recognition

        return write_recognition(
            Path(args.data) if args.data else output / "datasets" / "recognition"
        )
    if not args.data:
        raise ConfigError(
            "--data ROOT is required: the folder holding Aircraft/, Caltech101/, ... "
            "(ssl-transfer's data/) or torchvision's dataset folders"
        )
    return Path(args.data)


def plan_recognition(args: argparse.Namespace) -> list[RunPlan]:
    """Check every dataset's layout and every weights file, then one plan per pair."""
    smoke = args.dataset == "synthetic"
    num_gpus, device = devices(args)
    opts = config_overrides(args)
    protocol = resolve(args.protocol, smoke, opts)  # validates the overrides early
    output = args.output.resolve()
    root = data_root(args, output)
    names = dataset_names(args.datasets, protocol.kind)
    for name in names:  # every layout is checked before any work starts
        find_dataset(name, root)
    plans = []
    for w in args.weights:
        weights = resolve_weights(w, output, args.allow_pickle)
        arch = None
        if not weights["path"]:
            arch = get_arch(args.arch).key
            weights["stem"] = f"random_init_{arch.replace('resnet', 'r')}"
        template = seed_template(
            args, args.protocol, protocol.name, weights, opts, num_gpus, device,
            entry=ENTRY, family="recognition", data=str(root.resolve()), arch=arch,
            allow_pickle=args.allow_pickle, cache_dir=str(output / "features"),
        )  # fmt: skip
        template = template.replace(
            weights_info={**template.weights_info, "arch": weights.get("arch")}
        )
        for name in names:
            run = RunPlan(output / protocol.name / weights["stem"] / name)
            add_seeds(run, args.seeds, template.replace(task=name))
            plans.append(run)
        print(f"{protocol.name}{' (smoke, synthetic data)' if smoke else ''}: "
              f"{weights['stem']} on {len(names)} dataset(s) of {root}")  # fmt: skip
    return plans


def run_recognition(args: argparse.Namespace) -> int:
    """Every (weights, dataset) in turn; the first non-zero exit code (an interruption
    stops at once)."""
    code = EXIT_OK
    for run in plan_recognition(args):
        print(f"== {run.run_dir.parent.name} / {run.run_dir.name}")
        c = launch_and_summarise(run, args)
        if c == EXIT_INTERRUPTED:
            return c
        code = code or c
    return code
