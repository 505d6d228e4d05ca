"""CIFAR and unlabelled data: the pickled reader, the CIFAR ResNet-18, its checkpoint round
trip, the CIFAR views and kNN monitor, flat folders and list files, and the CIFAR recipe end
to end (pretraining -> tables, and the classification runner reading its checkpoint)."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.archs import build_resnet, get_arch
from common.cli import BadInput, InputNotFound
from common.imagesets import cifar_split, find_cifar, flat_split, list_split
from pretrain.knn import knn_predict, knn_summary
from pretrain.recipes import recipe_config
from synthetic.cifar import cifar_image, write_cifar


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar"), seed=3)


def test_the_cifar_reader_keeps_labels_order_and_pixels(twin):
    """Both releases: the train / test splits in file order (image i of every class, then
    i + 1), the pixels as the planes were stored, the class names from the meta file."""
    tr = cifar_split(twin, "train", "cifar10")
    te = cifar_split(twin, "test", "cifar10")
    assert (len(tr.samples), len(te.samples)) == (200, 80) and tr.labelled
    assert [y for _, y in tr.samples[:12]] == [*range(10), 0, 1]
    img, y = tr.samples[13]  # image 1 of class 3
    assert y == 3 and img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert np.array_equal(img, cifar_image(3, "cifar10", "train", 3, 1, 10))
    raw = pickle.load(open(twin / "cifar-10-batches-py" / "data_batch_1", "rb"), encoding="latin1")
    assert np.array_equal(raw["data"][0].reshape(3, 32, 32).transpose(1, 2, 0), tr.samples[0][0])
    assert tr.classes[:2] == ["class_0", "class_1"] or len(tr.classes) == 10
    c100 = cifar_split(twin, "train", "cifar100")
    assert len(c100.classes) == 100 and len(c100.samples) == 300
    assert [y for _, y in c100.samples[:101]] == [*range(100), 0]
    assert find_cifar(twin) == ("cifar10", twin / "cifar-10-batches-py")
    assert find_cifar(twin / "cifar-100-python") == ("cifar100", twin / "cifar-100-python")


def test_a_partial_or_corrupt_cifar_folder_is_one_line_naming_the_files(twin, tmp_path):
    part = tmp_path / "cifar-10-batches-py"
    shutil.copytree(twin / "cifar-10-batches-py", part)
    (part / "data_batch_3").unlink()
    (part / "test_batch").unlink()
    with pytest.raises(InputNotFound, match="missing data_batch_3, test_batch") as e:
        cifar_split(tmp_path, "train")
    assert "\n" not in str(e.value)
    shutil.copy(twin / "cifar-10-batches-py" / "data_batch_3", part)
    shutil.copy(twin / "cifar-10-batches-py" / "test_batch", part)
    (part / "data_batch_2").write_bytes(b"\x80\x02truncated")
    with pytest.raises(BadInput, match="data_batch_2: not a CIFAR batch"):
        cifar_split(tmp_path, "train")


def test_the_cifar_resnet18_layers_and_parameter_count():
    """lightly's variant: 3x3 stride-1 conv1 without bias, no max-pool, BasicBlocks [2, 2,
    2, 2]; 11,168,832 conv / BN parameters in the body; stage shapes at 32 px; no stem ReLU
    by default (the benchmark's backbone leaves it out), one with ``stem_relu=True``."""
    arch = get_arch("resnet18_cifar")
    net = build_resnet(arch)
    body = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("fc."))
    assert body == 11_168_832
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.bias is None
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    x = torch.randn(2, 3, 32, 32)
    shapes = []
    with torch.no_grad():
        h = net.relu(net.bn1(net.conv1(x)))
        for i in range(1, 5):
            h = getattr(net, f"layer{i}")(h)
            shapes.append(tuple(h.shape))
    assert shapes == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4)]
    assert isinstance(net.relu, torch.nn.Identity)
    assert isinstance(build_resnet(arch, stem_relu=True).relu, torch.nn.ReLU)
    assert isinstance(build_resnet(get_arch("resnet18")).relu, torch.nn.ReLU)


