"""Many-shot fine-tuning (ssl-transfer's finetune.py): the grid, the step batches, an
interrupted run and an interrupted grid resuming to the numbers of an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.archs import get_arch
from common.cli import Interrupted
from common.metrics import read_jsonl
from synthetic.recognition import write_recognition
from transfer.backbone import FeatureResNet
from transfer.recognition import datasets as D
from transfer.recognition import finetune as FT
from transfer.recognition.protocols import finetune_grid, resolve


def test_the_grid_is_20_runs_with_weight_decay_w_over_lr():
    grid = finetune_grid(resolve("manyshot_finetune", smoke=False))
    assert len(grid) == 20
    lrs = [0.1, 0.01, 0.001, 0.0001]
    ws = [0.0, 1e-6, 1e-5, 1e-4, 1e-3]
    want = [(lr, w / lr) for lr in lrs for w in ws]  # lr outer, from the largest
    assert np.allclose(grid, want, rtol=1e-5, atol=0)
    assert grid[0] == (pytest.approx(0.1), 0.0)
    assert grid[8] == (pytest.approx(0.01), pytest.approx(0.01, rel=1e-5))  # 1e-4 / 0.01
    assert grid[-1] == (pytest.approx(1e-4), pytest.approx(10.0, rel=1e-5))  # 1e-3 / 1e-4
    p = resolve("manyshot_finetune", smoke=False)
    settings = (p.steps, p.batch_size, p.momentum, p.image_size, p.augment)
    assert settings == (5000, 64, 0.9, 224, True)


def test_step_batches_follow_epochs_with_a_short_last_batch():
    b = FT.step_batches(10, 4, 7, seed=3)
    assert [len(x) for x in b] == [4, 4, 2, 4, 4, 2, 4]
    first = sorted(i for batch in b[:3] for i, _ in batch)
    assert first == list(range(10))  # one epoch is a permutation
    assert [i for i, _ in b[0]] != [i for i, _ in b[3]] or b[0] != b[3]
    assert b == FT.step_batches(10, 4, 7, seed=3) and b != FT.step_batches(10, 4, 7, seed=4)
    assert b[:5] == FT.step_batches(10, 4, 5, seed=3)  # a prefix: resuming skips batches
    seeds = [s for batch in b for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # every (epoch, image) has its own augmentation


class StopAt:
    """A stop flag that turns on when step ``k`` has been taken (read once per step)."""

    def __init__(self, k: int):
        self.k, self.reads = k, 0

    @property
    def requested(self) -> bool:
        self.reads += 1
        return self.reads >= self.k


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    return write_recognition(tmp_path_factory.mktemp("ft"))


def _net(seed=0):
    torch.manual_seed(seed)
    return FT.FinetuneNet(FeatureResNet(get_arch("resnet18")), 4)


def test_an_interrupted_run_resumes_to_the_same_weights(twins, tmp_path):
    samples = D.read_split("cifar10", twins, "train")
    p = resolve("manyshot_finetune", True, ["steps", "5", "checkpoint_every", "0",
                                             "image_size", "32"])  # fmt: skip
    never = StopAt(10**9)
    ref = _net()
    FT.train_run(ref, samples, p, 0.05, 1e-4, 7, tmp_path / "a.pt", never, torch.device("cpu"),
                 "ref", False)  # fmt: skip
    net = _net()
    with pytest.raises(Interrupted, match="stopped at step 2 of 5"):
        FT.train_run(net, samples, p, 0.05, 1e-4, 7, tmp_path / "b.pt", StopAt(2),
                     torch.device("cpu"), "b", False)  # fmt: skip
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 2
    resumed = _net(seed=5)  # whatever it starts from, the checkpoint replaces it
    FT.train_run(resumed, samples, p, 0.05, 1e-4, 7, tmp_path / "b.pt", never,
                 torch.device("cpu"), "b", False)  # fmt: skip
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    # the BatchNorm statistics moved: BN trains in train mode, as in ssl-transfer
    fresh = _net().backbone.body.bn1.running_mean
    assert not torch.equal(ref.backbone.body.bn1.running_mean, fresh)


def test_a_run_logs_its_steps_and_a_resumed_run_logs_each_step_once(twins, tmp_path):
    """Every step's loss and the lr that step used (CosineAnnealingLR(T_max=5) from 0.05, by
    hand: 0.05 (1 + cos(pi k / 5)) / 2 before step k + 1); a run stopped after step 2 and
    resumed from its checkpoint logs steps 1..5 once, with the uninterrupted run's losses."""
    from common.metrics import MetricsLog, read_events

    samples = D.read_split("cifar10", twins, "train")
    p = resolve("manyshot_finetune", True, ["steps", "5", "checkpoint_every", "0",
                                             "image_size", "32", "log_every", "1"])  # fmt: skip
    never, cpu = StopAt(10**9), torch.device("cpu")

    def log(name):
        return lambda resume: MetricsLog(tmp_path / name, resume=resume)

    FT.train_run(_net(), samples, p, 0.05, 1e-4, 7, tmp_path / "a.pt", never, cpu, "ref",
                 False, metrics=log("ref"))  # fmt: skip
    ref = read_jsonl(tmp_path / "ref" / "train_metrics.jsonl")
    assert [r["iteration"] for r in ref] == [1, 2, 3, 4, 5]
    assert [r["lr"] for r in ref] == pytest.approx(
        [0.05, 0.0452254, 0.0327254, 0.0172746, 0.0047746], rel=1e-5)  # fmt: skip
    with pytest.raises(Interrupted):
        FT.train_run(_net(), samples, p, 0.05, 1e-4, 7, tmp_path / "b.pt", StopAt(2), cpu, "b",
                     False, metrics=log("cut"))  # fmt: skip
    assert [r["iteration"] for r in read_jsonl(tmp_path / "cut" / "train_metrics.jsonl")] == [1, 2]
    FT.train_run(_net(seed=5), samples, p, 0.05, 1e-4, 7, tmp_path / "b.pt", never, cpu, "b",
                 False, metrics=log("cut"))  # fmt: skip
    cut = read_jsonl(tmp_path / "cut" / "train_metrics.jsonl")
    assert [r["iteration"] for r in cut] == [1, 2, 3, 4, 5]
    assert [r["train/loss"] for r in cut] == pytest.approx([r["train/loss"] for r in ref], abs=1e-5)
    events = read_events(tmp_path / "cut")["train/loss"]
    assert [k for k, _ in events] == [1, 2, 3, 4, 5]
    # log_every 2: steps 2 and 4, and the last one
    p2 = resolve("manyshot_finetune", True, ["steps", "5", "checkpoint_every", "0",
                                              "image_size", "32", "log_every", "2"])  # fmt: skip
    FT.train_run(_net(), samples, p2, 0.05, 1e-4, 7, tmp_path / "c.pt", never, cpu, "c",
                 False, metrics=log("every2"))  # fmt: skip
    every2 = read_jsonl(tmp_path / "every2" / "train_metrics.jsonl")
    assert [r["iteration"] for r in every2] == [2, 4, 5]


