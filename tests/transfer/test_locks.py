"""Two launches on one output folder: the data is written once, each seed trains once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transfer.runner import RunPlan, launch_local
from transfer.spec import SeedSpec, seed_lock_path

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_launches_at_once_write_the_data_once_and_train_each_seed_once(tmp_path):
    import torchvision

    weights = tmp_path / "tv_r18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    cmd = [sys.executable, "transfer/run_linear.py", "--weights", str(weights), "--protocol",
           "linear_care", "--seeds", "2", "--dataset", "synthetic", "--arch", "resnet18",
           "--output", str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = []
    for log in logs:
        with open(log, "w") as f:  # both start before the synthetic data exists
            procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                          env=env))  # fmt: skip
    codes = [p.wait(timeout=600) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts
    assert not any("Traceback" in t for t in texts), texts
    both = "\n".join(texts)
    run_dir = tmp_path / "out" / "linear_care_smoke" / "tv_r18"
    for k in (0, 1):
        assert both.count(f"seed {k} (seed value {1000 + k}): starting") == 1, both
        lines = (run_dir / f"seed{k}" / "train_metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
        assert json.loads((run_dir / f"seed{k}" / "metrics.json").read_text())["seed"] == 1000 + k
    # the other launcher said what happened to each seed it did not run
    assert both.count("running in another launcher") + both.count("finished by another") == 2


def _spec(seed_dir: Path) -> SeedSpec:
    return SeedSpec(protocol="p", protocol_name="p", smoke=True, dataset="synthetic",
                    shapes_root=None, weights="", weights_info={}, seed_index=0, seed=1000,
                    seed_dir=str(seed_dir), entry="nowhere:never")  # fmt: skip


def test_a_held_seed_is_skipped_and_a_finished_one_is_not_rerun(tmp_path, capsys):
    from common.locks import make_lock

    seed_dir = tmp_path / "p" / "w" / "seed0"
    other = make_lock(seed_lock_path(seed_dir))
    other.acquire()  # another launcher (this process's own lock object) holds seed 0
    try:
        run = RunPlan(seed_dir.parent, specs=[_spec(seed_dir)])
        assert launch_local(run) is None  # never reaches run_local (the entry is bogus)
        assert run.statuses == {0: "running elsewhere"}
        assert "is held), skipped" in capsys.readouterr().out
    finally:
        other.release()
    seed_dir.mkdir(parents=True)
    (seed_dir / "metrics.json").write_text("{}")  # the other launcher finished it meanwhile
    run = RunPlan(seed_dir.parent, specs=[_spec(seed_dir)], if_locked="wait")
    assert launch_local(run) is None
    assert run.statuses == {0: "finished (elsewhere)"}


HOLD = """
import sys, time
from common.locks import held_or_none
with held_or_none(sys.argv[1]) as lock:
    assert lock is not None
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_soft_locks_take_over_an_os_locks_empty_file_and_a_wait_names_its_holder(
    tmp_path, monkeypatch, capsys
):
    """CARE_SOFT_LOCKS=1 after a normal run: the empty .lock files it left (filelock keeps
    an OS lock's file) are stale and taken at once; a lock held by a live process is waited
    for with one line naming the lock and the holder's pid."""
    import time

    from common.locks import held_or_none

    monkeypatch.setenv("CARE_SOFT_LOCKS", "1")
    left = tmp_path / "seed0.lock"
    left.write_text("")
    os.utime(left, (time.time() - 60, time.time() - 60))
    with held_or_none(left) as lock:
        assert lock is not None  # not forever "held" by nobody
    busy = tmp_path / "seed1.lock"
    env = {**os.environ, "CARE_SOFT_LOCKS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(busy), "1.5"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    with held_or_none(busy) as lock:
        assert lock is None  # held: skipped at once
    with held_or_none(busy, wait=True) as lock:
        assert lock is not None
    proc.wait(timeout=30)
    err = capsys.readouterr().err
    assert f"waiting for the lock {busy} (held by pid {proc.pid} on " in err


def test_a_seed_never_outlives_its_launcher_and_never_has_two_writers(tmp_path):
    """kill -9 of the launcher alone (not its process group): the seed's child gets SIGTERM
    (parent-death signal), checkpoints and stops; until it has, it still holds the seed's
    lock (inherited), so a rerun cannot start the seed beside it. The rerun then resumes it
    and each epoch is trained once."""
    import signal
    import time

    import torchvision

    from common.locks import held_or_none

    weights = tmp_path / "tv_r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    cmd = [sys.executable, "transfer/run_linear.py", "--weights", str(weights), "--protocol",
           "linear_care", "--seeds", "1", "--dataset", "synthetic", "--arch", "resnet18",
           "--output", str(tmp_path / "out"), "epochs", "8"]  # fmt: skip
    seed_dir = tmp_path / "out" / "linear_care_smoke" / "tv_r18" / "seed0"
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        launcher = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    metrics = seed_dir / "train_metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert time.time() < deadline and launcher.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    launcher.kill()  # SIGKILL to the launcher only: its child is not signalled by us
    launcher.wait()
    assert launcher.returncode == -signal.SIGKILL
    with held_or_none(seed_lock_path(seed_dir)) as lock:
        held = lock is None  # the child, still checkpointing, holds it
    deadline = time.time() + 120
    while True:  # the child stops (parent-death SIGTERM) and its session closes
        sessions = seed_dir / "sessions.json"
        done = sessions.exists() and '"interrupted"' in sessions.read_text()
        if done:
            break
        assert time.time() < deadline, "the seed's child did not stop after its launcher died"
        time.sleep(0.2)
    deadline = time.time() + 60  # the child exits after its session is written
    while True:
        with held_or_none(seed_lock_path(seed_dir)) as lock:
            if lock is not None:  # released once the child exited
                break
        assert time.time() < deadline, "the lock stayed held after the child stopped"
        time.sleep(0.2)
    assert held
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "resuming seed 0 after epoch" in (seed_dir / "log.txt").read_text()
    lines = metrics.read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, 9))
    statuses = [s["status"] for s in json.loads(sessions.read_text())["sessions"]]
    assert statuses == ["interrupted", "finished"]


