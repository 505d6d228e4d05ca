"""Slurm through submitit: one executor recipe for every long-running command."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from common.cli import UserError


def add_slurm_args(
    p: argparse.ArgumentParser, extra: dict[str, str] | None = None
) -> argparse.ArgumentParser:
    """``--launcher`` and the Slurm flags (the same on every long-running command);
    ``extra``: more launchers, name -> help."""
    g = p.add_argument_group("launcher")
    extra = extra or {}
    g.add_argument(
        "--launcher",
        choices=["local", "slurm", *extra],
        default="local",
        help="local: run here; slurm: submit through submitit (needs the 'slurm' "
        "extra: pip install submitit); a preempted job requeues and resumes"
        + "".join(f"; {k}: {v}" for k, v in extra.items()),
    )
    g.add_argument("--slurm-partition", default=None, help="Slurm partition")
    g.add_argument("--slurm-time", type=int, default=24 * 60, help="job time limit, minutes")
    g.add_argument(
        "--slurm-cluster",
        default=None,
        choices=["slurm", "local", "debug"],
        help="submitit cluster (default: chosen by submitit; 'local' runs the job here, for "
        "testing the Slurm path)",
    )
    return p


def make_executor(
    folder: Path,
    args: argparse.Namespace,
    nodes: int,
    gpus_per_node: int,
    tasks_per_node: int,
    name: str,
):
    """A submitit executor for ``nodes`` x ``gpus_per_node`` (logs under ``folder``)."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install -e '.[slurm]'") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=args.slurm_cluster)
    params = {
        "timeout_min": args.slurm_time,
        "nodes": nodes,
        "tasks_per_node": tasks_per_node,
        "name": name,
    }
    if executor.cluster == "slurm":
        params.update(
            slurm_partition=args.slurm_partition,
            gpus_per_node=gpus_per_node,
            cpus_per_task=max(4, 8 * max(gpus_per_node, 1) // tasks_per_node),
            slurm_signal_delay_s=120,
        )
    executor.update_parameters(**params)
    return executor


def export_torch_distributed() -> None:
    """Inside a submitit task: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR / PORT for torch."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export()
    else:
        os.environ.setdefault("WORLD_SIZE", "1")
