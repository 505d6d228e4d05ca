"""transfer/run_voc.py and run_coco.py end to end on the synthetic smoke protocols (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transfer import run_coco, run_voc
from transfer.runner import SEED_BASE

REPO = Path(__file__).resolve().parents[2]
# Small enough for CI: 2 iterations, 1 precise-BN batch.
FAST = ["SOLVER.MAX_ITER", "2", "TEST.PRECISE_BN.NUM_ITER", "1"]


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    """A smaller tree than the session's: evaluation dominates these tests' time."""
    from synthetic import ShapesSpec, generate

    spec = ShapesSpec(
        seed=1,
        imagefolder={"train": 1, "val": 1},
        voc2007={"trainval": 8, "test": 6},
        voc2012={"trainval": 4},
        coco={"train2017": 8, "val2017": 6},
    )
    return generate(tmp_path_factory.mktemp("small_shapes"), spec)


@pytest.fixture(scope="module")
def out(tmp_path_factory, small_shapes):
    return tmp_path_factory.mktemp("runs"), small_shapes


def _args(module, out, weights, *extra, opts=FAST):
    root, shapes = out
    argv = [
        "--weights",
        str(weights),
        "--seeds",
        "2",
        "--dataset",
        "synthetic",
        "--output",
        str(root),
        "--shapes-root",
        str(shapes),
        *extra,
        *opts,
    ]
    return module.get_args_parser().parse_args(argv)


def _metrics(root: Path, protocol: str, k: int) -> dict:
    return json.loads((root / protocol / "tv_r50" / f"seed{k}" / "metrics.json").read_text())


# in `make test-extended` (CI time): make test runs VOC smoke seeds of two checkpoints, and
# their re-run that skips them, through care-bench (tests/bench/test_run.py)
@pytest.mark.extended
def test_voc_two_seeds_then_skip(out, weights, capsys):
    root, _ = out
    assert run_voc.main(_args(run_voc, out, weights)) == 0
    for k in (0, 1):
        m = _metrics(root, "voc_c4_24k_smoke", k)
        assert m["seed"] == SEED_BASE + k and m["iterations"] == 2
        assert set(m["bbox"]) >= {"AP", "AP50", "AP75", "AP50-circle", "AP50-cross"}
        assert all(0.0 <= v <= 100.0 for v in m["bbox"].values())
        seed_dir = root / "voc_c4_24k_smoke" / "tv_r50" / f"seed{k}"
        assert f"SEED: {SEED_BASE + k}" in (seed_dir / "config.yaml").read_text()
        env = json.loads((seed_dir / "environment.json").read_text())
        assert env["detectron2"]["source"] in ("PyPI rebuild", "own build")
    stamp = (root / "voc_c4_24k_smoke/tv_r50/seed0/metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert run_voc.main(_args(run_voc, out, weights)) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished, skipped") == 2 and "reusing" in printed
    assert (root / "voc_c4_24k_smoke/tv_r50/seed0/metrics.json").stat().st_mtime_ns == stamp


# COCO's two seeds are in `make test-extended` (CI time): VOC's above cover the runner, one
# COCO C4 / FPN training step each is in test_detectron2_stack.py, GSG's COCO FPN 3x smoke
# seed runs in test_gsg_protocols_run_and_fill_their_table, and the demo runs COCO C4.
@pytest.mark.extended
@pytest.mark.parametrize("arch", ["c4", "fpn"])
def test_coco_two_seeds(arch, out, weights):
    root, _ = out
    # FPN goes through the Slurm launcher (submitit's local cluster runs the jobs here)
    extra = ["--launcher", "slurm", "--slurm-cluster", "local"] if arch == "fpn" else []
    assert run_coco.main(_args(run_coco, out, weights, "--arch", arch, *extra)) == 0
    for k in (0, 1):
        m = _metrics(root, f"coco_{arch}_1x_smoke", k)
        for task in ("bbox", "segm"):
            assert {"AP", "AP50", "AP75", "AP-circle"} <= set(m[task]), m[task].keys()
        assert m["base_protocol"] == f"coco_{arch}_1x" and m["variant"] == "smoke"


def test_backbone_really_loaded(weights, tmp_path, registered_shapes):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from transfer.convert import convert_file
    from transfer.detection.config import build_config
    from transfer.detection.trainer import verify_backbone_loaded

    pkl = tmp_path / "w.pkl"
    convert_file(weights, pkl)
    for protocol in ("voc_c4_24k", "coco_fpn_1x"):
        cfg = build_config(protocol, smoke=True, device="cpu")
        model = build_model(cfg)
        with pytest.raises(RuntimeError, match="backbone was not loaded"):
            verify_backbone_loaded(model, str(pkl))  # random init != converted weights
        DetectionCheckpointer(model).load(str(pkl))
        # stem + res2..res5, batch-norm counters excluded: 265 tensors for ResNet-50
        assert verify_backbone_loaded(model, str(pkl)) == 265


@pytest.mark.extended
def test_sigterm_checkpoints_and_rerun_resumes(tmp_path, weights, small_shapes):
    cmd = [
        sys.executable,
        "transfer/run_voc.py",
        "--weights",
        str(weights),
        "--seeds",
        "1",
        "--dataset",
        "synthetic",
        "--output",
        str(tmp_path),
        "--shapes-root",
        str(small_shapes),
        "SOLVER.MAX_ITER",
        "14",
        "SOLVER.CHECKPOINT_PERIOD",
        "1000",
        "TEST.PRECISE_BN.NUM_ITER",
        "1",
    ]
    seed_dir = tmp_path / "voc_c4_24k_smoke" / "tv_r50" / "seed0"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "driver.log"
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until a few iterations have run
        d2_log = seed_dir / "log.txt"
        if d2_log.exists() and "Starting training from iteration 0" in d2_log.read_text():
            time.sleep(4)
            break
        if proc.poll() is not None:
            pytest.fail(log.read_text()[-3000:])
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("training did not start in time")
    proc.send_signal(signal.SIGTERM)  # to the driver, which forwards it to the seed process
    proc.wait(timeout=300)
    output = log.read_text()
    assert proc.returncode == 130, output[-3000:]
    assert "re-run the same command to resume" in output
    # an intended stop is not an error: no traceback in the console or the seed's log
    for text in (output, (seed_dir / "log.txt").read_text()):
        assert "Exception during training" not in text and "Traceback" not in text
    last = (seed_dir / "last_checkpoint").read_text().strip()
    stopped_at = int(last.split("_")[1].split(".")[0])
    assert 0 <= stopped_at < 13 and not (seed_dir / "metrics.json").exists()
    ckpt = torch.load(seed_dir / last, map_location="cpu", weights_only=False)
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"]  # SGD momentum is resumed

    # what a process killed after its last checkpoint leaves: points past the resume point
    from torch.utils.tensorboard import SummaryWriter

    from common.metrics import read_events, read_jsonl

    with open(seed_dir / "train_metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": stopped_at + 1, "total_loss": 123.0}) + "\n")
    with SummaryWriter(str(seed_dir)) as w:
        w.add_scalar("total_loss", 123.0, stopped_at + 1)

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resuming seed 0 from iteration {stopped_at + 1}" in rerun.stdout
    lines = read_jsonl(seed_dir / "train_metrics.jsonl")
    its = [x["iteration"] for x in lines]
    assert its == sorted(set(its)) and its[-1] >= 13  # the last write: after the last iteration
    assert all(x.get("total_loss") != 123.0 for x in lines)
    ev = read_events(seed_dir)  # detectron2's TensorboardXWriter, purged at the resume point
    assert {"total_loss", "loss_cls", "lr", "bbox/AP50"} <= set(ev), sorted(ev)
    assert 123.0 not in [v for _, v in ev["total_loss"]]
    assert [s for s, _ in ev["total_loss"]] == sorted({s for s, _ in ev["total_loss"]})
    sessions = json.loads((seed_dir / "sessions.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["interrupted", "finished"]
    assert sessions[1]["start_iter"] == stopped_at + 1
    m = json.loads((seed_dir / "metrics.json").read_text())
    assert m["sessions"] == 2 and m["wall_time_s"] > 0


def test_nan_loss_fails_the_seed_and_others_go_on(out, weights, tmp_path, capsys):
    _, shapes = out
    # a zero pixel std divides by zero: the first loss is not finite
    args = _args(
        run_voc, (tmp_path, shapes), weights, opts=FAST + ["MODEL.PIXEL_STD", "[0.0, 0.0, 0.0]"]
    )
    assert run_voc.main(args) == 1
    for k in (0, 1):
        seed_dir = tmp_path / "voc_c4_24k_smoke/tv_r50" / f"seed{k}"
        failed = json.loads((seed_dir / "failed.json").read_text())
        assert failed["error"].startswith("Diverged: the loss became NaN or infinite at "
                                          "iteration 1 of 2 (lr ")  # fmt: skip
        assert "lower SOLVER.BASE_LR" in failed["error"]
        assert not (seed_dir / "inference").exists()  # no diverged model evaluated
        assert "Exception during training" not in (seed_dir / "log.txt").read_text()
    captured = capsys.readouterr()
    assert "FAILED seeds: [0, 1]" in captured.err
    printed = captured.out + captured.err
    assert "Traceback" not in printed and printed.count("Diverged: the loss became") == 2


def test_a_diverged_last_iteration_is_not_evaluated():
    """detectron2 0.6's EvalHook evaluated after train() raised at the last iteration (iter
    + 1 >= max_iter); ours evaluates only when the loop finished (iter == max_iter)."""
    from types import SimpleNamespace

    from transfer.d2engine import FinishedEvalHook

    calls = []
    hook = FinishedEvalHook(0, lambda: calls.append(1) or {})
    for it, expected in ((9, 0), (10, 1)):  # raised at the last iteration; finished
        hook.trainer = SimpleNamespace(iter=it, max_iter=10)
        calls.clear()
        hook.after_train()
        assert len(calls) == expected, it


def test_missing_real_dataset_names_paths(tmp_path, weights, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    args = run_voc.get_args_parser().parse_args(
        ["--weights", str(weights), "--seeds", "1", "--output", str(tmp_path)]
    )

    monkeypatch.setattr(
        sys,
        "argv",
        ["run_voc.py"] + ["--weights", str(weights), "--seeds", "1", "--output", str(tmp_path)],
    )
    assert run_voc.cli() == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "VOC2007" / "Annotations") in err
    assert "--dataset synthetic" in err
    assert args.dataset == "real"


def test_script_help_runs_from_repo_root():
    res = subprocess.run(
        [sys.executable, "transfer/run_coco.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "--arch" in res.stdout and "--launcher" in res.stdout


def test_weights_arch_sets_the_detector_or_is_refused():
    from transfer.detection.runner import arch_opts

    assert arch_opts("ResNet-50") == [] and arch_opts(None) == []
    assert arch_opts("ResNet-101") == ["MODEL.RESNETS.DEPTH", "101"]
    assert arch_opts("ResNet-50 x2") == ["MODEL.RESNETS.WIDTH_PER_GROUP", "128"]
    with pytest.raises(ValueError, match="ResNet-18.*bottleneck"):
        arch_opts("ResNet-18")


def test_gsg_protocols_run_and_fill_their_table(tmp_path, weights, small_shapes):
    """GSG's protocols end to end (smoke): VOC R50-FPN and COCO R50-FPN 3x, one seed each,
    then the gsg_detection table from their metrics."""
    from tables import __main__ as tables_cli

    base = ["--weights", str(weights), "--seeds", "1", "--dataset", "synthetic", "--output",
            str(tmp_path), "--shapes-root", str(small_shapes)]  # fmt: skip
    assert run_voc.cli([*base, "--arch", "fpn", *FAST]) == 0
    assert run_coco.cli([*base, "--arch", "fpn", "--schedule", "3x", *FAST]) == 0
    voc = json.loads((tmp_path / "voc_fpn_144k_smoke/tv_r50/seed0/metrics.json").read_text())
    coco = json.loads((tmp_path / "coco_fpn_3x_smoke/tv_r50/seed0/metrics.json").read_text())
    assert voc["base_protocol"] == "voc_fpn_144k" and coco["base_protocol"] == "coco_fpn_3x"
    assert "bbox" in voc and "bbox" in coco
    written = tables_cli.main(tables_cli.get_args_parser().parse_args(
        ["--runs", str(tmp_path), "--out", str(tmp_path / "tables")]))  # fmt: skip
    assert "gsg_detection.md" in written
    assert "tv_r50" in written["gsg_detection.md"].read_text()


def _copy_shapes(shapes_root, tmp_path) -> Path:
    """A copy of the default synthetic tree (the runner keeps a tree of the default spec)."""
    import shutil

    shapes = tmp_path / "shapes"
    shutil.copytree(shapes_root, shapes)
    return shapes


@pytest.mark.slow
def test_a_corrupt_training_jpeg_is_skipped_counted_and_reported(tmp_path, weights, shapes_root):
    shapes = _copy_shapes(shapes_root, tmp_path)
    bad = sorted((shapes / "VOC2012" / "JPEGImages").glob("*.jpg"))  # 16 of the 40 train images
    for p in bad:
        p.write_bytes(p.read_bytes()[:200])  # a truncated JPEG: Pillow cannot decode it
    args = _args(run_voc, (tmp_path / "runs", shapes), weights, "--seeds", "1",
                 opts=["SOLVER.MAX_ITER", "4", "TEST.PRECISE_BN.NUM_ITER", "1"])  # fmt: skip
    assert run_voc.main(args) == 0
    m = json.loads((tmp_path / "runs/voc_c4_24k_smoke/tv_r50/seed0/metrics.json").read_text())
    assert m["skipped_images"]["count"] >= 1
    assert set(m["skipped_images"]["files"]) <= {str(p) for p in bad}


def test_too_many_unreadable_training_images_stop_the_seed(shapes_root):
    from common.badimages import TooManyBadImages
    from transfer.detection.checks import MIN_SEEN, SkippingMapper
    from transfer.detection.config import build_config

    cfg = build_config("voc_c4_24k", smoke=True, device="cpu")
    mapper = SkippingMapper(cfg, str(shapes_root.parent), max_frac=0.01)
    missing = {"file_name": str(shapes_root / "nope.jpg"), "height": 8, "width": 8,
               "image_id": 0, "annotations": []}  # fmt: skip
    for _ in range(MIN_SEEN - 1):
        assert mapper(missing) is None  # skipped (MapDataset draws another image)
    with pytest.raises(TooManyBadImages, match=r"50 of 50 training images could not be read"):
        mapper(missing)


def test_a_corrupt_test_image_or_a_foreign_class_stops_before_training(
    tmp_path, weights, shapes_root, capsys
):
    shapes = _copy_shapes(shapes_root, tmp_path)
    test_id = (shapes / "VOC2007/ImageSets/Main/test.txt").read_text().split()[0]
    image = shapes / "VOC2007" / "JPEGImages" / f"{test_id}.jpg"
    image.write_bytes(b"not a jpeg")
    argv = ["--weights", str(weights), "--seeds", "1", "--dataset", "synthetic", "--output",
            str(tmp_path / "runs"), "--shapes-root", str(shapes), *FAST]  # fmt: skip
    assert run_voc.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{image}: unreadable evaluation image" in err[0]
    assert not (tmp_path / "runs" / "voc_c4_24k_smoke").exists()  # no seed started
    image.write_bytes((shapes_root / "VOC2007" / "JPEGImages" / f"{test_id}.jpg").read_bytes())
    train_id = (shapes / "VOC2012/ImageSets/Main/trainval.txt").read_text().split()[0]
    xml = shapes / "VOC2012" / "Annotations" / f"{train_id}.xml"
    text = xml.read_text()
    first = text.split("<name>")[1].split("</name>")[0]
    xml.write_text(text.replace(f"<name>{first}</name>", "<name>unicorn</name>", 1))
    assert run_voc.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{xml}: object class 'unicorn' is not one of the 6" in err[0]
