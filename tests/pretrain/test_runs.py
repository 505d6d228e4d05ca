"""pretrain end to end on tiny inputs: resume equivalence, faults, DDP, conversion."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.badimages import TooManyBadImages
from common.cli import Interrupted
from pretrain.config import PretrainConfig
from pretrain.methods import method_options
from pretrain.recipes import RECIPES, recipe_config
from pretrain.trainer import NonFiniteLoss, Trainer, run

REPO = Path(__file__).resolve().parents[2]
SMALL = RECIPES["test"]["options"]


def tiny(tmp: Path, data: Path, method: str = "byol", **kw) -> PretrainConfig:
    """The ``test`` recipe on ``data`` without the kNN probe."""
    return recipe_config(
        "test", method=method, data=str(data), output=str(tmp), **{"knn_every": 0, **kw}
    )


@pytest.fixture(scope="module")
def folder(shapes_root) -> Path:
    return shapes_root / "imagefolder"  # 96 train images: 12 steps of 8 per epoch


def _fit_until(cfg: PretrainConfig, resume: bool = False) -> Trainer:
    t = Trainer(cfg)
    if resume:
        t.load(Path(cfg.output) / "checkpoint.pth")
    with pytest.raises(Interrupted):
        t.fit()
    return t


@pytest.mark.parametrize(
    "method", ["care", "byol", "simsiam", "simsiam_gsg", "byol_gsg", "byol_gsgpaper", "maskco"]
)
def test_resume_is_exact(tmp_path, folder, method):
    cfg = tiny(tmp_path / "a", folder, method=method, stop_after_steps=4)
    straight = _fit_until(cfg)
    first = _fit_until(replace(cfg, output=str(tmp_path / "b"), stop_after_steps=2))
    assert first.global_step == 2
    second = _fit_until(replace(cfg, output=str(tmp_path / "b")), resume=True)
    assert second.global_step == 4 and second.step_in_epoch == 4
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = straight.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)


@pytest.mark.parametrize("method", ["maskco", "simsiam_gsg"])
def test_the_knn_probe_does_not_change_training(tmp_path, folder, method):
    """The per-epoch kNN probe reads features only: a run with it ends with the same weights
    as one without (MaskCo's boxes and GSG's pairing draw from the global RNG, which
    starting the probe's loaders must leave alone)."""
    runs = {}
    for every in (0, 1):
        cfg = tiny(tmp_path / str(every), folder, method=method, epochs=2, knn_every=every)
        t = Trainer(cfg)
        t.fit()
        runs[every] = t
    assert any("knn/top1_k20" in h for h in runs[1].history)
    a, b = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["care", "maskco"])
def test_the_online_probe_leaves_the_pretrained_weights_bit_identical(tmp_path, folder, method):
    """--online-probe trains its head on the detached features the method's own forward
    made (no extra forward: BatchNorm statistics untouched), draws its init from its own
    generator and evaluates in eval mode: the same weights and buffers as without it."""
    runs = {}
    for probe in (False, True):
        cfg = tiny(tmp_path / str(probe), folder, method=method, epochs=2, knn_every=1,
                   online_probe=probe, keep_checkpoints="all")  # fmt: skip
        t = Trainer(cfg)
        t.fit()
        runs[probe] = t
    epochs = [h for h in runs[True].history if h["type"] == "epoch" and "probe/top1" in h]
    assert [h["epoch"] for h in epochs] == [1, 2]
    assert all(0 <= h["probe/top1"] <= 100 and 0 <= h["probe/train_top1"] <= 100 for h in epochs)
    assert not any("probe/top1" in h for h in runs[False].history)
    a, b = runs[False].model.state_dict(), runs[True].model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the head learns: its weights moved from their init, and resume restores them
    saved = torch.load(tmp_path / "True" / "checkpoint.pth", weights_only=False)["state"]
    head = runs[True].probe.head.state_dict()
    assert all(torch.equal(saved["probe"]["head"][k], head[k]) for k in head)
    fresh = Trainer(tiny(tmp_path / "x", folder, method=method, online_probe=True))
    assert not torch.equal(fresh.probe.head.weight, head["weight"])
    # its lr followed the run's schedule: at the last step, 0.1 x 8 / 256 x lr / base lr
    t = runs[True]
    t.global_step -= 1
    last_lr, _ = t.schedule()
    t.global_step += 1
    assert 0 < last_lr < t.lr
    expected = 0.1 * t.global_batch / 256 * last_lr / t.lr
    assert t.probe.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)


