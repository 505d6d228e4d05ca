"""care-bench: evaluate checkpoints with a paper's suite: plan, run, status.

    care-bench plan --suite care --weights care_r50.pth byol_r50.pth
    care-bench run --suite care --weights care_r50.pth byol_r50.pth --output runs/care
    care-bench status --output runs/care --watch
    care-bench run --suite quick --dataset synthetic --weights a.pth b.pth --output runs/quick

Suites: care, gsg, maskco, quick (bench/suites/*.yaml), or the path of your own YAML file.
`plan` lists every checkpoint x protocol x dataset with its finished seeds and the
GPU-hours left, from the measured throughputs in bench/throughputs.json. `run` runs the
remaining seeds with the protocols' own runners (transfer/run_*.py): one seed per free GPU
at once, or one job per seed with --launcher slurm; re-running continues where it stopped.
`status` shows every seed (finished / running / failed / partial / pending) and rebuilds
<output>/tables/report.html, which `run` also rebuilds whenever a seed finishes.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

from common.cli import doc_parser, run_cli
from common.metrics import LOGGERS
from common.slurm import add_slurm_args
from transfer.keep import KEEP_CHOICES


def _suite_args(p: argparse.ArgumentParser, weights_required: bool = True) -> None:
    p.add_argument("--suite", required=weights_required,
                   help="care, gsg, maskco, quick, or a suite .yaml file")  # fmt: skip
    p.add_argument("--weights", nargs="+", required=weights_required,
                   help="checkpoints (any format the converter reads) or 'none'; the first "
                   "is the comparison's base")  # fmt: skip
    p.add_argument("--output", type=Path, default=Path("output"),
                   help="results root (default: %(default)s)")  # fmt: skip
    p.add_argument("--dataset", choices=["real", "synthetic"], default="real",
                   help="synthetic: every protocol's smoke config on the built-in synthetic "
                   "data (CPU); real: the datasets (default: %(default)s)")  # fmt: skip


def _plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="what is left and its GPU-hours")
    _suite_args(p)
    p.add_argument("--gpu", default=None,
                   help="GPU kind the hours are for, as in bench/throughputs.json (H100, H200, "
                   "cpu; default: the visible GPU's, else the kind measured most)")  # fmt: skip
    p.add_argument("--amp", action="store_true", help="mixed-precision throughputs")
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node for the wall time (8)")
    p.add_argument("--nodes", type=int, default=1, help="nodes for the wall time (1)")
    p.add_argument("--throughputs", type=Path, default=None,
                   help="throughput file (default: bench/throughputs.json)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="the plan as JSON")


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="run every remaining seed")
    _suite_args(p)
    p.add_argument("--gpus", type=int, default=None,
                   help="seeds at once, one GPU each (default: every free GPU; without GPUs "
                   "1, or N CPU worker processes)")  # fmt: skip
    p.add_argument("--num-gpus", type=int, default=None,
                   help="GPUs per seed, passed to the runners (default: 1 per worker)")  # fmt: skip
    p.add_argument("--imagenet", type=Path, default=None, help="ImageNet root (classification)")
    p.add_argument("--recognition-data", type=Path, default=None,
                   help="ssl-transfer's data/ folder (recognition protocols)")  # fmt: skip
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    p.add_argument("--keep-checkpoints", choices=KEEP_CHOICES, default="final")
    p.add_argument("--logger", choices=LOGGERS, default="tensorboard")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow checkpoints holding Python objects (trusted files)")  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    add_slurm_args(p, {"inprocess": "each seed in its runner's process (small runs)"})


def _status_parser(sub) -> None:
    p = sub.add_parser("status", help="every seed's state; rebuilds the report")
    _suite_args(p, weights_required=False)
    p.add_argument("--watch", type=float, nargs="?", const=10.0, default=None,
                   metavar="SECONDS", help="refresh every SECONDS (10) until stopped")  # fmt: skip
    p.add_argument("--json", action="store_true", help="the status as JSON")
    p.add_argument("--no-report", action="store_true", help="do not rebuild report.html")


def get_args_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    _plan_parser(sub)
    _run_parser(sub)
    _status_parser(sub)
    return p


def main(args: argparse.Namespace) -> int:
    from bench import commands

    return {"plan": commands.plan, "run": commands.run, "status": commands.status}[args.command](
        args
    )


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
