"""Starting one seed: its processes here, in a child process of the launcher.

A seed runs in its own process, which starts the seed's processes (one per GPU, or its
``--num-procs`` CPU processes: ``common.processes.start_workers``), so a failing seed never
takes the others down; ``python -m transfer.launch --seed-spec FILE`` is that process.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import importlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import traceback

from common.atomic import atomic_write_json
from common.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Interrupted
from common.processes import WorkerFailed, start_workers
from transfer.spec import SeedSpec


def seed_function(spec: SeedSpec):
    """The family's per-process function named by ``spec.entry`` ("module:function")."""
    module, _, name = spec.entry.partition(":")
    if not module or not name:
        raise ValueError(f"seed spec without a valid entry: {spec.entry!r}")
    return getattr(importlib.import_module(module), name)


def run_seed_process(spec: SeedSpec) -> int:
    """Train one seed on its processes (one per GPU, or ``num_procs`` on CPU, on each of
    ``num_machines``); a failure is recorded in ``failed.json``."""
    train = seed_function(spec)
    try:
        start_workers(
            train,
            (spec,),
            spec.procs_per_machine,
            num_machines=spec.num_machines,
            machine_rank=spec.machine_rank,
            dist_url=spec.dist_url,
            cuda=spec.num_gpus > 0,
        )
    except (Interrupted, KeyboardInterrupt) as e:
        print(f"seed {spec.seed_index}: {e or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - any failure of a seed is recorded, others go on
        kind, trace = type(e).__name__, traceback.format_exc()
        if isinstance(e, WorkerFailed):  # a worker's own error, as one process reports it
            kind, trace = e.kind, e.trace
        if spec.machine_rank == 0:
            atomic_write_json(
                Path(spec.seed_dir) / "failed.json",
                {
                    "error": f"{kind}: {e}",
                    "traceback": trace,
                    "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
        print(f"seed {spec.seed_index} FAILED: {kind}: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


RUNNING: dict[subprocess.Popen, threading.Event] = {}  # run_local's seed processes: ended


def die_with_parent() -> None:
    """In a child before it runs (``preexec_fn``): SIGTERM when its parent dies, however it
    dies (Linux's PR_SET_PDEATHSIG); the seed then checkpoints and stops."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the inherited lock still keeps reruns out
        pass


def lock_fds(lock) -> tuple[int, ...]:
    """A duplicate of a held OS lock's open file, for the child to inherit: the lock is then
    released only when the child has exited too (a flock belongs to the open file, not to
    the process). A duplicate, because filelock closes its own descriptors in a forked
    child; the caller closes it once the child is started."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    return (os.dup(fd),) if isinstance(fd, int) else ()


def run_local(spec: SeedSpec, lock=None) -> int:
    """Run one seed in a child process; SIGTERM to us is forwarded to it. The child holds
    the seed's ``lock`` with us and gets SIGTERM if we die: a seed never outlives its
    launcher unseen, and never has two writers."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec.to_json(), f)
    fds = lock_fds(lock)
    try:
        child = subprocess.Popen([sys.executable, "-m", "transfer.launch", "--seed-spec", f.name],
                                 pass_fds=fds, preexec_fn=die_with_parent)  # fmt: skip
    finally:
        for fd in fds:
            os.close(fd)
    # a thread reaps the child, so that a signal handler of this process may wait for it too
    # (``stop_running``): Popen.wait in the interrupted main thread would hold its lock
    ended = threading.Event()
    reaper = threading.Thread(target=lambda: (child.wait(), ended.set()), daemon=True)
    reaper.start()
    RUNNING[child] = ended
    previous = signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                if ended.wait(0.5):
                    return child.returncode
            except KeyboardInterrupt:  # the child got SIGINT too: let it checkpoint
                continue
    finally:
        RUNNING.pop(child, None)
        signal.signal(signal.SIGTERM, previous)
        os.unlink(f.name)


def stop_running(timeout_s: float) -> list[int | None]:
    """SIGTERM to every seed process ``run_local`` started here; wait (``timeout_s`` at
    most) for each to checkpoint and exit; their exit codes (None: still running). Safe
    in a signal handler (submitit's checkpoint)."""
    running = list(RUNNING.items())
    for child, _ in running:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    return [child.returncode if ended.wait(max(0.0, deadline - time.monotonic())) else None
            for child, ended in running]  # fmt: skip


def _seed_spec_main() -> None:
    """``python -m transfer.launch --seed-spec FILE``: the child process of one seed."""
    p = argparse.ArgumentParser()
    p.add_argument("--seed-spec", required=True)
    spec = SeedSpec.from_json(json.loads(Path(p.parse_args().seed_spec).read_text()))
    sys.exit(run_seed_process(spec))


if __name__ == "__main__":
    _seed_spec_main()
