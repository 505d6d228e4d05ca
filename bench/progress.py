"""What one seed folder says about its run: state, iteration / total, images/s, ETA.

States: ``finished`` (metrics.json), ``failed`` (failed.json: its error line), ``running``
(another process holds the seed's lock), ``partial`` (a resumable checkpoint, nobody
running it), ``pending`` (nothing yet). Progress comes from the run's own records: the last
``iteration`` (``epoch`` for classification) of train_metrics.jsonl against the total of its
config.yaml; images/s and ETA from detectron2's ``time`` / ``eta_seconds``, the
classification loop's ``train/img_per_s``, or the current session's pace.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from common.locks import Timeout, make_lock
from common.metrics import read_jsonl
from common.sessions import SESSIONS_FILE, read_sessions
from transfer.seeds import seed_status
from transfer.spec import seed_lock_path

STATES = ("finished", "running", "failed", "partial", "pending")


@dataclass
class SeedProgress:
    state: str
    iteration: int | None = None
    total: int | None = None
    images_per_s: float | None = None
    eta_s: float | None = None
    error: str = ""
    wall_time_s: float | None = None  # a finished seed's time over all its sessions
    headline: str = ""  # a finished seed's headline metrics

    def to_json(self) -> dict:
        return asdict(self)


def lock_held(seed_dir: Path) -> bool:
    """True when another process holds the seed's lock (probed, then released at once)."""
    path = seed_lock_path(seed_dir)
    if not path.exists():
        return False
    lock = make_lock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def _config(seed_dir: Path) -> dict:
    try:
        return yaml.safe_load((seed_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _total(cfg: dict) -> tuple[int | None, int | None, str]:
    """(total iterations, images per iteration, the record key counting them)."""
    solver = cfg.get("SOLVER") or {}
    if "MAX_ITER" in solver:
        return int(solver["MAX_ITER"]), int(solver.get("IMS_PER_BATCH") or 0) or None, "iteration"
    protocol = cfg.get("protocol") or {}
    if protocol.get("kind") in ("linear", "multilayer", "finetune") and protocol.get("epochs"):
        return int(protocol["epochs"]), None, "epoch"
    if protocol.get("kind") == "manyshot_linear":
        return int(protocol.get("wd_n") or 0) or None, None, "iteration"
    return None, None, "iteration"


def _pace(seed_dir: Path, records: list[dict], key: str, total: int | None, batch) -> tuple:
    """(images/s, ETA seconds) of a running seed."""
    last = next((r for r in reversed(records) if "time" in r or "train/img_per_s" in r), {})
    rate = None
    if "train/img_per_s" in last:
        rate = float(last["train/img_per_s"])
    elif "time" in last and batch:
        rate = batch / float(last["time"])
    if "eta_seconds" in last:
        return rate, float(last["eta_seconds"])
    k = max((r.get(key) or 0 for r in records), default=0)
    sessions = read_sessions(seed_dir / SESSIONS_FILE)
    current = sessions[-1] if sessions and sessions[-1].get("status") == "running" else None
    if current is None or total is None:
        return rate, None
    done = k - int(current.get("start_iter") or 0)
    elapsed = time.time() - float(current["started_at"])
    eta = (total - k) * elapsed / done if done > 0 else None
    return rate, eta


def seed_progress(seed_dir: Path) -> SeedProgress:
    from transfer.runner import headline

    seed_dir = Path(seed_dir)
    status = seed_status(seed_dir)
    if status == "finished":
        m = json.loads((seed_dir / "metrics.json").read_text())
        return SeedProgress("finished", wall_time_s=m.get("wall_time_s"), headline=headline(m))
    running = lock_held(seed_dir)
    if status == "failed" and not running:
        err = json.loads((seed_dir / "failed.json").read_text()).get("error", "")
        return SeedProgress("failed", error=err.strip().splitlines()[-1] if err.strip() else "")
    if not running and status == "new":
        return SeedProgress("pending")
    cfg = _config(seed_dir)
    total, batch, key = _total(cfg)
    records = read_jsonl(seed_dir / "train_metrics.jsonl")
    done = [r[key] for r in records if r.get(key) is not None]
    k = max(done) if done else None
    if not running:
        return SeedProgress("partial", k, total)
    rate, eta = _pace(seed_dir, records, key, total, batch)
    return SeedProgress("running", k, total, rate, eta)
