"""transfer/run_segmentation.py end to end on the synthetic ADE20K twin (CPU)."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transfer import run_segmentation
from transfer.runner import SEED_BASE

REPO = Path(__file__).resolve().parents[2]
PROTOCOL = "ade20k_upernet_smoke"
# Small enough for CI: 2 iterations, 2 test scales on 3 validation images.
FAST = ["SOLVER.MAX_ITER", "2", "INPUT.TEST_SHORT_SIDES", "(64, 96)"]


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    from synthetic.ade20k import write_ade20k

    return write_ade20k(tmp_path_factory.mktemp("ade"), seed=1, train=8, val=3, size=96)


def _args(out, weights, twin, *extra, opts=FAST, seeds=2):
    argv = ["--weights", str(weights), "--seeds", str(seeds), "--dataset", "synthetic",
            "--output", str(out), "--shapes-root", str(twin), "--launcher", "inprocess",
            *extra, *opts]  # fmt: skip
    return run_segmentation.get_args_parser().parse_args(argv)


def test_two_smoke_seeds_then_skip(tmp_path, weights, twin, capsys):
    assert run_segmentation.main(_args(tmp_path, weights, twin)) == 0
    printed = capsys.readouterr().out
    assert printed.count("backbone loaded and verified: 265 tensors") == 2
    # the header gives the run's real schedule, not the full protocol's
    assert "2 iterations at batch 4 (2 groups), 2-scale test (smoke" in printed
    assert "150k" not in printed
    for k in (0, 1):
        seed_dir = tmp_path / PROTOCOL / "tv_r50" / f"seed{k}"
        m = json.loads((seed_dir / "metrics.json").read_text())
        assert m["seed"] == SEED_BASE + k and m["iterations"] == 2 and m["family"] == "segmentation"
        assert m["base_protocol"] == "ade20k_upernet" and m["batch_pad_label"] == 0
        sem = m["sem_seg"]
        assert {"mIoU", "pACC", "mIoU_toolkit", "IoU-wall"} <= set(sem)
        assert 0 <= sem["mIoU_toolkit"] <= sem["mIoU"] <= 100 and 0 <= sem["pACC"] <= 100
        assert m["headline"] == {"mIoU": sem["mIoU_toolkit"], "pixel_acc": sem["pACC"]}
        assert f"SEED: {SEED_BASE + k}" in (seed_dir / "config.yaml").read_text()
        preds = sorted((seed_dir / "inference" / "predictions").glob("*.png"))
        assert [p.stem for p in preds] == [f"ADE_val_{i:08d}" for i in (1, 2, 3)]
        lines = (seed_dir / "train_metrics.jsonl").read_text().splitlines()
        assert {"total_loss", "pixel_acc", "lr"} <= set(json.loads(lines[0]))
        # SUITE.LOG_PERIOD 1 in the smoke runs: a record per iteration (the full protocol: 20),
        # then the evaluation's at iteration 2
        rows = [json.loads(x) for x in lines]
        assert [r["iteration"] for r in rows] == [0, 1, 2] and "sem_seg/mIoU" in rows[-1]
        # --keep-checkpoints final (default): the final weights only, no optimiser state
        assert [p.name for p in seed_dir.glob("*.pth")] == ["model_final.pth"]
        final = torch.load(seed_dir / "model_final.pth", map_location="cpu", weights_only=False)
        assert final.keys() == {"model", "iteration"}
    stamp = (tmp_path / PROTOCOL / "tv_r50/seed0/metrics.json").stat().st_mtime_ns
    # each seed's log.txt is released when it ends: the next run in this process (its data
    # checks log through detectron2's loader) adds nothing to a finished seed's log
    logs = [tmp_path / PROTOCOL / f"tv_r50/seed{k}/log.txt" for k in (0, 1)]
    sizes = [p.stat().st_size for p in logs]
    assert not logging.getLogger("detectron2").handlers
    assert "seed1" not in logs[0].read_text()
    assert run_segmentation.main(_args(tmp_path, weights, twin)) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished, skipped") == 2 and "reusing" in printed
    assert (tmp_path / PROTOCOL / "tv_r50/seed0/metrics.json").stat().st_mtime_ns == stamp
    assert [p.stat().st_size for p in logs] == sizes

    # the table beside ssl-transfer's rows, its plot, and GSG's Figure 2 layout
    from PIL import Image

    from tables.__main__ import get_args_parser, main

    written = main(get_args_parser().parse_args(["--runs", str(tmp_path)]))
    md = written["segmentation.md"].read_text()
    assert "| BYOL " in md and "29.4" in md and "tv_r50 (tv_r50) (synthetic)" in md
    rows = {r["weights"]: r for r in csv.DictReader(open(written["segmentation.csv"]))}
    mious = [json.loads((tmp_path / PROTOCOL / f"tv_r50/seed{k}/metrics.json").read_text())
             ["headline"]["mIoU"] for k in (0, 1)]  # fmt: skip
    assert float(rows["tv_r50"]["miou"]) == pytest.approx(sum(mious) / 2, abs=1e-6)
    assert rows["tv_r50"]["miou_n"] == "2"
    with Image.open(written["segmentation_figure.png"]) as im:  # 3 rows x 3 columns
        assert 0.6 < im.width / im.height < 1.6
    assert "segmentation_ade20k_upernet_smoke.png" in written


def _final_state(seed_dir: Path) -> dict:
    return torch.load(seed_dir / "model_final.pth", map_location="cpu", weights_only=False)["model"]


# in `make test-extended` (CI time), beside the resumed two-process run of test_scaleout_runs
@pytest.mark.extended
def test_an_interrupted_seed_resumes_to_the_same_model(tmp_path, weights, twin, monkeypatch):
    """SIGTERM after iteration 1 checkpoints and stops; the re-run resumes the model, the
    optimiser, the schedule and the data stream: its final weights equal an uninterrupted
    run's."""
    from detectron2.engine import HookBase

    from transfer.segmentation.trainer import SegTrainer

    opts = ["SOLVER.MAX_ITER", "4", "INPUT.TEST_SHORT_SIDES", "(64,)"]
    full = tmp_path / "full"
    assert run_segmentation.main(_args(full, weights, twin, opts=opts, seeds=1)) == 0

    class Terminate(HookBase):
        def after_step(self):
            if self.trainer.iter == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    build = SegTrainer.build_hooks
    monkeypatch.setattr(SegTrainer, "build_hooks", lambda self: [Terminate(), *build(self)])
    cut = tmp_path / "cut"
    assert run_segmentation.main(_args(cut, weights, twin, opts=opts, seeds=1)) == 130
    seed_dir = cut / PROTOCOL / "tv_r50" / "seed0"
    assert (seed_dir / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert not (seed_dir / "metrics.json").exists()
    monkeypatch.setattr(SegTrainer, "build_hooks", build)
    assert run_segmentation.main(_args(cut, weights, twin, opts=opts, seeds=1)) == 0
    sessions = json.loads((seed_dir / "sessions.json").read_text())["sessions"]
    assert [(s["start_iter"], s["status"]) for s in sessions] == [(0, "interrupted"),
                                                                  (2, "finished")]  # fmt: skip
    a, b = _final_state(full / PROTOCOL / "tv_r50" / "seed0"), _final_state(seed_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_missing_ade20k_names_the_layout(tmp_path, weights, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    argv = ["--weights", str(weights), "--seeds", "1", "--output", str(tmp_path)]
    assert run_segmentation.cli(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ADEChallengeData2016/images/" in err[0]
    assert "--dataset synthetic" in err[0]


def test_a_corrupt_validation_image_stops_before_training(tmp_path, weights):
    from synthetic.ade20k import write_ade20k

    root = write_ade20k(tmp_path / "ade", seed=2, train=2, val=2, size=64)
    bad = root / "ADEChallengeData2016/images/validation/ADE_val_00000002.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ValueError, match="ADE_val_00000002.jpg: unreadable image of synthetic_ade"):
        run_segmentation.main(_args(tmp_path / "out", weights, root))


def test_script_help_runs_from_repo_root():
    r = subprocess.run([sys.executable, "transfer/run_segmentation.py", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and "--ignore-padding" in r.stdout and "UPerNet" in r.stdout


def test_a_validation_label_of_another_size_stops_before_training(tmp_path, weights):
    import numpy as np
    from PIL import Image

    from synthetic.ade20k import write_ade20k

    root = write_ade20k(tmp_path / "ade", seed=3, train=2, val=2, size=64)
    label = root / "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"
    Image.fromarray(np.ones((7, 9), np.uint8)).save(label)
    with pytest.raises(ValueError, match=r"ADE_val_00000001.png: label \(9, 7\) mode L"):
        run_segmentation.main(_args(tmp_path / "out", weights, root))
