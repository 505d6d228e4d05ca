"""The classification protocols: configs as cited, runs, resume, frozen backbone, kNN maths,
multi-layer feature sizes, and a probe that measures something."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.archs import ARCHS
from common.cli import BadInput, ConfigError, InputNotFound, Interrupted
from common.metrics import read_events
from transfer import run_linear
from transfer.classification import knn as knn_mod
from transfer.classification import train as cls_train
from transfer.classification.data import check_layout, read_subset, scan_split
from transfer.classification.knn import knn_scores, topk_correct
from transfer.classification.models import STAGES, FeatureResNet, MultiHead, feature_dims
from transfer.classification.protocols import CLS_PROTOCOLS, resolve
from transfer.classification.runner import plan_cls

REPO = Path(__file__).resolve().parents[2]

# The cited values (docs/protocols.md), key by key: a change to a protocol fails here.
EXPECTED = {
    "linear_care": dict(
        kind="linear", head="linear_bn", epochs=80, batch_size=256, lr_per_256=0.2,
        momentum=0.9, nesterov=False, weight_decay=0.0, schedule="cosine", milestones=(),
        drop_last=True, train_aug="rrc_flip", crop=224, val_resize=256, square_resize=False,
        stages=("res5",),
    ),
    "linear_moco": dict(
        kind="linear", head="linear", epochs=100, batch_size=256, lr_per_256=30.0,
        momentum=0.9, nesterov=False, weight_decay=0.0, schedule="step", milestones=(60, 80),
        train_aug="rrc_flip", crop=224, val_resize=256, stages=("res5",),
    ),
    "linear_multilayer": dict(
        kind="multilayer", head="multihead", epochs=90, batch_size=256, lr_per_256=0.1,
        momentum=0.9, nesterov=True, weight_decay=1e-4, schedule="step", milestones=(30, 60),
        train_aug="rrc_flip_jitter_lighting", crop=224, val_resize=256, pool="specified",
        stages=("conv1", "res2", "res3", "res4", "res5"),
    ),
    "knn": dict(
        kind="knn", head="none", knn_ks=(20, 200), knn_temperature=0.2, crop=224,
        val_resize=256, square_resize=True, stages=("res5",),
    ),
    "semisup_1pct": dict(
        kind="finetune", head="linear", epochs=60, batch_size=4096, lr_per_256=0.05,
        momentum=0.9, nesterov=True, weight_decay=0.0, schedule="cosine", subset="1percent",
        sync_bn=True, train_aug="rrc_flip", crop=224, val_resize=256,
    ),
    "semisup_10pct": dict(
        kind="finetune", head="linear", epochs=30, batch_size=4096, lr_per_256=0.05,
        momentum=0.9, nesterov=True, weight_decay=0.0, schedule="cosine", subset="10percent",
        sync_bn=True, train_aug="rrc_flip", crop=224, val_resize=256,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_protocol_values_are_the_cited_ones(name):
    p = CLS_PROTOCOLS[name]
    for key, value in EXPECTED[name].items():
        assert getattr(p, key) == value, (name, key)
    assert p.source and not p.smoke
    s = resolve(name, True)
    assert s.name == f"{name}_smoke" and s.smoke and s.kind == p.kind and s.head == p.head


def test_lr_is_scaled_by_batch_and_overrides_are_checked():
    assert CLS_PROTOCOLS["linear_care"].lr == pytest.approx(0.2)
    assert CLS_PROTOCOLS["semisup_1pct"].lr == pytest.approx(0.8)  # SimCLR: 0.05 x 4096/256
    p = resolve("linear_moco", False, ["batch_size", "512", "milestones", "(6,8)"])
    assert p.lr == pytest.approx(60.0) and p.milestones == (6, 8)
    with pytest.raises(ConfigError, match="no setting 'lr'"):
        resolve("linear_care", False, ["lr", "0.1"])
    with pytest.raises(ConfigError, match="schedule must be one of"):
        resolve("linear_care", False, ["schedule", "poly"])
    with pytest.raises(ConfigError, match="KEY VALUE"):
        resolve("linear_care", False, ["epochs"])


def test_lr_schedules_by_hand():
    care = CLS_PROTOCOLS["linear_care"]  # 0.2 * 0.5 * (1 + cos(pi * s / (80 * 10)))
    assert cls_train.lr_at(care, 0, 0, 10) == pytest.approx(0.2)
    assert cls_train.lr_at(care, 400, 40, 10) == pytest.approx(0.1)
    assert cls_train.lr_at(care, 200, 20, 10) == pytest.approx(0.1 * (1 + math.sqrt(0.5)))
    moco = CLS_PROTOCOLS["linear_moco"]
    assert [cls_train.lr_at(moco, 0, e, 1) for e in (0, 59, 60, 79, 80, 99)] == pytest.approx(
        [30, 30, 3, 3, 0.3, 0.3]
    )


def test_knn_matches_a_hand_computed_vote():
    # bank: 4 unit vectors in 2-D; classes 0, 0, 1, 1
    bank = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([0, 0, 1, 1])
    q = torch.tensor([[0.6, 0.8]])  # cos with the bank: 0.6, 0.96, 0.8, 1.0
    # k = 3 nearest: idx 3 (1.0, class 1), 1 (0.96, class 0), 2 (0.8, class 1); T = 0.2
    s = knn_scores(q, bank, labels, 2, k=3, temperature=0.2)
    assert s[0, 0].item() == pytest.approx(math.exp(0.96 / 0.2), rel=1e-5)
    assert s[0, 1].item() == pytest.approx(math.exp(1.0 / 0.2) + math.exp(0.8 / 0.2), rel=1e-5)
    # k = 2: class 1 gets exp(5), class 0 exp(4.8): still class 1; k = 1 likewise
    assert knn_scores(q, bank, labels, 2, k=2, temperature=0.2).argmax().item() == 1
    # a query next to the class-0 pair: k = 2 -> class 0
    q0 = torch.nn.functional.normalize(torch.tensor([[0.95, 0.3]]), dim=1)
    assert knn_scores(q0, bank, labels, 2, k=2, temperature=0.2).argmax().item() == 0
    assert topk_correct(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([0, 0]), (1, 2)) == {
        1: 1,
        2: 2,
    }


@pytest.mark.parametrize("k", [1, 5, 40])
def test_knn_over_bank_shards_equals_the_whole_bank(k):
    """What each process of ``sharded_knn_scores`` does, without processes: the k nearest of
    each shard (one shard empty, one smaller than k), merged, vote as the whole bank."""
    g = torch.Generator().manual_seed(0)
    # float64: shards and the whole bank may take other matmul kernels
    bank = torch.nn.functional.normalize(torch.randn(30, 8, generator=g).double(), dim=1)
    labels = torch.randint(0, 4, (30,), generator=g)
    query = torch.nn.functional.normalize(torch.randn(7, 8, generator=g).double(), dim=1)
    whole = knn_scores(query, bank, labels, 4, k=k, temperature=0.2)
    shards = [slice(0, 0), slice(0, 3), slice(3, 17), slice(17, 30)]
    k_eff = min(k, 30)
    parts = [knn_mod.nearest(query, bank[s], labels[s], k_eff) for s in shards]
    assert all(p[0].shape == (7, k_eff) for p in parts)
    merged = knn_mod.vote(
        torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1), 4, k_eff, 0.2
    )
    assert torch.allclose(merged, whole, rtol=1e-12, atol=0)
    assert whole.sum(1).gt(0).all()  # every query got votes


def test_multilayer_feature_sizes_are_openselfsups():
    # OpenSelfSup multi_pooling.py POOL_DIMS['resnet50'] = [9216, 9216, 8192, 9216, 8192]
    dims = feature_dims(ARCHS["resnet50"], STAGES, "specified", 224)
    assert list(dims.values()) == [9216, 9216, 8192, 9216, 8192]
    assert list(feature_dims(ARCHS["resnet50"], STAGES, "adaptive", 96).values()) == list(
        dims.values()
    )
    net = FeatureResNet(ARCHS["resnet50"]).eval()
    head = MultiHead(ARCHS["resnet50"], STAGES, 10, "specified", 224).eval()
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 224, 224), STAGES)
        assert [tuple(f.shape[1:]) for f in feats.values()] == [
            (64, 112, 112), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7),
        ]  # fmt: skip
        out = head(feats)
    assert {s: o.shape for s, o in out.items()} == {s: (1, 10) for s in STAGES}
    assert [head.fcs[s].in_features for s in STAGES] == list(dims.values())
    assert not head.norms["res3"].affine and head.norms["res3"].momentum == 0.1


def _args(tmp_path, protocol, weights, seeds=2, data=None, opts=()):
    return run_linear.get_args_parser().parse_args(
        ["--weights", str(weights), "--protocol", protocol, "--seeds", str(seeds),
         "--dataset", "synthetic", "--output", str(tmp_path)]
        + (["--data", str(data)] if data else [])
        + ["--arch", "resnet18", *opts]
    )  # fmt: skip


@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    import torchvision

    path = tmp_path_factory.mktemp("w") / "tv_r18.pth"
    torch.manual_seed(3)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def imagefolder(shapes_root):
    return shapes_root / "imagefolder"


@pytest.mark.parametrize("protocol", sorted(CLS_PROTOCOLS))
def test_smoke_runs_two_seeds_then_skips(protocol, tmp_path, r18, imagefolder, capsys):
    args = _args(tmp_path, protocol, r18, data=imagefolder)
    assert run_linear.main(args) == 0
    run_dir = tmp_path / f"{protocol}_smoke" / "tv_r18"
    for k in (0, 1):
        m = json.loads((run_dir / f"seed{k}" / "metrics.json").read_text())
        assert m["seed"] == 1000 + k and m["base_protocol"] == protocol
        assert m["weights"]["sha256"] and m["arch"] == "ResNet-18"
        for key, v in m["cls"].items():
            if "top" in key:
                assert 0.0 <= v <= 100.0
        for name in ("config.yaml", "log.txt", "environment.json", "sessions.json"):
            assert (run_dir / f"seed{k}" / name).exists()
        if protocol != "knn":
            lines = (run_dir / f"seed{k}" / "train_metrics.jsonl").read_text().splitlines()
            assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
            ev = read_events(run_dir / f"seed{k}")
            assert {"train/loss", "train/top1", "lr"} <= set(ev), sorted(ev)
            assert {"eval/top1", "eval/conv5_top1"} & set(ev), sorted(ev)
            assert [s for s, _ in ev["train/loss"]] == [json.loads(x)["iteration"] for x in lines]
    assert "loaded and verified: 120 tensors" in (run_dir / "seed0" / "log.txt").read_text()
    capsys.readouterr()
    assert run_linear.main(args) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 2


def _train_one(tmp_path, weights, data, stop_after=None, protocol="linear_care"):
    args = _args(tmp_path, protocol, weights, seeds=1, data=data, opts=["epochs", "3"])
    spec = plan_cls(args).specs[0]
    if stop_after is not None:

        class StopLater(cls_train.StopFlag):
            polls = 0

            @property
            def requested(self):
                StopLater.polls += 1
                return StopLater.polls > stop_after

            @requested.setter
            def requested(self, value):
                pass

        old = cls_train.StopFlag
        cls_train.StopFlag = StopLater
        try:
            with pytest.raises(Interrupted, match="re-run the same command"):
                cls_train.train_cls_seed(spec)
        finally:
            cls_train.StopFlag = old
        return spec
    return cls_train.train_cls_seed(spec)


def test_interrupted_seed_resumes_to_the_same_result(tmp_path, r18, imagefolder):
    whole = _train_one(tmp_path / "a", r18, imagefolder)
    spec = _train_one(tmp_path / "b", r18, imagefolder, stop_after=4)  # epoch 2, step 2
    seed_dir = Path(spec.seed_dir)
    ckpt = torch.load(seed_dir / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and not (seed_dir / "metrics.json").exists()
    resumed = cls_train.train_cls_seed(spec)
    assert resumed["cls"] == whole["cls"]
    assert "resuming seed 0 after epoch 1" in (seed_dir / "log.txt").read_text()
    sessions = json.loads((seed_dir / "sessions.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["interrupted", "finished"]
    a = torch.load(tmp_path / "a" / "linear_care_smoke/tv_r18/seed0/checkpoint.pth")["head"]
    b = torch.load(seed_dir / "checkpoint.pth")["head"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("protocol", ["linear_care", "linear_multilayer"])
def test_backbone_stays_frozen(protocol, tmp_path, r18, imagefolder, monkeypatch):
    args = _args(tmp_path, protocol, r18, seeds=1, data=imagefolder, opts=["epochs", "2"])
    spec = plan_cls(args).specs[0]
    run = cls_train.Run(spec)
    before = {k: v.clone() for k, v in run.backbone.state_dict().items()}
    heads = []
    real_build = cls_train.build_head

    def keep(r):
        h = real_build(r)
        heads.append((h, {k: v.clone() for k, v in h.state_dict().items()}))
        return h

    monkeypatch.setattr(cls_train, "build_head", keep)
    cls_train.fit(run)
    after = run.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    head, init = heads[0]
    changed = [k for k, v in head.state_dict().items() if not torch.equal(v, init[k])]
    assert any(k.endswith("weight") for k in changed)


def test_finetuning_changes_the_backbone(tmp_path, r18, imagefolder):
    args = _args(tmp_path, "semisup_10pct", r18, seeds=1, data=imagefolder, opts=["epochs", "1"])
    run = cls_train.Run(plan_cls(args).specs[0])
    assert len(run.train_samples) == 6 * 8  # the synthetic 10percent.txt: half of 16 per class
    before = run.backbone.body.conv1.weight.clone()
    cls_train.fit(run)
    assert not torch.equal(before, run.backbone.body.conv1.weight)


def test_nan_loss_fails_the_seed_with_a_clear_error(tmp_path, r18, imagefolder):
    from transfer.launch import run_seed_process

    args = _args(tmp_path, "linear_moco", r18, seeds=1, data=imagefolder,
                 opts=["lr_per_256", "1e38", "epochs", "2"])  # fmt: skip
    spec = plan_cls(args).specs[0]
    assert run_seed_process(spec) == 1
    failed = json.loads((Path(spec.seed_dir) / "failed.json").read_text())
    assert "NonFiniteLoss" in failed["error"] and "lower lr_per_256" in failed["error"]


def test_bad_data_gets_named_errors(tmp_path, imagefolder):
    with pytest.raises(InputNotFound, match="ROOT/train/<class>"):
        check_layout(tmp_path)
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "x.JPEG").write_bytes(b"")
    with pytest.raises(BadInput, match="valprep"):
        scan_split(tmp_path, "val")
    samples = scan_split(imagefolder, "train")[1]
    with pytest.raises(InputNotFound, match="1percent.txt"):
        read_subset(tmp_path / "1percent.txt", samples)
    (tmp_path / "s.txt").write_text("n01440764_10026.JPEG\n")
    with pytest.raises(BadInput, match="not in the train split"):
        read_subset(tmp_path / "s.txt", samples)


def test_unreadable_images_are_skipped_and_counted(tmp_path, r18, imagefolder):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(imagefolder, data)
    bad = sorted((data / "train" / "circle").iterdir())[0]
    bad.write_bytes(b"not a jpeg")
    args = _args(tmp_path, "knn", r18, seeds=1, data=data, opts=["max_bad_frac", "0.02"])
    assert run_linear.main(args) == 0
    m = json.loads((tmp_path / "knn_smoke/tv_r18/seed0/metrics.json").read_text())
    assert m["cls"]["bank_images"] == 6 * 16 - 1
    args = _args(tmp_path / "strict", "knn", r18, seeds=1, data=data, opts=["max_bad_frac", "0"])
    assert run_linear.main(args) == 1
    failed = (tmp_path / "strict/knn_smoke/tv_r18/seed0/failed.json").read_text()
    assert "could not be read" in failed


def _supervised_r18(data: Path, out: Path) -> Path:
    """A ResNet-18 trained with labels on the silhouettes for a few seconds."""
    import torchvision
    from torchvision import transforms as T

    torch.manual_seed(0)
    ds = torchvision.datasets.ImageFolder(
        data / "train", T.Compose([T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])
    )
    net = torchvision.models.resnet18(num_classes=len(ds.classes))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True)
    for _ in range(6):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    torch.save(net.state_dict(), out)
    return out


@pytest.mark.extended  # a learning check (minutes of CI time): make test-extended
def test_the_linear_probe_measures_something(tmp_path):
    from synthetic import write_silhouettes

    data = tmp_path / "silhouettes"
    write_silhouettes(data, 0, 32, {"train": 32, "val": 16})
    trained = _supervised_r18(data, tmp_path / "sup_r18.pth")
    opts = ["epochs", "8", "crop", "32", "val_resize", "36"]
    top1 = {}
    for weights in (trained, "none"):
        args = _args(tmp_path, "linear_care", weights, seeds=1, data=data, opts=opts)
        assert run_linear.main(args) == 0
    for stem in ("sup_r18", "random_init_r18"):
        m = json.loads((tmp_path / f"linear_care_smoke/{stem}/seed0/metrics.json").read_text())
        top1[stem] = m["cls"]["top1"]
    chance = 100 / 6
    assert top1["sup_r18"] > chance + 30, top1
    assert top1["random_init_r18"] < top1["sup_r18"] - 15, top1


def test_script_help_runs_from_repo_root():
    r = subprocess.run(
        [sys.executable, "transfer/run_linear.py", "--help"], cwd=REPO, capture_output=True
    )
    assert r.returncode == 0 and b"linear_multilayer" in r.stdout


def test_missing_data_and_subset_are_named(tmp_path, r18, capsys):
    args = run_linear.get_args_parser().parse_args(
        ["--weights", str(r18), "--protocol", "linear_care", "--output", str(tmp_path)]
    )
    with pytest.raises(ConfigError, match="--data ROOT is required"):
        run_linear.main(args)
    assert (
        run_linear.cli(
            ["--weights", str(r18), "--protocol", "semisup_1pct", "--data", str(tmp_path)]
        )
        == 2
    )
    assert "ROOT/train/<class>" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extended", [False, pytest.param(True, marks=pytest.mark.extended)]
)  # the three training protocols in make test-extended
def test_torchrun_two_processes_match_one(tmp_path, r18, imagefolder, free_port, extended):
    """kNN over 2 CPU processes (gloo): the bank gathered from both shards gives the numbers
    of one process; the linear probe (DDP head) and fine-tuning (DDP over the whole
    network) train and record the world size."""
    common = ["--weights", str(r18), "--seeds", "1", "--dataset", "synthetic",
              "--data", str(imagefolder)]  # fmt: skip
    args = _args(tmp_path / "one", "knn", r18, seeds=1, data=imagefolder)
    assert run_linear.main(args) == 0
    runs = (("knn", []),) if not extended else (
        ("linear_care", []), ("semisup_10pct", ["epochs", "2"]),
        ("linear_multilayer", ["epochs", "1"]))  # fmt: skip
    for protocol, extra in runs:
        r = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
             "--master-port", str(free_port), "transfer/run_linear.py", "--protocol", protocol,
             *common, "--output", str(tmp_path / "two"), *extra],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    if not extended:
        one = json.loads((tmp_path / "one/knn_smoke/tv_r18/seed0/metrics.json").read_text())
        two = json.loads((tmp_path / "two/knn_smoke/tv_r18/seed0/metrics.json").read_text())
        assert two["world_size"] == 2 and two["cls"]["bank_images"] == 6 * 16
        for key in ("k20_top1", "k200_top1", "k200_top5"):
            assert two["cls"][key] == pytest.approx(one["cls"][key]), key
        return
    for protocol in ("linear_care_smoke", "semisup_10pct_smoke", "linear_multilayer_smoke"):
        m = json.loads((tmp_path / "two" / protocol / "tv_r18/seed0/metrics.json").read_text())
        assert m["world_size"] == 2 and m["cls"]["val_images"] == 6 * 8


def test_slurm_launcher_runs_the_seed_as_a_job(tmp_path, r18, imagefolder):
    """``--launcher slurm`` through submitit's local executor: one job per seed."""
    args = _args(tmp_path, "knn", r18, seeds=1, data=imagefolder,
                 opts=["--launcher", "slurm", "--slurm-cluster", "local"])  # fmt: skip
    assert run_linear.main(args) == 0
    m = json.loads((tmp_path / "knn_smoke/tv_r18/seed0/metrics.json").read_text())
    assert m["cls"]["k200_top1"] >= 0 and (tmp_path / "knn_smoke/tv_r18/slurm").is_dir()