def test_machine_1_follows_machine_0s_decisions_and_never_takes_the_lock(tmp_path, capsys):
    """Two machines' launchers (threads here): machine 0 finds seed 0 held by another
    launcher and seed 1 finished; machine 1, which planned both, skips both on machine 0's
    word instead of waiting at a rendezvous machine 0 will not join."""
    import threading

    from common.locks import make_lock
    from tests.transfer.test_scaleout_runs import _two_free_ports

    url = f"tcp://127.0.0.1:{_two_free_ports()}"
    dirs = [tmp_path / "p" / "w" / f"seed{k}" for k in (0, 1)]
    dirs[1].mkdir(parents=True)
    (dirs[1] / "metrics.json").write_text("{}")
    other = make_lock(seed_lock_path(dirs[0]))
    other.acquire()
    runs = {
        rank: RunPlan(dirs[0].parent, specs=[
            _spec(d).replace(seed_index=k, num_machines=2, machine_rank=rank, dist_url=url)
            for k, d in enumerate(dirs)])
        for rank in (0, 1)
    }  # fmt: skip
    try:
        follower = threading.Thread(target=launch_local, args=(runs[1],))
        follower.start()
        assert launch_local(runs[0]) is None
        follower.join(timeout=60)
        assert not follower.is_alive()
    finally:
        other.release()
    assert runs[0].statuses == {0: "running elsewhere", 1: "finished (elsewhere)"}
    assert runs[1].statuses == {0: "running elsewhere (machine 0)", 1: "finished (machine 0)"}
    out = capsys.readouterr().out
    assert "seed 0: running elsewhere on machine 0, skipped" in out


def test_a_workers_error_is_raised_as_it_was_and_a_user_error_stays_one(tmp_path):
    """A worker's exception reaches the launcher with its type and message; a user error
    (bad input, divergence) stays a ``UserError`` (one line, no traceback); a stopped worker
    is ``Interrupted``."""
    from common.cli import Interrupted, UserError
    from common.processes import WorkerFailed, start_workers

    with pytest.raises(WorkerFailed, match="rank 1 cannot go on") as failed:
        start_workers(_fail_on_rank_1, (ValueError,), 2)
    assert failed.value.kind == "ValueError" and not isinstance(failed.value, UserError)
    assert "Traceback" in failed.value.trace
    with pytest.raises(UserError, match="rank 1 cannot go on"):
        start_workers(_fail_on_rank_1, (UserError,), 2)
    with pytest.raises(Interrupted, match="stopped"):
        start_workers(_fail_on_rank_1, (Interrupted,), 2)


def _fail_on_rank_1(kind: type) -> None:
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise kind("stopped" if kind.__name__ == "Interrupted" else "rank 1 cannot go on")
    dist.barrier()  # rank 0 waits in a collective: the launcher must stop it


def test_a_multinode_slurm_seed_takes_its_rank_and_rendezvous_from_slurm(monkeypatch):
    """Every node of a seed's job computes the same rendezvous (the first node, a port
    pair from the job id) and its own machine rank; one node keeps the local default."""
    from transfer.slurmjob import slurm_placement

    monkeypatch.delenv("SLURM_LAUNCH_NODE_IPADDR", raising=False)
    spec = _spec(Path("/runs/p/w/seed0")).replace(num_machines=2, num_gpus=8)
    placed = [slurm_placement(spec, node, ["gpu-a", "gpu-b"], "4242_3") for node in (0, 1)]
    assert [s.machine_rank for s in placed] == [0, 1]
    assert {s.dist_url for s in placed} == {"tcp://gpu-a:29984"}  # 29500 + 2 x (4242 % 1000)
    assert placed[1].procs_per_machine * placed[1].num_machines == 16  # the world size
    alone = slurm_placement(spec.replace(num_machines=1), 0, ["gpu-a"], "4242")
    assert alone.dist_url == "auto" and alone.machine_rank == 0
