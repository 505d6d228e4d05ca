"""One Slurm job per seed (submitit): requeued on preemption / time-out, resumed from the
seed's checkpoint; a multi-node seed's ranks from Slurm.

Each node's task runs the seed as ``transfer.seeds.launch_local`` does (machine 0 takes
the seed's lock and decides, the other nodes follow it), in a child process. When Slurm
announces the end (submitit's USR2 signal: preemption or the time limit), ``checkpoint``
asks that process to stop (SIGTERM: it saves its checkpoint at the end of the current
iteration), waits for it, and requeues the job, which then resumes the seed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from common.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from common.slurm import make_executor
from transfer.launch import stop_running
from transfer.seeds import RunPlan, launch_local
from transfer.spec import SeedSpec

STOP_WAIT_S = 80.0  # submitit signals 90 s before the time limit


def slurm_placement(spec: SeedSpec, node: int, hosts: list[str], job_id: str) -> SeedSpec:
    """This node's rank, and on several nodes the rendezvous URL every node computes alike
    (the first node's address, a port from the job id)."""
    spec = spec.replace(machine_rank=node)
    if spec.num_machines > 1:
        host = os.environ.get("SLURM_LAUNCH_NODE_IPADDR") or hosts[0]
        port = 29500 + 2 * (int(str(job_id).split("_")[0]) % 1000)  # and port + 1
        spec = spec.replace(dist_url=f"tcp://{host}:{port}")
    return spec


class SlurmSeedJob:
    """The submitted callable: one node's part of one seed."""

    def __call__(self, spec: SeedSpec) -> int:
        import submitit

        env = submitit.JobEnvironment()
        spec = slurm_placement(spec, env.node, env.hostnames, env.job_id)
        run = RunPlan(Path(spec.seed_dir).parent, specs=[spec])
        if launch_local(run) == EXIT_INTERRUPTED:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if run.statuses.get(spec.seed_index) == "failed" else EXIT_OK

    def checkpoint(self, spec: SeedSpec):
        import submitit

        stop_running(STOP_WAIT_S)  # the seed's checkpoint is written before the requeue
        return submitit.helpers.DelayedSubmission(SlurmSeedJob(), spec)


def submit_slurm(specs: list[SeedSpec], args: argparse.Namespace, folder: Path) -> list:
    """One Slurm job per seed (``--num-machines`` nodes x ``--num-gpus`` GPUs each)."""
    gpus = max(args.num_gpus or 0, 0)
    executor = make_executor(
        folder,
        args,
        nodes=args.num_machines,
        gpus_per_node=gpus,
        tasks_per_node=1,
        name=folder.parent.name,
    )
    return [executor.submit(SlurmSeedJob(), spec) for spec in specs]