def test_augmentation_depends_on_the_item_seed_only(twins):
    samples = D.read_split("dtd", twins, "train")
    ds = FT.AugmentedImages(samples, FT.train_transform(32, True, True))
    a, b = ds[(3, 11)][0], ds[(3, 11)][0]
    torch.manual_seed(123)  # the global state does not matter
    assert torch.equal(a, b) and torch.equal(a, ds[(3, 11)][0])
    assert not torch.equal(a, ds[(3, 12)][0])


def _spec(tmp_path, twins, folder, task="dtd"):
    from transfer.spec import SeedSpec

    return SeedSpec(protocol="manyshot_finetune", protocol_name="manyshot_finetune_smoke",
                    smoke=True, dataset="synthetic", shapes_root=None, weights="",
                    weights_info={"stem": "random_init_r18", "sha256": None, "meta": {}},
                    seed_index=0, seed=1000, seed_dir=str(tmp_path / folder / "seed0"),
                    opts=["grid_size", "1", "lr_lo", "-1", "image_size", "32"], arch="resnet18",
                    data=str(twins), task=task, cache_dir=str(tmp_path / "features"),
                    family="recognition")  # fmt: skip


def test_a_diverged_run_is_scored_as_ssl_transfer_scores_it(twins, tmp_path, capsys):
    """lr 1e12: step 1 (a finite loss) blows the weights up, step 2's loss is not finite. As
    in finetune.py, that step is taken (the weights become NaN) and the run is scored as it
    ends: a NaN network predicts class 0
    (torch's argmax of NaN), so the accuracy is class 0's share; the grid goes on."""
    samples = D.read_split("cifar10", twins, "train")
    p = resolve("manyshot_finetune", True, ["steps", "5", "checkpoint_every", "0",
                                             "image_size", "32"])  # fmt: skip
    net = _net()
    step = FT.train_run(net, samples, p, 1e12, 0.0, 7, tmp_path / "d.pt", StopAt(10**9),
                        torch.device("cpu"), "run", False)  # fmt: skip
    assert step == 2 and "at step 2 (lr 1e+12" in capsys.readouterr().out
    assert all(torch.isnan(t).any() for t in net.parameters() if t.requires_grad)
    score = FT.evaluate(net, samples, p, "accuracy", torch.device("cpu"))
    assert score == pytest.approx(100.0 * float(np.mean(samples.labels == 0)))
    assert np.isnan(FT._score(torch.full((3, 2), float("nan")), np.eye(3, 2), "map11", True))