@pytest.mark.extended  # make test resumes a seed in-process (test_interrupted_seed_resumes...)
def test_sigterm_keeps_a_resumable_state_and_the_rerun_finishes(tmp_path, r18, imagefolder):
    import signal
    import time

    cmd = [sys.executable, "transfer/run_linear.py", "--weights", str(r18), "--protocol",
           "linear_care", "--seeds", "1", "--dataset", "synthetic", "--data", str(imagefolder),
           "--output", str(tmp_path), "epochs", "40"]  # fmt: skip
    seed_dir = tmp_path / "linear_care_smoke/tv_r18/seed0"
    log = tmp_path / "driver.log"
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would block the child
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        text = (seed_dir / "log.txt").read_text() if (seed_dir / "log.txt").exists() else ""
        if "epoch 2/40" in text:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # to the driver, which forwards it to the seed process
    assert proc.wait(timeout=120) == 130, log.read_text()[-2000:]
    assert "re-run the same command to resume" in log.read_text()
    done = torch.load(seed_dir / "checkpoint.pth", weights_only=True)["epoch"]
    assert 2 <= done < 40 and not (seed_dir / "metrics.json").exists()
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"resuming seed 0 after epoch {done}" in rerun.stdout
    lines = (seed_dir / "train_metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, 41))


def _global_bn_worker(rank: int, out: str, port: int) -> None:

    import torch.distributed as dist

    from common.syncnorm import GlobalBatchNorm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    x = (torch.randn(6, 3, 4, 4) * 3 + 1).double()  # float64: the formula, not the rounding
    w = torch.randn(6, 3, 4, 4).double()
    half = slice(0, 2) if rank == 0 else slice(2, 6)  # unequal shares of the global batch
    xi = x[half].clone().requires_grad_(True)
    bn = GlobalBatchNorm(3, affine=False, momentum=0.1).double()
    y = bn(xi)
    (y * w[half]).sum().backward()
    torch.save({"y": y.detach(), "grad": xi.grad, "mean": bn.running_mean,
                "var": bn.running_var}, f"{out}/rank{rank}.pt")  # fmt: skip
    dist.destroy_process_group()


def test_multilayer_heads_batchnorm_covers_the_global_batch(tmp_path, free_port):
    """Two CPU processes with 2 and 4 of 6 samples: GlobalBatchNorm gives the outputs,
    input gradients and running statistics of one BatchNorm2d over all 6 (OpenSelfSup's
    SyncBN benchmark setting); in one process it is BatchNorm2d."""
    import torch.multiprocessing as mp

    from common.syncnorm import GlobalBatchNorm
    from transfer.classification.models import synchronise_head_bn

    mp.spawn(_global_bn_worker, args=(str(tmp_path), free_port), nprocs=2)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    torch.manual_seed(0)
    x = (torch.randn(6, 3, 4, 4) * 3 + 1).double().requires_grad_(True)
    w = torch.randn(6, 3, 4, 4).double()
    bn = torch.nn.BatchNorm2d(3, affine=False, momentum=0.1).double()
    y = bn(x)
    (y * w).sum().backward()
    close = dict(rtol=1e-12, atol=1e-12)  # float64 sums in another order
    assert torch.allclose(torch.cat([p["y"] for p in parts]), y.detach(), **close)
    assert torch.allclose(torch.cat([p["grad"] for p in parts]), x.grad, **close)
    for p in parts:
        assert torch.allclose(p["mean"], bn.running_mean, **close)
        assert torch.allclose(p["var"], bn.running_var, **close)
    head = MultiHead(ARCHS["resnet18"], ("res2",), 4, "adaptive", 64)
    synchronise_head_bn(head, cuda=False)
    assert type(head.norms["res2"]) is GlobalBatchNorm and not head.norms["res2"].affine
    single = GlobalBatchNorm(3, affine=False)  # no process group: plain BatchNorm2d
    torch.manual_seed(1)
    z = torch.randn(4, 3, 2, 2)
    assert torch.equal(single(z), torch.nn.BatchNorm2d(3, affine=False)(z))


def test_the_inprocess_launcher_gives_the_child_process_result(tmp_path, r18, imagefolder,
                                                               monkeypatch):  # fmt: skip
    """--launcher inprocess runs the seed here (no child process is started) and writes
    the same metrics as a seed in its own process."""
    import transfer.launch

    assert run_linear.main(_args(tmp_path / "child", "knn", r18, seeds=1, data=imagefolder)) == 0

    def no_child(spec):
        raise AssertionError("a child process was started")

    monkeypatch.setattr(transfer.launch, "run_local", no_child)
    args = _args(tmp_path / "here", "knn", r18, seeds=1, data=imagefolder,
                 opts=["--launcher", "inprocess"])  # fmt: skip
    assert run_linear.main(args) == 0
    a, b = (json.loads((tmp_path / w / "knn_smoke/tv_r18/seed0/metrics.json").read_text())
            for w in ("child", "here"))  # fmt: skip
    assert a["cls"] == b["cls"] and a["seed"] == b["seed"]


@pytest.mark.extended
def test_a_preempted_slurm_seed_requeues_and_resumes(tmp_path, r18, imagefolder):
    """Slurm's end-of-job signal (submitit's USR2; its local executor sends it 15 s before
    the job's 30 s limit): the seed process checkpoints, the job requeues itself, the
    requeued job resumes the seed from its checkpoint; every epoch is trained once."""
    import submitit

    from transfer.slurmjob import SlurmSeedJob

    args = _args(tmp_path, "linear_care", r18, seeds=1, data=imagefolder, opts=["epochs", "80"])
    run = plan_cls(args)
    executor = submitit.LocalExecutor(run.run_dir / "slurm", max_num_timeout=20)
    executor.update_parameters(timeout_min=0.5, signal_delay_s=15)
    job = executor.submit(SlurmSeedJob(), run.specs[0])
    assert job.result() == 0
    seed_dir = run.run_dir / "seed0"
    done = [json.loads(x)["epoch"] for x in _text(seed_dir / "train_metrics.jsonl").splitlines()]
    assert done == list(range(1, 81))
    resumed = [x for x in _text(seed_dir / "log.txt").splitlines() if "resuming seed 0" in x]
    sessions = json.loads((seed_dir / "sessions.json").read_text())["sessions"]
    statuses = [s["status"] for s in sessions]
    assert len(resumed) >= 1 and statuses == ["interrupted"] * len(resumed) + ["finished"]
    assert json.loads((seed_dir / "metrics.json").read_text())["cls"]["val_images"] == 48


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
