"""``python -m pretrain``: self-supervised pretraining (CARE, BYOL, SimSiam, GSG, MaskCo).

    python -m pretrain --method care --arch resnet50 --data /path/to/imagenet --recipe imagenet
    torchrun --nproc_per_node=8 -m pretrain --method care --data /path/to/imagenet
    python -m pretrain --recipe shapes-cpu --method byol --num-procs 2      # 2 CPU processes
    python -m pretrain --method care --data /path/to/imagenet --launcher slurm --nodes 2 \\
        --gpus-per-node 8
    python -m pretrain --recipe shapes-cpu --method byol --arch resnet18

Without --data it trains on the built-in synthetic shapes (ImageFolder layout, written under
<output>/shapes). Every flag defaults to the method's paper value unless marked "ours";
"per method" flags take the method's value unless given (docs/methods.md lists them).
A recipe (pretrain/recipes.py) sets several flags at once; flags given here win.
Re-running with the same --output resumes from <output>/checkpoint.pth.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
from dataclasses import fields

from common.cli import doc_parser, run_cli
from common.flags import add_flags, given
from common.slurm import add_slurm_args
from pretrain.base import HeadSizes
from pretrain.config import PretrainConfig
from pretrain.methods import METHODS, all_option_classes
from pretrain.recipes import RECIPES, recipe_config

SKIP = ("options", "recipe")


def _own_fields(cls) -> tuple[str, ...]:
    inherited = {
        f.name
        for base in cls.__mro__[1:]
        if hasattr(base, "__dataclass_fields__")
        for f in fields(base)
    }
    return tuple(f.name for f in fields(cls) if f.name not in inherited)


def _group_title(cls) -> str:
    if cls is HeadSizes:
        return "heads (every method)"
    users = sorted(m for m, c in METHODS.items() if issubclass(c.Options, cls))
    return f"{cls.__name__} ({', '.join(users)})"


def get_args_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    p.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default=None,
        help="named settings (pretrain/recipes.py); flags given here win",
    )
    add_flags(p, PretrainConfig, skip=SKIP)
    for cls in all_option_classes():
        add_flags(p.add_argument_group(_group_title(cls)), cls, only=_own_fields(cls))
    p.add_argument(
        "--if-locked",
        choices=["skip", "wait"],
        default="skip",
        help="a run in --output that another launcher is training (its <output>.lock is "
        "held): skip it, or wait for it and then resume it (default: %(default)s)",
    )
    p.add_argument(
        "--num-procs",
        type=int,
        default=1,
        help="CPU only: train as N processes of this machine (one gloo group, each with "
        "--batch-size images and its share of the cores), as torchrun would start them; on "
        "GPUs the processes are torchrun's --nproc_per_node (default: 1)",
    )
    add_slurm_args(p)
    p.add_argument("--nodes", type=int, default=1, help="Slurm: nodes (default: 1)")
    p.add_argument(
        "--gpus-per-node",
        type=int,
        default=1,
        help="Slurm: GPUs per node, one rank each (default: 1)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The run's config: recipe, then the flags given (method options checked against
    the chosen method: a flag of another method is an error)."""
    settings = given(
        args, PretrainConfig, tuple(f.name for f in fields(PretrainConfig) if f.name not in SKIP)
    )
    options = {}
    for cls in all_option_classes():
        options.update(given(args, cls, _own_fields(cls)))
    return recipe_config(args.recipe, options=options, **settings)


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.launcher == "slurm":
        from pretrain.launch import submit

        job = submit(cfg, args)
        if args.slurm_cluster in ("local", "debug"):
            job.result()
        return 0
    from pretrain.trainer import run

    if args.num_procs > 1:
        return _run_on_processes(cfg, args)
    run(cfg, args.if_locked)
    return 0


def _run_on_processes(cfg: PretrainConfig, args: argparse.Namespace) -> int:
    """``--num-procs N``: N CPU processes (torchrun's environment, a gloo group)."""
    import os

    import torch

    from common.cli import ConfigError
    from common.processes import start_workers
    from pretrain.trainer import run

    if torch.cuda.is_available():
        raise ConfigError(
            f"--num-procs {args.num_procs} is for CPU machines; on GPUs start one process per "
            f"GPU: torchrun --nproc_per_node={args.num_procs} -m pretrain ..."
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--num-procs under torchrun: pass one of them (torchrun's processes)")
    start_workers(run, (cfg, args.if_locked), args.num_procs)
    return 0


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