@pytest.mark.slow
def test_an_interrupted_grid_resumes_to_the_same_numbers(twins, tmp_path, monkeypatch):
    from transfer.recognition import run as rec_run

    ref = rec_run.run_recognition_seed(_spec(tmp_path, twins, "ref"))
    assert len(ref["runs"]) == 2 and ref["best_lr"] == pytest.approx(0.1)  # logspace(-1, -1, 1)
    assert [r["wd"] for r in ref["runs"]] == [0.0, pytest.approx(1e-6 / 0.1, rel=1e-5)]
    real = FT.train_run
    calls = []

    def stop_in_the_second_run(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            args = list(args)
            args[7] = StopAt(2)  # the stop flag: set after step 2 of run 2
        return real(*args, **kwargs)

    monkeypatch.setattr(FT, "train_run", stop_in_the_second_run)
    spec = _spec(tmp_path, twins, "cut")
    with pytest.raises(Interrupted):
        rec_run.run_recognition_seed(spec)
    folder = tmp_path / "cut/seed0"
    assert (folder / "run1.pt").is_file() and not (folder / "metrics.json").exists()
    assert len(json.loads((folder / "finetune_state.json").read_text())["runs"]) == 1
    monkeypatch.setattr(FT, "train_run", real)
    out = rec_run.run_recognition_seed(spec)
    assert out["runs"] == ref["runs"] and out["test"] == ref["test"]
    assert not (folder / "run1.pt").exists() and not (folder / "final.pt").exists()
    # each training's own curve (the smoke's 3 steps, logged at the last step)
    runs = folder / "train_runs"
    assert sorted(d.name for d in runs.iterdir()) == ["final", "run0", "run1"]
    for d in runs.iterdir():
        assert [r["iteration"] for r in read_jsonl(d / "train_metrics.jsonl")] == [3], d
    sessions = json.loads((folder / "sessions.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["interrupted", "finished"]


@pytest.mark.slow
def test_finetune_runner_on_multilabel_voc_and_its_table(tmp_path):
    from tables import __main__ as tables_cli
    from transfer import run_recognition

    argv = ["--weights", "none", "--arch", "resnet18", "--protocol", "manyshot_finetune",
            "--datasets", "voc2007", "--dataset", "synthetic", "--output", str(tmp_path),
            "grid_size", "1", "lr_lo", "-1", "image_size", "32"]  # fmt: skip
    assert run_recognition.cli(argv) == 0
    m = json.loads((tmp_path / "manyshot_finetune_smoke/random_init_r18/voc2007/seed0/"
                    "metrics.json").read_text())  # fmt: skip
    assert m["metric"] == "map11" and 0 < m["test"] <= 100 and m["images"]["trainval"] == 44
    written = tables_cli.main(tables_cli.get_args_parser().parse_args(
        ["--runs", str(tmp_path), "--out", str(tmp_path / "tables")]))  # fmt: skip
    md = written["manyshot_finetune.md"].read_text()
    assert "Rand Init (random_init_r18) (synthetic)" in md and "97.1" in md  # DeepCluster-v2