def test_a_cifar_checkpoint_converts_and_loads_with_the_same_features(tmp_path):
    """A pretraining checkpoint of the CIFAR ResNet-18 (stem ReLU on, not the default) -> the
    converter's file
    (an exact round trip, no Detectron2 stem) -> the classification backbone: the same
    tensors and the same features as the network it came from."""
    from pretrain.checkpoint import exported
    from transfer.backbone import FeatureResNet, load_backbone
    from transfer.convert import convert_file

    torch.manual_seed(0)
    arch = get_arch("resnet18_cifar")
    net = build_resnet(arch, stem_relu=True).eval()
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    config = {"arch": "resnet18_cifar", "options": {"stem_relu": True}}
    ckpt = exported(state, "byol", config, 2, 400, [])
    torch.save(ckpt, tmp_path / "byol_cifar.pth")
    report = convert_file(tmp_path / "byol_cifar.pth", tmp_path / "byol_cifar.pkl")
    assert report["arch"] == "ResNet-18 CIFAR" and report["tensors"] == len(state)
    for weights in (tmp_path / "byol_cifar.pth", tmp_path / "byol_cifar.pkl"):
        model, n = load_backbone(str(weights), None)
        assert n == len(state) and model.arch.key == "resnet18_cifar"
        assert isinstance(model.body.relu, torch.nn.ReLU)  # the recorded stem_relu
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            ref = torch.nn.Sequential(*list(net.children())[:-2])(x)
            got = model.eval()(x)["res5"]
        assert torch.equal(got, ref)
    assert FeatureResNet(arch).body.conv1.weight.shape == (64, 3, 3, 3)


def test_the_detection_runners_refuse_a_cifar_stem():
    from common.cli import ConfigError
    from transfer.detection.runner import arch_opts

    with pytest.raises(ConfigError, match="cifar stem.*run_linear.py or run_recognition.py"):
        arch_opts("ResNet-18 CIFAR")


def test_the_cifar_views_are_lightlys_benchmark():
    """SimCLR's collate at strength 0.5 without blur, the same for both views."""
    from pretrain.data import views_for

    views = views_for("cifar", 32, (0.08, 1.0))
    assert views[0] == views[1]
    v = views[0]
    assert (v.size, v.scale, v.jitter, v.jitter_p, v.gray_p, v.blur_p, v.solarize_p) == (
        32, (0.08, 1.0), (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.0, 0.0
    )  # fmt: skip


def test_the_knn_monitor_temperature_weights_similarity_over_the_majority():
    """k 3 at T 0.1: one class-0 neighbour at similarity 0.9 outweighs two class-1 ones at
    0.5 (e^9 = 8103 against 2 e^5 = 297); at T 1 the majority wins (2.46 against 3.30)."""
    bank = torch.tensor(
        [[0.9, math.sqrt(1 - 0.81)], [0.5, math.sqrt(0.75)], [0.5, -math.sqrt(0.75)]]
    )
    labels = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.0]])
    v = knn_predict(q, bank, labels, 2, k=3, temperature=0.1)
    assert v[0].tolist() == pytest.approx([math.exp(9), 2 * math.exp(5)], rel=1e-4)
    assert knn_predict(q, bank, labels, 2, k=3, temperature=1.0).argmax().item() == 1


def test_the_knn_summary_records_last_and_best_epoch():
    history = [
        {"type": "epoch", "epoch": 0, "knn/top1_k200": 60.0},  # before training: not "best"
        {"type": "step", "knn/top1_k200": 99.0},  # not an epoch record
        {"type": "epoch", "epoch": 1, "knn/top1_k200": 40.0},
        {"type": "epoch", "epoch": 2, "knn/top1_k200": 55.5},
        {"type": "epoch", "epoch": 3},
        {"type": "epoch", "epoch": 4, "knn/top1_k200": 55.5},  # a tie keeps the earlier
        {"type": "epoch", "epoch": 5, "knn/top1_k200": 50.0},
    ]
    assert knn_summary(history) == {
        "knn/top1_k200": 50.0, "knn/best_top1_k200": 55.5, "knn/best_epoch_k200": 2
    }  # fmt: skip


