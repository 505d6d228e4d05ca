"""A segmentation seed (its data stream resumes exactly) as the runners start it: on 2 CPU
processes of one machine, on 2 machines of one process each (localhost, through
``--num-machines / --machine-rank / --dist-url``), and on 2 processes stopped by SIGTERM and
re-run: the three end with the same weights. One thread per process on every side (the
float32 kernels then do the same arithmetic)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.extended

REPO = Path(__file__).resolve().parents[2]
OPTS = ["SOLVER.MAX_ITER", "10", "INPUT.TEST_SHORT_SIDES", "(64,)"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SEED = Path("ade20k_upernet_smoke/tv_r50/seed0")


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    from synthetic.ade20k import write_ade20k

    return write_ade20k(tmp_path_factory.mktemp("ade"), seed=1, train=8, val=3, size=96)


def _cmd(out: Path, weights: Path, twin: Path, *extra: str) -> list[str]:
    return [sys.executable, "transfer/run_segmentation.py", "--weights", str(weights),
            "--seeds", "1", "--dataset", "synthetic", "--output", str(out), "--shapes-root",
            str(twin), *extra, *OPTS]  # fmt: skip


def _two_free_ports() -> int:
    """A port P with P + 1 free too (the rendezvous and machine 0's decisions)."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free ports")


def _machines(command, while_running=lambda: None) -> list[str]:
    """Run ``command(rank)`` for machine ranks 0 and 1 at once (``while_running()`` every
    half second until machine 0 ends); their outputs, once both ended successfully."""
    procs = [subprocess.Popen(command(rank), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]  # fmt: skip
    while procs[0].poll() is None:
        while_running()
        time.sleep(0.5)
    out = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], out[0][-2000:] + out[1][-2000:]
    return out


def _final(out: Path) -> dict:
    return torch.load(out / SEED / "model_final.pth", map_location="cpu", weights_only=False)[
        "model"
    ]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ[:5]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_two_processes_two_machines_and_a_resumed_run_end_alike(tmp_path, weights, twin):
    from common.locks import held_or_none
    from transfer.spec import seed_lock_path

    one = tmp_path / "one_machine"
    r = subprocess.run(_cmd(one, weights, twin, "--num-procs", "2"), cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads((one / SEED / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["iterations"] == 10
    # rank 0 alone writes: each iteration's record once, one TensorBoard file
    records = [x["iteration"] for x in _lines(one / SEED / "train_metrics.jsonl")]
    assert records == sorted(set(records)) and len(records) >= 10
    assert len(list((one / SEED).glob("events.out.tfevents.*"))) == 1

    # two machines of one process each: machine 0 takes the seed's lock, machine 1 follows
    two = tmp_path / "two_machines"
    url = f"tcp://127.0.0.1:{_two_free_ports()}"
    held = []

    def lock_is_held() -> None:  # machine 0's launcher holds it while the seed runs
        if (two / SEED / "log.txt").exists() and not held:
            with held_or_none(seed_lock_path(two / SEED)) as lock:
                held.extend([True] if lock is None else [])

    out = _machines(lambda rank: _cmd(two, weights, twin, "--num-machines", "2",
                                      "--machine-rank", str(rank), "--dist-url", url),
                    lock_is_held)  # fmt: skip
    assert held and "joining machine 0's run (machine 1)" in out[1]
    assert "running in another launcher" not in out[0] + out[1]
    assert json.loads((two / SEED / "metrics.json").read_text())["world_size"] == 2
    _assert_same(_final(one), _final(two))

    # two processes stopped by SIGTERM mid-run, then re-run: the run resumes exactly
    cut = tmp_path / "cut"
    with open(tmp_path / "cut.log", "w") as log:
        p = subprocess.Popen(_cmd(cut, weights, twin, "--num-procs", "2"), cwd=REPO, env=ENV,
                             stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.time() + 300
        while len(_lines(cut / SEED / "train_metrics.jsonl")) < 2:
            assert time.time() < deadline and p.poll() is None, (tmp_path / "cut.log").read_text()
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=300) == 130, (tmp_path / "cut.log").read_text()[-3000:]
    assert not (cut / SEED / "metrics.json").exists()
    r = subprocess.run(_cmd(cut, weights, twin, "--num-procs", "2"), cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    sessions = json.loads((cut / SEED / "sessions.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["interrupted", "finished"]
    assert 0 < sessions[1]["start_iter"] < 10
    assert [x["iteration"] for x in _lines(cut / SEED / "train_metrics.jsonl")] == records
    _assert_same(_final(one), _final(cut))


def test_pretraining_on_two_torchrun_machines_equals_two_processes(tmp_path, shapes_root):
    """``python -m pretrain --num-procs 2`` and two torchrun "machines" (--nnodes 2, one
    process each, a static rendezvous on localhost) train the same weights."""
    common = ["--recipe", "test", "--method", "byol", "--data", str(shapes_root / "imagefolder"),
              "--epochs", "1", "--knn-every", "0"]  # fmt: skip
    one = tmp_path / "one"
    r = subprocess.run([sys.executable, "-m", "pretrain", *common, "--output", str(one),
                        "--num-procs", "2"], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    two = tmp_path / "two"
    port = _two_free_ports()
    _machines(lambda rank: [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                            "--node-rank", str(rank), "--nproc-per-node", "1", "--master-addr",
                            "127.0.0.1", "--master-port", str(port), "-m", "pretrain", *common,
                            "--output", str(two)])  # fmt: skip
    a, b = (torch.load(d / "byol_resnet18.pth", weights_only=True) for d in (one, two))
    assert a["meta"]["images_seen"] == b["meta"]["images_seen"] == 96
    _assert_same(a["backbone"], b["backbone"])
