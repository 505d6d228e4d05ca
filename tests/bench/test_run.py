"""care-bench end to end on synthetic data: two checkpoints run, status, the report's
comparison; a killed run re-run; several workers; Slurm through submitit's local executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.__main__ import cli

REPO = Path(__file__).resolve().parents[2]
TINY = """
name: tiny
title: two protocols, a few iterations
tables:
  - table: table4
    protocols: [voc_c4_24k]
    seeds: {seeds}
    smoke_opts: [SOLVER.MAX_ITER, 2, SOLVER.STEPS, "(1,)", TEST.PRECISE_BN.NUM_ITER, 1]
  - table: classification
    protocols: [knn]
    seeds: 1
"""


@pytest.fixture(scope="module")
def two_weights(tmp_path_factory):
    import torch
    import torchvision

    out = []
    for i, name in enumerate(("base_r50", "new_r50")):
        torch.manual_seed(i)
        path = tmp_path_factory.mktemp("w") / f"{name}.pth"
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
        out.append(str(path))
    return out


def _suite(tmp_path, seeds: int = 1) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.format(seeds=seeds))
    return str(path)


def _status(out: Path) -> dict:
    res = subprocess.run([sys.executable, "-m", "bench", "status", "--output", str(out),
                          "--json", "--no-report"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    (data,) = json.loads(res.stdout)
    return data


def _sessions(seed_dir: Path) -> list[str]:
    return [s["status"] for s in json.loads((seed_dir / "sessions.json").read_text())["sessions"]]


def test_two_checkpoints_run_then_status_and_the_comparison(tmp_path, two_weights, capsys):
    out = tmp_path / "out"
    argv = ["run", "--suite", _suite(tmp_path), "--dataset", "synthetic", "--weights",
            *two_weights, "--output", str(out), "--launcher", "inprocess",
            "--keep-checkpoints", "none"]  # fmt: skip
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("=== ") == 4  # 2 checkpoints x 2 protocols, one runner call each
    data = _status(out)
    assert data["totals"] == {"finished": 4, "running": 0, "failed": 0, "partial": 0,
                              "pending": 0}  # fmt: skip
    assert {(r["stem"], r["protocol"]) for r in data["runs"]} == {
        (s, p) for s in ("base_r50", "new_r50") for p in ("voc_c4_24k", "knn")}  # fmt: skip
    tables = out / "tables"
    html = (tables / "report.html").read_text()
    assert "Comparison of the checkpoints" in html and "new_r50" in html
    diffs = (tables / "comparison.csv").read_text().splitlines()
    assert diffs[0].startswith("table,column,a,b,mean_a,mean_b")
    assert {line.split(",")[0] for line in diffs[1:]} == {"table4", "classification"}
    # the difference is B - A of the two rows' means
    knn = [line.split(",") for line in diffs[1:] if line.startswith("classification,knn_k20")]
    m_a, m_b, d = float(knn[0][4]), float(knn[0][5]), float(knn[0][8])
    assert d == pytest.approx(m_b - m_a)
    voc = json.loads((out / "voc_c4_24k_smoke/new_r50/seed0/metrics.json").read_text())
    assert voc["seed"] == 1000 and voc["iterations"] == 2
    assert all(0.0 <= v <= 100.0 for v in voc["bbox"].values())
    # a re-run starts no runner: everything is finished
    assert cli(argv) == 0
    assert "=== " not in capsys.readouterr().out
    for seed in out.glob("*_smoke/*/seed0"):
        assert _sessions(seed) == ["finished"]


def test_status_needs_a_run_or_a_suite(tmp_path, capsys):
    assert cli(["status", "--output", str(tmp_path)]) == 2
    assert "no care-bench run recorded" in capsys.readouterr().err


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    argv = ["run", "--suite", "quick", "--weights", str(tmp_path / "no.pth"), "--output",
            str(tmp_path)]  # fmt: skip
    assert cli(argv) == 2
    assert "no.pth: no such file" in capsys.readouterr().err


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, "the run ended before the first seed finished"
        assert time.time() - t0 < timeout
        time.sleep(0.5)


@pytest.mark.extended
def test_a_killed_run_rerun_does_not_redo_finished_seeds(tmp_path, two_weights):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench", "run", "--suite", _suite(tmp_path, seeds=2),
           "--dataset", "synthetic", "--weights", *two_weights[:1], "--output", str(out),
           "--keep-checkpoints", "none"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    first = out / "voc_c4_24k_smoke" / "base_r50" / "seed0"
    _wait_for(first / "metrics.json", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its seed process, outright
    proc.wait()
    done_at = (first / "metrics.json").stat().st_mtime
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "seed 0: finished, skipped" in res.stdout
    assert (first / "metrics.json").stat().st_mtime == done_at
    assert _sessions(first) == ["finished"]
    second = first.with_name("seed1")
    assert _sessions(second)[-1] == "finished"  # killed (or not started), then finished
    assert _status(out)["totals"]["finished"] == 3


@pytest.mark.extended
def test_quick_suite_on_two_workers_then_status_and_report(tmp_path, two_weights, render_html):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench", "run", "--suite", "quick", "--dataset", "synthetic",
           "--weights", *two_weights, "--output", str(out), "--gpus", "2",
           "--launcher", "inprocess", "--keep-checkpoints", "none"]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "worker 1: CPU" in res.stdout
    logs = sorted((out / "bench" / "logs").glob("worker*.log"))
    assert len(logs) == 2 and all("=== " in p.read_text() for p in logs)
    data = _status(out)
    n = 2 * (1 + 1 + 1 + 2 + 1)  # voc, coco fpn, knn, manyshot dtd + pets, ade20k
    assert data["totals"]["finished"] == n, data
    for seed in out.rglob("seed0"):  # each seed ran once, in one of the workers
        if seed.is_dir():
            assert _sessions(seed) == ["finished"], seed
    page = render_html(out / "tables" / "report.html", tmp_path / "report.png")
    assert "Comparison of the checkpoints" in page["text"] and page["broken"] == 0


@pytest.mark.extended
def test_slurm_through_submitits_local_executor(tmp_path, two_weights):
    pytest.importorskip("submitit")
    suite = tmp_path / "knn.yaml"
    suite.write_text("tables: [{table: classification, protocols: [knn], seeds: 2}]")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench", "run", "--suite", str(suite), "--dataset",
           "synthetic", "--weights", *two_weights, "--output", str(out), "--launcher", "slurm",
           "--slurm-cluster", "local", "--slurm-time", "10"]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("submitted Slurm job") == 4
    assert _status(out)["totals"]["finished"] == 4
    assert (out / "tables" / "report.html").exists()


def test_a_failed_seed_is_reported_and_the_rest_go_on(tmp_path, two_weights, capsys):
    suite = tmp_path / "nan.yaml"  # a NaN learning rate: the linear probe's loss is NaN
    suite.write_text("tables: [{table: table2, seeds: 1, smoke_opts: [epochs, 1, lr_per_256, "
                     "nan]}, {table: classification, protocols: [knn], seeds: 1}]")  # fmt: skip
    out = tmp_path / "out"
    argv = ["run", "--suite", str(suite), "--dataset", "synthetic", "--weights",
            two_weights[0], "--output", str(out), "--launcher", "inprocess"]  # fmt: skip
    assert cli(argv) == 1
    err = capsys.readouterr().err
    assert "FAILED: base_r50 linear_care (runner exit 1)" in err
    assert "linear_care_smoke/base_r50/seed0: NonFiniteLoss: loss is nan" in err
    states = {r["protocol"]: r["state"] for r in _status(out)["runs"]}
    assert states == {"linear_care": "failed", "knn": "finished"}
