"""The shared core of every transfer family's runner: weights, seeds, locks, launching.

Layout of the results (what ``tables`` reads)::

    <output>/weights/<stem>-<sha12>.pkl (+ .json report)   converted, cached by content hash
    <output>/<protocol>/<weights-stem>/seed<k>/
        config.yaml  log.txt  train_metrics.jsonl  environment.json  sessions.json
        metrics.json                                        written last: the seed is done
        failed.json                                         when the seed failed (NaN, ...)

Seed ``k`` uses the recorded seed value ``SEED_BASE + k``. A finished seed is skipped; an
unfinished one resumes from its last checkpoint. A family's planner (``transfer.<family>
.runner``) checks its inputs and lists the seeds (``transfer.spec.SeedSpec``, whose
``entry`` names the family's per-process function); each runs in its own process
(``transfer.seeds.launch_local``; its processes: one per GPU, or ``--num-procs`` on a CPU,
on ``--num-machines`` machines) or Slurm job (``launch_slurm``; ``transfer.slurmjob``), so a
failing seed never takes the others down. A seed runs only while its launcher holds the
seed folder's lock (``seed<k>.lock`` beside it), so two launches on one output folder train
each seed once: the second skips (or, with ``--if-locked wait``, waits for) what the first
holds.
This module imports no family.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common.atomic import atomic_write_json
from common.cli import EXIT_FAILED, EXIT_OK, ConfigError, InputNotFound
from common.locks import waiting_lock
from common.metrics import LOGGERS
from common.slurm import add_slurm_args
from transfer.keep import KEEP_CHOICES
from transfer.seeds import RunPlan, launch_local, report_held, seed_status, still_to_run
from transfer.spec import SeedSpec

__all__ = ["RunPlan", "launch_local", "report_held", "seed_status", "still_to_run"]

SEED_BASE = 1000
RANDOM_INIT = ("none", "random")


def seed_value(k: int) -> int:
    """The fixed seed of seed index ``k`` (recorded in config.yaml and metrics.json)."""
    return SEED_BASE + k


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags shared by every runner (docs/protocols.md defaults): what to run, where it
    runs, what is kept and logged, then the trailing config overrides."""
    add_run_args(p)
    add_placement_args(p)
    add_output_args(p)
    p.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="trailing KEY VALUE config overrides, e.g. SOLVER.MAX_ITER 100",
    )
    return p


def add_run_args(p: argparse.ArgumentParser) -> None:
    """What to run: the weights, the seeds, the data."""
    p.add_argument(
        "--weights",
        required=True,
        help="pretrained backbone: a pretraining checkpoint (.pth/.pt/.tar, converted "
        "and cached), a Detectron2 .pkl, or 'none' for random initialisation",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=5,
        help=f"number of seeds (protocol: 5 trials); seed k uses seed value {SEED_BASE}+k",
    )
    p.add_argument(
        "--dataset",
        choices=["real", "synthetic"],
        default="real",
        help="real: $DETECTRON2_DATASETS; synthetic: built-in shapes with the "
        "protocol's smoke config (small images, few iterations, CPU-friendly)",
    )
    p.add_argument(
        "--shapes-root",
        type=Path,
        default=None,
        help="where the synthetic data is written (default: <output>/datasets/shapes)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow weights files holding Python objects (trusted files only)",
    )


def add_placement_args(p: argparse.ArgumentParser) -> None:
    """Where it runs: GPUs, machines, precision, a second launcher, Slurm."""
    p.add_argument(
        "--num-gpus",
        type=int,
        default=None,
        help="GPUs per machine, one process each (default: all visible; 0 = CPU)",
    )
    p.add_argument(
        "--num-procs",
        type=int,
        default=1,
        help="CPU only (no GPU visible, or --num-gpus 0): processes per machine, one "
        "torch.distributed (gloo) group as on GPUs, each with its share of the cores "
        "(default: 1); with GPUs the process count is --num-gpus",
    )
    p.add_argument("--num-machines", type=int, default=1, help="machines (default: 1)")
    p.add_argument("--machine-rank", type=int, default=0, help="this machine's rank")
    p.add_argument(
        "--dist-url",
        default="auto",
        help="torch.distributed init URL, e.g. tcp://host:port (default: auto, single machine)",
    )
    p.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision (off by default: the protocol is fp32; CUDA only)",
    )
    p.add_argument(
        "--if-locked",
        choices=["skip", "wait"],
        default="skip",
        help="a seed another launcher is running (its seed<k>.lock is held): skip it, or "
        "wait for it and then skip it if finished / resume it if not (default: %(default)s)",
    )
    add_slurm_args(
        p,
        {
            "inprocess": "each seed in this process, one after another (no child process "
            "per seed: saves the imports on small runs, such as the demo's; a seed that "
            "crashes the interpreter takes the run down)"
        },
    )


