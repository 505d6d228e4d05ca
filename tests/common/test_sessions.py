"""sessions.json: every session of a seed, a killed one included (common.sessions)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.cli import Interrupted
from common.sessions import read_sessions, recorded_session, session_totals

REPO = Path(__file__).resolve().parents[2]
KILLED = """
import os, signal, sys, time
from pathlib import Path
from common.sessions import recorded_session
folder = Path(sys.argv[1])
with recorded_session(folder, start_iter=0):
    time.sleep(0.6)
    (folder / "model_0000009.pth").write_text("work")  # the last sign of life
    time.sleep(0.4)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_session_is_counted_by_the_next_one(tmp_path):
    """kill -9 leaves a "running" entry; the rerun closes it as "killed" with the time up to
    the folder's last write (0.6 s here), and the totals count both sessions."""
    res = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], cwd=REPO, timeout=60)
    assert res.returncode == -9
    (left,) = read_sessions(tmp_path / "sessions.json")
    assert left["status"] == "running" and left["start_iter"] == 0
    with recorded_session(tmp_path, start_iter=9) as entry:
        entry["end_iter"] = 12
    killed, rerun = read_sessions(tmp_path / "sessions.json")
    last_write = (tmp_path / "model_0000009.pth").stat().st_mtime
    assert killed["status"] == "killed"
    assert killed["wall_time_s"] == pytest.approx(last_write - left["started_at"], abs=0.01)
    assert 0.5 < killed["wall_time_s"] < 5
    assert (rerun["status"], rerun["start_iter"], rerun["end_iter"]) == ("finished", 9, 12)
    totals = session_totals(tmp_path)
    assert totals["sessions"] == 2
    assert totals["wall_time_s"] == pytest.approx(killed["wall_time_s"] + rerun["wall_time_s"])


def test_statuses_and_only_the_main_process_writes(tmp_path):
    with pytest.raises(Interrupted), recorded_session(tmp_path):
        raise Interrupted("stop")
    with pytest.raises(KeyError), recorded_session(tmp_path):
        raise KeyError("bug")
    with recorded_session(tmp_path, main=False):  # another rank: nothing written
        pass
    with recorded_session(tmp_path):
        time.sleep(0.05)
    sessions = json.loads((tmp_path / "sessions.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["interrupted", "failed", "finished"]
    assert sessions[-1]["wall_time_s"] >= 0.05