def _flat_copy(src: Path, dst: Path, n: int = 40) -> list[Path]:
    """``n`` images of an ImageFolder copied into nested folders without classes."""
    files = sorted(src.rglob("*.png"))[:n] or sorted(src.rglob("*.jpg"))[:n]
    out = []
    for i, f in enumerate(files):
        p = dst / f"part{i % 3}" / "deeper" / f"img_{i}{f.suffix}"
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, p)
        out.append(p)
    return out


@pytest.mark.parametrize("kind", ["flat", "list"])
def test_a_flat_folder_and_a_list_file_pretrain_for_one_epoch(tmp_path, shapes_root, kind, capsys):
    """Unlabelled data (COCO train2017 style, or a list file): found recursively, trained on
    for one epoch with the kNN probe off and a note saying why."""
    from pretrain.trainer import Trainer

    files = _flat_copy(shapes_root / "imagefolder" / "train", tmp_path / "images")
    data = tmp_path / "images"
    if kind == "list":
        data = tmp_path / "list.txt"
        data.write_text("# training images\n" + "\n".join(
            str(p.relative_to(tmp_path)) for p in files) + "\n")  # fmt: skip
    split = flat_split(tmp_path / "images") if kind == "flat" else list_split(data)
    assert len(split.samples) == len(files) and not split.labelled
    cfg = recipe_config("test", method="byol", data=str(data), output=str(tmp_path / "run"),
                        epochs=1, knn_every=1)  # fmt: skip
    t = Trainer(cfg)
    assert t.data.bank is None and "kNN probe off" in capsys.readouterr().out
    t.fit()
    assert t.global_step == len(files) // cfg.batch_size
    assert (tmp_path / "run" / "byol_resnet18.pth").is_file()


def test_a_missing_list_entry_is_named(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "l.txt").write_text("a.png\nb.png\n")
    with pytest.raises(InputNotFound, match=r"1 of 2 images listed .*/b\.png"):
        list_split(tmp_path / "l.txt")


def test_the_cifar_recipes_scale_lr_as_lightly():
    """BYOL: 0.06 x batch / 128; the SimSiam family: 0.06 unscaled; GSG C.2's heads."""
    byol = recipe_config("cifar10", method="byol", output="x")
    sims = recipe_config("cifar100", method="simsiam_gsg", output="x")
    assert (byol.base_lr, byol.lr_batch_ref, byol.batch_size) == (0.06, 128, 512)
    assert (sims.lr_batch_ref, sims.dataset, byol.dataset) == (0, "cifar100", "cifar10")
    assert (byol.knn_k, byol.knn_temperature, byol.knn_every, byol.eval_resize) == (
        (200,), 0.1, 1, False)  # fmt: skip
    assert (sims.options.proj_layers, sims.options.proj_last_affine) == (2, True)
    assert (sims.options.proj_hidden, sims.options.pred_hidden) == (2048, 512)


def _lightly_byol_loss(model, x0, x1):
    """lightly's cifar10_benchmark BYOL step, transcribed: p = prediction_head(projection_head(
    backbone(x))), z = the momentum backbone + projection head, NegativeCosineSimilarity (the
    batch mean of -cos), loss = 0.5 (criterion(p0, z1) + criterion(p1, z0))."""
    import torch.nn.functional as F

    from pretrain.base import pool

    def online(x):
        return model.predictor(model.projector(pool(model.backbone(x)[1])))

    def momentum(x):
        with torch.no_grad():
            return model.target["projector"](pool(model.target["backbone"](x)[1]))

    def criterion(a, b):
        return -F.cosine_similarity(a, b, dim=1).mean()

    p0, z0, p1, z1 = online(x0), momentum(x0), online(x1), momentum(x1)
    return 0.5 * (criterion(p0, z1) + criterion(p1, z0))