def add_output_args(p: argparse.ArgumentParser) -> None:
    """What is written: the results root, the checkpoints kept, the loggers."""
    p.add_argument(
        "--output", type=Path, default=Path("output"), help="results root (default: %(default)s)"
    )
    p.add_argument(
        "--keep-checkpoints",
        choices=KEEP_CHOICES,
        default="final",
        help="what a finished seed keeps: every resumable checkpoint (all), the final weights "
        "without the optimiser's state (final), or no checkpoint (none); default: %(default)s",
    )
    p.add_argument(
        "--logger",
        choices=LOGGERS,
        default="tensorboard",
        help="besides each seed's train_metrics.jsonl: TensorBoard events in its folder "
        "(tensorboard), also Weights & Biases, one group per weights file and one run per "
        "protocol and seed (wandb: pip install -e '.[wandb]'), or nothing else (none); "
        "default: %(default)s",
    )


def resolve_weights(weights: str, output: Path, allow_pickle: bool = False) -> dict:
    """Convert (or reuse the cached conversion of) ``weights``.

    Returns {"path": pkl or "", "stem", "source", "sha256", "meta"}.
    """
    from transfer.convert import convert_file, file_sha256, summarise

    if weights.lower() in RANDOM_INIT:
        return {
            "path": "",
            "stem": "random_init",
            "source": None,
            "sha256": None,
            "meta": {"method": "Rand Init"},
        }
    src = Path(weights)
    if not src.is_file():
        raise InputNotFound(
            f"--weights {weights}: no such file (or pass 'none' for random initialisation)"
        )
    sha = file_sha256(src)
    stem = src.stem
    cached = output / "weights" / f"{stem}-{sha[:12]}.pkl"
    report_path = cached.with_suffix(".json")
    with waiting_lock(cached.with_suffix(".lock")):  # a second launcher waits, then reuses
        if not (cached.exists() and report_path.exists()):
            report = convert_file(src, cached, allow_pickle=allow_pickle)
            atomic_write_json(report_path, report)
            print(summarise(report))
        else:
            report = json.loads(report_path.read_text())
            print(f"weights: reusing {cached} (converted from {src})")
    return {
        "path": str(cached.resolve()),
        "stem": stem,
        "source": str(src.resolve()),
        "sha256": sha,
        "meta": report.get("meta", {}),
        "arch": report.get("arch"),
    }


def config_overrides(args: argparse.Namespace) -> list[str]:
    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    if len(opts) % 2:
        raise ConfigError(f"config overrides must be KEY VALUE pairs, got {opts}")
    return opts


def devices(args: argparse.Namespace) -> tuple[int, str]:
    """(GPUs per machine, device) from the flags and what is visible."""
    import torch

    num_gpus = torch.cuda.device_count() if args.num_gpus is None else args.num_gpus
    if args.amp and not torch.cuda.is_available():
        raise ConfigError("--amp needs CUDA; drop --amp on CPU")
    if num_gpus > torch.cuda.device_count() and args.launcher != "slurm":
        raise ConfigError(f"--num-gpus {num_gpus} but {torch.cuda.device_count()} GPUs visible")
    if args.num_machines > 1 and args.dist_url == "auto":
        raise ConfigError(
            "--num-machines > 1 needs --dist-url tcp://HOST:PORT of machine 0, the same on "
            "every machine (PORT and PORT+1 free there)"
        )
    procs = getattr(args, "num_procs", 1)
    if procs < 1:
        raise ConfigError(f"--num-procs {procs}: give 1 or more processes")
    if procs > 1 and num_gpus > 0:
        raise ConfigError(
            f"--num-procs {procs} is for CPU runs; on GPUs the processes are --num-gpus "
            f"({num_gpus}), or pass --num-gpus 0 to run on {procs} CPU processes"
        )
    return num_gpus, "cuda" if num_gpus > 0 else "cpu"


