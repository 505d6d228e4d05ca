"""Locks between launchers that share an output folder (``filelock``).

A lock is an OS lock (``fcntl.flock``) on a small file next to what it guards, so it is
released when its holder dies, however it dies, and it holds across machines on a shared
filesystem that supports locks (NFSv4, Lustre and GPFS mounted with locking). On a
filesystem without lock support set ``CARE_SOFT_LOCKS=1``: a lock is then the lock file's
existence (``filelock.SoftFileLock``, recording the holder's pid and host), which any
filesystem keeps; a holder killed on this host is recognised by its pid, an empty file (what
an OS lock leaves) is stale, and a wait names the lock and its holder (a holder killed on
another host: delete the named ``.lock`` file by hand).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import BaseFileLock, FileLock, SoftFileLock, Timeout

__all__ = ["Timeout", "held_or_none", "make_lock", "waiting_lock"]


SOFT = "CARE_SOFT_LOCKS"
STALE_EMPTY_S = 5.0  # an empty soft lock file older than this has no holder


def soft_locks() -> bool:
    return os.environ.get(SOFT) == "1"


def make_lock(path: str | Path) -> BaseFileLock:
    """A lock on ``path`` (its folder is created); not yet acquired. A soft lock whose file
    is empty and not new is stale: an OS lock's file (runs without ``CARE_SOFT_LOCKS``
    leave theirs, empty) or a holder that died before writing its record; it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not soft_locks():
        return FileLock(str(path))
    try:
        st = path.stat()
        if st.st_size == 0 and time.time() - st.st_mtime > STALE_EMPTY_S:
            path.unlink()
    except FileNotFoundError:
        pass
    return SoftFileLock(str(path))


def holder(path: str | Path) -> str:
    """Who holds the lock on ``path``, as far as can be told."""
    if not soft_locks():
        return "another launcher holds it"
    try:
        record = Path(path).read_text().split()
    except OSError:
        record = []
    if len(record) >= 2:  # filelock's soft record: pid, host, ...
        return f"held by pid {record[0]} on {record[1]}"
    return "another launcher holds it"


@contextmanager
def held_or_none(path: str | Path, wait: bool = False) -> Iterator[BaseFileLock | None]:
    """Acquire the lock on ``path``: yields it while held, or None (at once) when another
    process holds it and ``wait`` is False. ``wait``: block until the holder releases it,
    saying once what it waits for."""
    lock = make_lock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            yield None
            return
        hint = f"; delete it if no run uses it ({SOFT}=1)" if soft_locks() else ""
        print(f"waiting for the lock {path} ({holder(path)}){hint}", file=sys.stderr, flush=True)
        lock.acquire(timeout=-1)
    try:
        yield lock
    finally:
        lock.release()


@contextmanager
def waiting_lock(path: str | Path) -> Iterator[BaseFileLock]:
    """Hold the lock on ``path``, waiting for any other holder first."""
    with held_or_none(path, wait=True) as lock:
        yield lock