@pytest.mark.parametrize("method", ["byol", "care"])
def test_the_cifar_recipes_take_lightlys_byol_loss_and_imagenet_keeps_byols(method):
    """The CIFAR recipe's BYOL update is lightly's (0.5 (-cos - cos)); the ImageNet recipe
    keeps BYOL's / CARE's 2 - 2 cos over both directions, 4x the gradient (float64)."""
    from pretrain.methods import build_method

    cifar = recipe_config("cifar10", method=method, output="x")
    assert cifar.options.byol_loss == "lightly"
    assert recipe_config("imagenet", method=method, output="x").options.byol_loss == "byol"
    opts = {**cifar.options.__dict__, "proj_hidden": 64, "proj_dim": 16, "pred_hidden": 32}
    if method == "care":
        opts.update(mid_dim=32, n_blocks=1, nominal_res4=8)
    torch.manual_seed(0)
    model = build_method(method, "resnet18_cifar", opts).double()
    x0, x1 = torch.randn(2, 6, 3, 32, 32, dtype=torch.float64)
    terms = model.compute_loss([x0, x1])
    key = "loss" if method == "byol" else "loss_c"
    expected = _lightly_byol_loss(model, x0, x1)
    assert terms[key].item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-12)
    if method == "care":  # the T-stream's regression takes the same form
        assert terms["loss_t"].item() < 0
        return
    grads = {}
    for form in ("lightly", "byol"):
        model.cfg = type(model.cfg)(**{**model.cfg.__dict__, "byol_loss": form})
        model.zero_grad()
        model.compute_loss([x0, x1])["loss"].backward()
        grads[form] = torch.cat(
            [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        )
    assert torch.allclose(grads["byol"], 4 * grads["lightly"], rtol=1e-9, atol=1e-14)


# in `make test-extended` (CI time): the recipe's pieces (data, model, kNN monitor, probe) are
# checked one by one above
@pytest.mark.extended
def test_the_cifar_recipe_runs_two_epochs_and_its_checkpoint_serves_the_runner(tmp_path):
    """cifar-smoke (the CIFAR recipe, 2 epochs) on the synthetic twin: the kNN monitor every
    epoch, its seed folder for the tables (best / last epoch), the cifar table's row, and
    the classification runner's kNN protocol reading the checkpoint and the CIFAR folder."""
    from pretrain.trainer import Trainer
    from tables.aggregate import collect
    from tables.frame import load_runs
    from tables.layout import TABLES, our_rows
    from transfer.run_linear import cli as run_linear

    cfg = recipe_config("cifar-smoke", method="simsiam", output=str(tmp_path / "run"),
                        results=str(tmp_path / "results"))  # fmt: skip
    t = Trainer(cfg)
    assert t.lr == pytest.approx(0.06)  # SimSiam: unscaled
    ckpt = t.fit()
    epochs = [h for h in t.history if h.get("type") == "epoch"]
    assert [h["epoch"] for h in epochs if "knn/top1_k200" in h] == [0, 1, 2]  # 0: before
    seed = tmp_path / "results/pretrain_knn/simsiam_resnet18_cifar_e2_b32/cifar10/seed0"
    m = json.loads((seed / "metrics.json").read_text())
    best = max(h["knn/top1_k200"] for h in epochs if h["epoch"] >= 1)
    assert m["dataset"] == "synthetic" and m["knn"]["best_top1_k200"] == best
    assert m["knn"]["top1_k200"] == epochs[-1]["knn/top1_k200"]
    # the recipe's online probe: evaluated each epoch, its last reading in the seed and in
    # the cifar table's Online linear column
    probed = [h["probe/top1"] for h in epochs if "probe/top1" in h]
    assert len(probed) == 2 and m["probe"]["top1"] == probed[-1]
    assert m["probe"]["best_top1"] == max(probed)
    assert (m["probe"]["views"], m["probe"]["schedule"], m["probe"]["lr"]) == ("all", "main", 0.1)
    frame = load_runs(tmp_path / "results")
    assert set(frame["metric"]) >= {"knn/best_top1_k200", "knn/top1_k200", "knn/best_epoch_k200",
                                    "probe/top1"}  # fmt: skip
    spec = TABLES["cifar"]
    (ours,) = [r for r in our_rows(spec, collect([tmp_path / "results"]), {}) if r.kind == "ours"]
    assert ours.synthetic and ours.mean("c10_linear") == pytest.approx(probed[-1])
    assert ours.mean("c10_knn_last") == pytest.approx(epochs[-1]["knn/top1_k200"])
    twin = tmp_path / "run" / "synthetic_cifar"
    code = run_linear(["--weights", str(ckpt), "--protocol", "knn", "--data", str(twin),
                       "--seeds", "1", "--output", str(tmp_path / "results"), "--launcher",
                       "inprocess", "crop", "32", "val_resize", "32", "workers", "0"])  # fmt: skip
    assert code == 0
    (knn,) = (tmp_path / "results" / "knn").glob("*/seed0/metrics.json")
    cls = json.loads(knn.read_text())["cls"]
    assert 0 <= cls["k200_top1"] <= 100


@pytest.mark.parametrize("engine", ["auto", "sklearn"])
def test_the_tsne_command_draws_two_checkpoints_side_by_side(twin, tmp_path, engine):
    """Two checkpoints' test-set maps, one panel each; the same seed gives the same map."""
    from PIL import Image

    from pretrain.checkpoint import exported
    from pretrain.tsne import embed, get_args_parser, main

    weights = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = build_resnet(get_arch("resnet18_cifar"))
        state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
        path = tmp_path / f"net{seed}.pth"
        torch.save(exported(state, "byol", {"arch": "resnet18_cifar"}, 1, 0, []), path)
        weights.append(str(path))
    out = main(get_args_parser().parse_args(
        ["--weights", *weights, "--data", str(twin), "--dataset", "cifar10", "--out",
         str(tmp_path / "tsne.png"), "--max-images", "40", "--engine", engine,
         "--workers", "0"]))  # fmt: skip
    w, h = Image.open(out).size
    assert w > 1.6 * h  # two panels side by side
    x = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    a, b = embed(x, engine, 0, 30.0), embed(x, engine, 0, 30.0)
    assert a.shape == (40, 2) and np.allclose(a, b)


def test_a_seed_of_other_settings_is_kept_not_overwritten(tmp_path):
    """Two runs with the same name and seed but another lr: both seed folders remain."""
    from pretrain.config import RESUME_FREE_KEYS
    from pretrain.results import write_knn_seed

    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"weights")
    history = knn_summary([{"type": "epoch", "epoch": 1, "knn/top1_k200": 50.0}])
    config = {"method": "byol", "arch": "resnet18_cifar", "epochs": 1, "seed": 0,
              "data": None, "dataset": "cifar10", "base_lr": 0.06}  # fmt: skip
    first = write_knn_seed(tmp_path / "r", config, history, ckpt, 32, RESUME_FREE_KEYS)
    again = write_knn_seed(tmp_path / "r", config, history, ckpt, 32, RESUME_FREE_KEYS)
    other = write_knn_seed(tmp_path / "r", {**config, "base_lr": 0.1}, history, ckpt, 32,
                           RESUME_FREE_KEYS)  # fmt: skip
    assert first == again and other != first
    assert other.parts[-3].startswith("byol_resnet18_cifar_e1_b32-")
    assert "base_lr: 0.06" in (first / "config.yaml").read_text()
    assert json.loads((other / "metrics.json").read_text())["knn"]["best_top1_k200"] == 50.0
