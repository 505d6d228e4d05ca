"""One run as a group of worker processes: one per GPU, or ``--num-procs`` on a CPU machine.

``start_workers(fn, args, procs, ...)`` starts ``procs`` processes on this machine (ranks
``machine_rank * procs ..``) that join one ``torch.distributed`` group, NCCL on GPUs and
gloo on CPUs, and call ``fn(*args)``; the same code path either way, as detectron2's
``launch`` (which needs CUDA) does it on GPUs: each worker pins its GPU, detectron2's
per-machine group is created, and the environment torchrun would give (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) is set, so code written
for torchrun runs unchanged. One process in all: ``fn(*args)`` here.

A worker that fails stops the others (they would wait in a collective forever) and is
raised here as ``WorkerFailed`` with the worker's own error; a stopped worker (SIGINT /
SIGTERM, forwarded to every worker) is raised as ``Interrupted``. On a CPU each worker
gets the machine's cores divided by ``procs`` threads, unless ``OMP_NUM_THREADS`` says.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import traceback
from datetime import timedelta

from common.cli import Interrupted, UserError

TIMEOUT = timedelta(minutes=30)  # detectron2's default: a rank waits this long for the others
GRACE_S = 10.0  # how long the other workers get to stop after one failed


class WorkerFailed(RuntimeError):
    """A worker process raised ``kind``: ``message``; ``str()`` is the worker's error line."""

    def __init__(self, kind: str, message: str, trace: str = ""):
        super().__init__(message)
        self.kind, self.trace = kind, trace


class WorkerUserError(WorkerFailed, UserError):
    """A worker's ``UserError`` (bad input, a NaN loss): reported in one line, as one
    process reports it."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def resolve_url(dist_url: str, num_machines: int) -> str:
    """``auto`` -> a free localhost port (one machine only); else the URL as given."""
    if dist_url != "auto":
        return dist_url
    if num_machines > 1:
        from common.cli import ConfigError

        raise ConfigError(
            "--num-machines > 1 needs --dist-url tcp://HOST:PORT of machine 0 (the same on "
            "every machine)"
        )
    return f"tcp://127.0.0.1:{free_port()}"


def init_group(rank: int, world: int, local_rank: int, procs: int, url: str, cuda: bool):
    """Join the group as ``rank`` (torchrun's environment set first); on GPUs pin GPU
    ``local_rank``; create detectron2's per-machine group when detectron2 is installed."""
    import torch
    import torch.distributed as dist

    host, _, port = url.removeprefix("tcp://").rpartition(":")
    if url.startswith("tcp://"):
        os.environ.update(MASTER_ADDR=host, MASTER_PORT=port)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(procs))  # fmt: skip
    if cuda:
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:  # the machine's cores shared by its processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // procs))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=url, world_size=world,
                            rank=rank, timeout=TIMEOUT)  # fmt: skip
    try:
        from detectron2.utils import comm
    except ImportError:
        comm = None
    for m in range(world // procs):  # every rank creates every group, in the same order
        group = dist.new_group(list(range(m * procs, (m + 1) * procs)))
        if comm is not None and m == rank // procs:
            comm._LOCAL_PROCESS_GROUP = group
    dist.barrier()


def _worker(local_rank, fn, args, procs, machine_rank, world, url, cuda, results) -> None:
    rank = machine_rank * procs + local_rank
    try:
        init_group(rank, world, local_rank, procs, url, cuda)
        fn(*args)
        results.put((local_rank, "ok", "", "", ""))
    except (Interrupted, KeyboardInterrupt) as e:
        results.put((local_rank, "interrupted", type(e).__name__, str(e), ""))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        kind = "user" if isinstance(e, UserError) else "failed"
        results.put((local_rank, kind, type(e).__name__, str(e), traceback.format_exc()))
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def start_workers(fn, args: tuple, procs: int, num_machines: int = 1, machine_rank: int = 0,
                  dist_url: str = "auto", cuda: bool = False):  # fmt: skip
    """Run ``fn(*args)`` on ``procs`` processes of this machine, in a group of
    ``procs * num_machines``; blocks until they end. One process: ``fn(*args)`` here."""
    world = procs * num_machines
    if world == 1:
        return fn(*args)
    import torch.multiprocessing as mp

    url = resolve_url(dist_url, num_machines)
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    workers = [
        ctx.Process(
            target=_worker,
            args=(i, fn, args, procs, machine_rank, world, url, cuda, results),
            daemon=False,
        )  # fmt: skip
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    forward = {s: signal.signal(s, _forwarder(workers)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        outcomes = _collect(workers, results)
    finally:
        for s, previous in forward.items():
            signal.signal(s, previous)
    _raise_outcome(outcomes)
    return None


def _forwarder(workers):
    def forward(signum, _frame):
        for w in workers:
            if w.is_alive():
                os.kill(w.pid, signum)

    return forward


def _collect(workers, results) -> dict[int, tuple]:
    """Every worker's outcome; after the first failure the others get ``GRACE_S`` seconds,
    then are terminated."""
    outcomes: dict[int, tuple] = {}
    failed_at = None
    while any(w.is_alive() for w in workers) or not results.empty():
        while not results.empty():
            local_rank, *outcome = results.get()
            outcomes[local_rank] = tuple(outcome)
            if outcome[0] in ("failed", "user") and failed_at is None:
                failed_at = time.monotonic()
        for i, w in enumerate(workers):
            if not w.is_alive() and i not in outcomes and w.exitcode not in (None, 0):
                died = f"worker {i} died (exit code {w.exitcode})"
                outcomes[i] = ("failed", "WorkerDied", died, "")
                failed_at = failed_at or time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
            for w in workers:
                if w.is_alive():
                    w.terminate()
            for w in workers:
                w.join()
        time.sleep(0.05)
    for w in workers:
        w.join()
    return outcomes


def _raise_outcome(outcomes: dict[int, tuple]) -> None:
    """The first worker that did not end well decides (in the order they reported: the
    others' errors are often its consequence, a peer gone): its error, or ``Interrupted``."""
    ended = [o for o in outcomes.values() if o[0] != "ok"]
    ended.sort(key=lambda o: o[1] == "WorkerDied")  # a worker's own report first
    if not ended:
        return
    how, kind, message, trace = ended[0]
    if how == "interrupted":
        raise Interrupted(message or "interrupted")
    raise (WorkerUserError if how == "user" else WorkerFailed)(kind, message, trace)