def seed_template(
    args: argparse.Namespace,
    protocol: str,
    protocol_name: str,
    weights: dict,
    opts: list[str],
    num_gpus: int,
    device: str,
    *,
    entry: str,
    family: str,
    **extra,
) -> SeedSpec:
    """The spec every seed of a run shares (``add_seeds`` fills in each seed's values).

    ``entry``: the family's per-process function as ``module:function``; ``extra``: further
    ``SeedSpec`` fields of the family."""
    return SeedSpec(
        entry=entry,
        family=family,
        protocol=protocol,
        protocol_name=protocol_name,
        smoke=args.dataset == "synthetic",
        dataset=args.dataset,
        shapes_root=extra.pop("shapes_root", None),
        weights=weights["path"],
        weights_info={k: weights[k] for k in ("stem", "source", "sha256", "meta")},
        seed_index=0,
        seed=seed_value(0),
        seed_dir="",
        opts=opts,
        num_gpus=num_gpus,
        num_procs=getattr(args, "num_procs", 1),
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        amp=args.amp,
        device=device,
        logger=getattr(args, "logger", "tensorboard"),
        keep_checkpoints=getattr(args, "keep_checkpoints", "final"),
        **extra,
    )


def add_seeds(run: RunPlan, n: int, template: SeedSpec) -> None:
    """Seeds 0 .. n-1 of ``run``: a finished one is reported and skipped, a failed one is
    retried, the others get ``template`` with their index, seed value and folder."""
    for k in range(n):
        seed_dir = run.run_dir / f"seed{k}"
        status = seed_status(seed_dir)
        if status == "finished":
            print(f"seed {k}: finished, skipped ({seed_dir / 'metrics.json'})")
            run.statuses[k] = "finished (earlier)"
            continue
        if status == "failed":
            (seed_dir / "failed.json").unlink()  # a re-run retries a failed seed
        run.specs.append(template.replace(seed_index=k, seed=seed_value(k), seed_dir=str(seed_dir)))


def launch_slurm(run: RunPlan, args: argparse.Namespace) -> bool:
    """One Slurm job per planned seed; True when the jobs ran here (local / debug cluster)."""
    from transfer.slurmjob import submit_slurm

    jobs = submit_slurm(run.specs, args, run.run_dir / "slurm")
    for spec, job in zip(run.specs, jobs):
        print(f"seed {spec.seed_index}: submitted Slurm job {job.job_id}")
    if args.slurm_cluster not in ("local", "debug"):
        print("re-run the same command after the jobs end to see the summary")
        return False
    for spec, job in zip(run.specs, jobs):
        run.statuses[spec.seed_index] = "finished" if job.result() == 0 else "failed"
    return True


def launch_and_summarise(run: RunPlan, args: argparse.Namespace) -> int:
    """Launch the planned seeds (here or as Slurm jobs), then one line per seed."""
    run.if_locked = getattr(args, "if_locked", "skip")
    if args.launcher == "slurm":
        if not launch_slurm(run, args):
            return EXIT_OK
    elif (code := launch_local(run, args.launcher == "inprocess")) is not None:
        return code
    return summarise_run(run.run_dir, run.statuses)


def headline(m: dict) -> str:
    """The headline numbers of a metrics.json: a family's own ``headline`` {name: value},
    APs of a detector, accuracies of a classifier."""
    if "headline" in m:
        return "  ".join(f"{k} {v:.2f}" for k, v in m["headline"].items())
    if "cls" in m:
        return "  ".join(
            f"{k} {v:.2f}" for k, v in m["cls"].items() if "top1" in k and k != "best_top1"
        )
    return "  ".join(
        f"{task} AP {m[task]['AP']:.2f} AP50 {m[task]['AP50']:.2f}"
        for task in ("bbox", "segm")
        if task in m
    )


def summarise_run(run_dir: Path, statuses: dict[int, str]) -> int:
    """Print one line per seed with its headline metrics; non-zero if any seed failed."""
    failed = [k for k, s in statuses.items() if s == "failed"]
    for k in sorted(statuses):
        seed_dir = run_dir / f"seed{k}"
        if statuses[k] == "running elsewhere":
            print(f"seed {k}: {statuses[k]}")
        elif (seed_dir / "metrics.json").exists():
            m = json.loads((seed_dir / "metrics.json").read_text())
            print(f"seed {k}: {statuses[k]:<18} {headline(m)}  ({m['wall_time_s']:.0f} s)")
        else:
            err = ""
            if (seed_dir / "failed.json").exists():
                err = json.loads((seed_dir / "failed.json").read_text())["error"]
            print(f"seed {k}: {statuses[k]:<18} {err}")
    if failed:
        print(
            f"FAILED seeds: {failed} (details in seed<k>/failed.json; a re-run retries them)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
