"""Locks between launchers that share an output folder (``filelock``).

A lock is an OS lock (``fcntl.flock``) on a small file next to what it guards, so it is
released when its holder dies, however it dies, and it holds across machines on a shared
filesystem that supports locks (NFSv4, Lustre and GPFS mounted with locking). On a
filesystem without lock support set ``CARE_SOFT_LOCKS=1``: a lock is then the lock file's
existence (``filelock.SoftFileLock``), which any filesystem keeps but which a holder killed
with SIGKILL leaves behind (delete the named ``.lock`` file by hand).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import BaseFileLock, FileLock, SoftFileLock, Timeout

__all__ = ["Timeout", "held_or_none", "make_lock", "waiting_lock"]


def make_lock(path: str | Path) -> BaseFileLock:
    """A lock on ``path`` (its folder is created); not yet acquired."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = SoftFileLock if os.environ.get("CARE_SOFT_LOCKS") == "1" else FileLock
    return kind(str(path))


@contextmanager
def held_or_none(path: str | Path, wait: bool = False) -> Iterator[BaseFileLock | None]:
    """Acquire the lock on ``path``: yields it while held, or None (at once) when another
    process holds it and ``wait`` is False. ``wait``: block until the holder releases it."""
    lock = make_lock(path)
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        yield None
        return
    try:
        yield lock
    finally:
        lock.release()


@contextmanager
def waiting_lock(path: str | Path) -> Iterator[BaseFileLock]:
    """Hold the lock on ``path``, waiting for any other holder first."""
    with held_or_none(path, wait=True) as lock:
        yield lock
