"""A seed's ``sessions.json``: every process run of it, killed ones included.

A session is written when it starts (``"status": "running"``) and closed when it ends
(finished, interrupted, failed). A process killed outright (SIGKILL, a node lost) closes
nothing: the next session finds its "running" entry and closes it as ``"killed"``, its time
taken up to the folder's last write (the last sign of the killed process's work). So the
seed's ``wall_time_s`` (the sum) and ``sessions`` (the count) include every session.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from common.atomic import atomic_write_json

SESSIONS_FILE = "sessions.json"


def read_sessions(path: str | Path) -> list[dict]:
    path = Path(path)
    return json.loads(path.read_text())["sessions"] if path.exists() else []


def _last_write(folder: Path, since: float) -> float:
    """The newest modification time of a file in ``folder`` (recursively), at least ``since``
    (``sessions.json`` itself aside)."""
    times = [
        p.stat().st_mtime for p in folder.rglob("*") if p.is_file() and p.name != SESSIONS_FILE
    ]
    return max([since, *times])


def close_killed(sessions: list[dict], folder: Path) -> list[dict]:
    """Each "running" entry (its process is gone: this one is the seed's only writer) closed
    as "killed", its wall time up to the folder's last write."""
    for s in sessions:
        if s.get("status") == "running":
            s["status"] = "killed"
            s["wall_time_s"] = round(_last_write(folder, s["started_at"]) - s["started_at"], 2)
    return sessions


@contextmanager
def recorded_session(folder: str | Path, main: bool = True, **fields):
    """Record this session in ``folder/sessions.json`` (when ``main``: the process that
    writes). Yields the entry, a dict whose fields the body may update (``end_iter``); its
    status becomes "finished" when the body returns, "interrupted" on an ``Interrupted`` or
    ``KeyboardInterrupt``, "failed" on any other exception."""
    from common.cli import Interrupted

    folder = Path(folder)
    path = folder / SESSIONS_FILE
    entry = {"status": "running", "started_at": round(time.time(), 3), **fields}
    if main:
        atomic_write_json(path, {"sessions": close_killed(read_sessions(path), folder) + [entry]})
    status = "failed"
    try:
        yield entry
        status = "finished"
    except (Interrupted, KeyboardInterrupt):
        status = "interrupted"
        raise
    finally:
        if main:
            entry.update(status=status, wall_time_s=round(time.time() - entry["started_at"], 2))
            sessions = read_sessions(path)
            atomic_write_json(path, {"sessions": sessions[:-1] + [entry]})


def session_totals(folder: str | Path) -> dict:
    """``{"wall_time_s": sum over every session, "sessions": their count}``."""
    sessions = read_sessions(Path(folder) / SESSIONS_FILE)
    return {
        "wall_time_s": round(sum(s.get("wall_time_s", 0.0) for s in sessions), 2),
        "sessions": len(sessions),
    }
