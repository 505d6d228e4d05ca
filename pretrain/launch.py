"""``python -m pretrain --launcher slurm``: one Slurm job of N nodes x G GPUs (submitit).

Each task is one rank (torch.distributed from submitit's environment). On preemption or
time-out the job requeues itself and ``run`` resumes from ``<output>/checkpoint.pth``
(bit-exact from that checkpoint: RNG, sampler position and optimiser state are restored).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.slurm import export_torch_distributed, make_executor
from pretrain.config import PretrainConfig


class SlurmPretrainJob:
    """The submitted callable: one rank of the run; ``checkpoint`` requeues it."""

    def __call__(self, cfg: PretrainConfig):
        from pretrain.trainer import run

        export_torch_distributed()
        out = run(cfg)
        return str(out) if out else None

    def checkpoint(self, cfg: PretrainConfig):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmPretrainJob(), cfg)


def submit(cfg: PretrainConfig, args: argparse.Namespace):
    """Submit the run; returns the submitit job."""
    folder = Path(cfg.output) / "slurm"
    executor = make_executor(
        folder,
        args,
        args.nodes,
        args.gpus_per_node,
        tasks_per_node=max(1, args.gpus_per_node),
        name=f"pretrain-{cfg.method}",
    )
    job = executor.submit(SlurmPretrainJob(), cfg)
    print(
        f"submitted Slurm job {job.job_id} ({args.nodes} node(s) x {args.gpus_per_node} "
        f"GPU(s)); logs under {folder}"
    )
    return job