def test_a_run_resumed_after_a_crash_logs_each_step_once(tmp_path, folder):
    """Killed at step 17, after the checkpoint of epoch 1 (step 12) and with steps 13..17
    logged: the resumed run logs them again, and metrics.jsonl and TensorBoard's reading of
    the event files hold every iteration once, with the expected tags."""
    from common.metrics import read_events, read_jsonl

    cfg = tiny(tmp_path, folder, epochs=2, save_every=1, log_every=1, knn_every=1)
    t = Trainer(cfg)
    step = t.train_step

    def crash(*a):
        if t.global_step == 17:
            raise RuntimeError("killed")
        return step(*a)

    t.train_step = crash
    with pytest.raises(RuntimeError, match="killed"):
        t.fit()
    assert max(x["iteration"] for x in read_jsonl(tmp_path / "metrics.jsonl")) == 17
    t = Trainer(cfg)
    t.load(tmp_path / "checkpoint.pth")
    assert t.global_step == 12
    t.fit()
    lines = read_jsonl(tmp_path / "metrics.jsonl")
    steps = [x for x in lines if x["type"] == "step"]
    assert [x["iteration"] for x in steps] == list(range(1, 25))
    assert [(x["iteration"], x["epoch"]) for x in lines if x["type"] == "epoch"] == [
        (0, 0), (12, 1), (24, 2)
    ]  # fmt: skip
    ev = read_events(tmp_path)
    assert {"train/loss", "lr", "train/ema_momentum", "train/img_per_s", "train/epoch_loss",
            "knn/top1_k20", "knn/top1_k200", "data/bad_images"} <= set(ev)  # fmt: skip
    assert ev["train/loss"] == [(x["iteration"], pytest.approx(x["train/loss"])) for x in steps]
    assert [s for s, _ in ev["knn/top1_k20"]] == [0, 12, 24]


@pytest.mark.parametrize("method", ["byol", "simsiam", "simsiam_gsg", "byol_gsg", "maskco"])
def test_final_checkpoint_converts_for_transfer(tmp_path, folder, method):
    from transfer.convert import convert_file

    out = run(
        tiny(tmp_path, folder, method=method, epochs=1, out=str(tmp_path / f"{method}_r18.pth"))
    )
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["meta"]["method"] == method.upper() and ckpt["meta"]["epochs"] == 1
    assert ckpt["meta"]["hparams"]["method"] == method
    assert ckpt["meta"]["options"] == ckpt["meta"]["hparams"]["options"]
    assert ckpt["meta"]["options"]["proj_dim"] == 16  # the recipe's small heads
    report = convert_file(out, tmp_path / f"{method}_r18.pkl")
    assert report["arch"] == "ResNet-18" and report["max_rel_diff"] <= 1e-4
    assert report["meta"]["method"] == method.upper()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(x["type"] == "step" and "train/loss" in x and "train/img_per_s" in x for x in lines)
    assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize("keep", ["final", "all"])
