"""Running a plan's seeds on this machine: each while its launcher holds the seed's lock,
in a child process each (``transfer.launch``), or, on several machines, as machine 0
decides (``transfer.machines``).

``RunPlan``: the seeds a runner invocation will run; ``seed_status``: what a seed folder
holds (finished / failed / resumable / new); ``launch_local``: the plan's seeds one after
another. This module imports no family and no runner.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.cli import EXIT_INTERRUPTED
from common.locks import held_or_none
from transfer.spec import SeedSpec, seed_lock_path


def seed_status(seed_dir: Path) -> str:
    if (seed_dir / "metrics.json").exists():
        return "finished"
    if (seed_dir / "failed.json").exists():
        return "failed"
    if (seed_dir / "last_checkpoint").exists() or (seed_dir / "checkpoint.pth").exists():
        return "resumable"
    return "new"


@dataclass
class RunPlan:
    """What a runner invocation will do: the seeds to run, the ones already finished."""

    run_dir: Path
    specs: list[SeedSpec] = field(default_factory=list)
    statuses: dict[int, str] = field(default_factory=dict)
    if_locked: str = "skip"  # a seed held by another launcher: skip | wait


def still_to_run(spec: SeedSpec, statuses: dict[int, str]) -> bool:
    """Under the seed's lock: False (and recorded) when another launcher finished it."""
    if seed_status(Path(spec.seed_dir)) == "finished":
        print(f"seed {spec.seed_index}: finished by another launcher, skipped")
        statuses[spec.seed_index] = "finished (elsewhere)"
        return False
    return True


def report_held(spec: SeedSpec, statuses: dict[int, str]) -> None:
    print(
        f"seed {spec.seed_index}: running in another launcher ({seed_lock_path(spec.seed_dir)} "
        "is held), skipped; --if-locked wait waits for it"
    )
    statuses[spec.seed_index] = "running elsewhere"


def launch_local(run: RunPlan, inprocess: bool = False) -> int | None:
    """The planned seeds one after another here, each while holding its lock, in a child
    process each (or in this process: ``inprocess``); EXIT_INTERRUPTED if one was
    interrupted. Several machines: machine 0 takes each lock and decides, the others follow
    (``transfer.machines``)."""
    from transfer.machines import MachineCoordinator

    first = run.specs[0] if run.specs else None
    coordinator = None
    if first is not None and first.num_machines > 1:
        coordinator = MachineCoordinator(first.dist_url, first.machine_rank, first.num_machines)
    try:
        if coordinator is not None and coordinator.rank == 0:
            for k, status in run.statuses.items():  # finished before: planned elsewhere
                coordinator.publish(run.run_dir / f"seed{k}", status)
        for i, spec in enumerate(run.specs):
            code = _launch_one(run, spec, inprocess, coordinator)
            if code in (EXIT_INTERRUPTED, -signal.SIGINT):
                print(
                    f"interrupted during seed {spec.seed_index}: its checkpoint is kept; "
                    "re-run the same command to resume",
                    file=sys.stderr,
                )
                if coordinator is not None and coordinator.rank == 0:
                    for later in run.specs[i + 1 :]:
                        coordinator.publish(later.seed_dir, "stopped")
                return EXIT_INTERRUPTED
            if code is not None:
                run.statuses[spec.seed_index] = "finished" if code == 0 else "failed"
    finally:
        if coordinator is not None:
            coordinator.close()
    return None


def _launch_one(run: RunPlan, spec: SeedSpec, inprocess: bool, coordinator) -> int | None:
    """One seed's processes on this machine; None when it was not run here."""
    from transfer.launch import run_local, run_seed_process
    from transfer.machines import RUN

    k = spec.seed_index
    if coordinator is not None and coordinator.rank > 0:
        decision = coordinator.decision(spec.seed_dir)
        if decision == "stopped":
            return EXIT_INTERRUPTED
        if decision != RUN:
            print(f"seed {k}: {decision} on machine 0, skipped")
            run.statuses[k] = f"{decision} (machine 0)"
            return None
        print(f"seed {k} (seed value {spec.seed}): joining machine 0's run (machine "
              f"{spec.machine_rank})")  # fmt: skip
        return run_seed_process(spec) if inprocess else run_local(spec)
    publish = coordinator.publish if coordinator is not None else (lambda *_: None)
    with held_or_none(seed_lock_path(spec.seed_dir), wait=run.if_locked == "wait") as lock:
        if lock is None:
            report_held(spec, run.statuses)
            publish(spec.seed_dir, "running elsewhere")
            return None
        if not still_to_run(spec, run.statuses):
            publish(spec.seed_dir, "finished")
            return None
        publish(spec.seed_dir, RUN)
        resumable = seed_status(Path(spec.seed_dir)) == "resumable"
        print(f"seed {k} (seed value {spec.seed}): {'resuming' if resumable else 'starting'}")
        return run_seed_process(spec) if inprocess else run_local(spec, lock)