def test_a_finished_run_keeps_its_weights_and_is_found_finished(tmp_path, folder, keep):
    """keep final (default): checkpoint.pth holds the exported backbone and the history, no
    model / optimiser state (CARE R50's is 1 GB otherwise); a re-run trains nothing and
    exports the same weights. keep all: the resumable state stays."""
    cfg = tiny(tmp_path, folder, method="care", epochs=1, keep_checkpoints=keep,
               out=str(tmp_path / "care_r18.pth"))  # fmt: skip
    assert recipe_config("test", method="care", output="x").keep_checkpoints == "final"
    out = run(cfg)
    first = torch.load(out, weights_only=True)["backbone"]
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=False)["state"]
    assert ("model" in state and "optimizer" in state) == (keep == "all")
    assert state.get("finished", False) == (keep == "final")
    steps = (tmp_path / "metrics.jsonl").read_text()
    again = run(cfg)
    assert (tmp_path / "metrics.jsonl").read_text() == steps  # no step trained twice
    second = torch.load(again, weights_only=True)["backbone"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_bad_images_are_skipped_then_refused(tmp_path, folder):
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    victim = sorted((data / "train" / "circle").glob("*.jpg"))[0]
    victim.write_bytes(b"this is not a jpeg")
    t = Trainer(tiny(tmp_path / "ok", data, epochs=1, max_bad_frac=0.5))
    t.fit()
    assert t.bad_images == 1
    with pytest.raises(TooManyBadImages, match=r"1 of 9\d images .* could not be read"):
        Trainer(tiny(tmp_path / "strict", data, epochs=1, max_bad_frac=0.0)).fit()


def test_wrong_layouts_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageFolder tree"):
        Trainer(tiny(tmp_path / "o", tmp_path / "nothing"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class sub-folders"):
        Trainer(tiny(tmp_path / "o", tmp_path / "empty"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, folder, monkeypatch):
    cfg = tiny(tmp_path, folder, epochs=3)
    t = Trainer(cfg)
    real = type(t.model).compute_loss

    def poisoned(self, views):
        out = real(self, views)
        if t.global_step == 14:  # epoch 2, after the epoch-1 checkpoint
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(type(t.model), "compute_loss", poisoned)
    with pytest.raises(NonFiniteLoss, match="last good checkpoint is kept"):
        t.fit()
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert ckpt["state"]["global_step"] == 12 and ckpt["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["backbone"].values() if v.is_floating_point())


def test_resume_refuses_other_settings(tmp_path, folder):
    _fit_until(tiny(tmp_path, folder, stop_after_steps=1))
    with pytest.raises(ValueError, match="base_lr"):
        run(tiny(tmp_path, folder, base_lr=0.5))


@pytest.mark.parametrize("method", ["simsiam", "maskco"])
def test_a_run_recorded_before_newer_settings_still_resumes(tmp_path, folder, method):
    """A checkpoint whose recorded config lacks settings and method options added later
    (their defaults are what that run did) resumes; a real difference is still refused."""
    cfg = tiny(tmp_path, folder, method=method, stop_after_steps=1)
    _fit_until(cfg)
    path = tmp_path / "checkpoint.pth"
    ckpt = torch.load(path, weights_only=False)
    recorded = ckpt["state"]["config"]
    for key in ("lr_batch_ref", "eval_resize", "dataset", "knn_data", "results", "cuda_graph"):
        del recorded[key]
    for key in ("zero_init", "stem_relu", "proj_layers", "proj_last_affine", "mph", "mask"):
        recorded["options"].pop(key, None)
    torch.save(ckpt, path)
    t = _fit_until(replace(cfg, stop_after_steps=2), resume=True)
    assert t.global_step == 2
    with pytest.raises(ValueError, match="lr_batch_ref"):
        run(replace(cfg, lr_batch_ref=128))


def test_sigterm_writes_a_resumable_checkpoint(tmp_path, folder):
    cmd = [
        sys.executable,
        "-m",
        "pretrain",
        "--method",
        "byol",
        "--arch",
        "resnet18",
        "--data",
        str(folder),
        "--output",
        str(tmp_path),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--workers",
        "0",
        "--knn-every",
        "0",
        "--log-every",
        "1",
        "--proj-hidden",
        "64",
        "--pred-hidden",
        "64",
        "--proj-dim",
        "16",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)["state"]
    stopped = state["global_step"]
    assert 2 <= stopped < 24
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (
        f"resumed from {tmp_path / 'checkpoint.pth'}: epoch {state['epoch']}, step {stopped}"
        in res.stdout
    )


def _ddp_worker(views, out_dir: str) -> None:
    """One rank of the trainer's DDP (its BatchNorm conversion, gloo) on half the batch."""
    import torch.distributed as dist

    from pretrain.methods import BYOL
    from pretrain.trainer import sync_batchnorm

    rank = dist.get_rank()
    torch.set_default_dtype(torch.float64)  # as the test: formulas, not float32 kernels
    torch.manual_seed(0)
    model = BYOL("resnet18", method_options("byol", SMALL, strict=False))
    model = sync_batchnorm(model, model.local_bn_modules(), cuda=False)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(list(model.online_parameters()), lr=0.1)
    half = [v[rank * 4 : (rank + 1) * 4] for v in views]
    loss = ddp(half)["loss"]
    loss.backward()
    opt.step()
    t = torch.tensor([loss.item()])
    dist.all_reduce(t)
    if rank == 0:
        state = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
        torch.save({"loss": t.item() / 2, "state": state}, Path(out_dir) / "ddp.pth")


def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path, float64):
    """DDP on 2 CPU processes with 4 images each == one process with the 8: the loss, the
    updated weights and the BatchNorm running statistics. On CPU the trainer's synchronised
    BatchNorm is ``GlobalBatchNorm`` (torch's SyncBatchNorm needs CUDA): the statistics of
    the global batch, as SyncBatchNorm gives on GPUs."""
    from common.processes import start_workers
    from pretrain.methods import BYOL

    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(2)]
    start_workers(_ddp_worker, (views, str(tmp_path)), 2)
    got = torch.load(tmp_path / "ddp.pth", weights_only=True)

    torch.manual_seed(0)
    model = BYOL("resnet18", method_options("byol", SMALL, strict=False))
    opt = torch.optim.SGD(list(model.online_parameters()), lr=0.1)
    loss = model(views)["loss"]
    loss.backward()
    opt.step()
    assert got["loss"] == pytest.approx(loss.item(), rel=1e-12)
    compared = 0
    for k, v in model.state_dict().items():
        if k.startswith("backbone.") and v.is_floating_point():
            assert got["state"][k].dtype == torch.float64
            torch.testing.assert_close(got["state"][k], v, rtol=1e-10, atol=1e-12, msg=k)
            compared += "running_var" in k
    assert compared == 20  # every BatchNorm of the ResNet-18


@pytest.mark.parametrize(
    "method",
    ["byol", *(pytest.param(m, marks=pytest.mark.extended)
               for m in ("care", "simsiam", "byol_gsg", "maskco"))],
)  # fmt: skip
def test_num_procs_trains_on_two_processes_and_rank_0_writes(tmp_path, folder, method):
    """``--num-procs 2``: one gloo group of 2 processes (8 images each: 6 steps of 16 per
    epoch); one metrics line per step, the weights exported once."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pretrain", "--recipe", "test", "--method", method, "--data",
           str(folder), "--output", str(out), "--epochs", "1", "--knn-every", "0",
           "--num-procs", "2"]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("wrote") == 1, res.stdout
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x["iteration"] for x in lines if x.get("type") == "step"]
    assert steps == list(range(1, 7))
    state = torch.load(out / "checkpoint.pth", weights_only=True)["state"]
    assert state["images_seen"] == 96 and state["global_step"] == 6


def test_two_launches_on_one_output_train_it_once(tmp_path, folder):
    """While a launcher holds the run's lock (here: this test), a second launch skips it in
    one line, or with --if-locked wait waits, then trains it; a third finds it finished.
    Every step is in metrics.jsonl once."""
    import time

    from common.locks import held_or_none
    from pretrain.trainer import run_lock_path

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pretrain", "--recipe", "test", "--method", "byol", "--data",
           str(folder), "--output", str(out), "--epochs", "2", "--knn-every", "0"]  # fmt: skip
    with held_or_none(run_lock_path(out)) as lock:
        assert lock is not None
        skipped = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert skipped.returncode == 0, skipped.stderr[-2000:]
        assert f"the run in {out} is training in another launcher" in skipped.stdout
        assert not (out / "metrics.jsonl").exists()
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waiting = subprocess.Popen([*cmd, "--if-locked", "wait"], cwd=REPO, **pipes)
        deadline = time.time() + 120
        while not waiting.stderr.readline().startswith("waiting for the lock"):
            assert time.time() < deadline and waiting.poll() is None
    stdout, stderr = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, stderr[-2000:]
    assert "wrote" in stdout
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-2000:]
    steps = [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x).get("type") == "step"]  # fmt: skip
    assert steps == sorted(set(steps)) and len(steps) == 24  # 2 epochs x 12 steps, once each
