"""The few-shot protocol (ssl-transfer's few_shot.py): ProtoNet and its interval by hand, the
episode sampler, equivalence with per-episode forward passes, CD-FSL's readers, the runner."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from common.cli import BadInput, ConfigError, InputNotFound
from synthetic.recognition import write_recognition
from transfer.recognition import datasets as D
from transfer.recognition import fewshot as FS
from transfer.recognition.protocols import resolve


def test_interval_is_196_std_over_sqrt_episodes():
    res = FS.FewShotResult(np.array([100.0, 50.0, 50.0, 100.0]), np.zeros(4))
    assert res.mean == 75.0 and res.std == 25.0  # population std, as np.std
    assert res.ci95 == pytest.approx(1.96 * 25.0 / 2.0)
    assert FS.interval95(0.49 / 1.96 * math.sqrt(600), 600) == pytest.approx(0.49)


def test_protonet_by_hand():
    # 2-way 1-shot: prototypes (0, 0) and (10, 0); queries at x = 1 (class 0), x = 4 (class 1)
    support = torch.tensor([[[0.0, 0.0]], [[10.0, 0.0]]])
    query = torch.tensor([[[1.0, 0.0]], [[4.0, 0.0]]])
    loss, acc = FS.protonet(support, query)
    # query 2 is nearer prototype 0 (16 < 36): one of two right
    assert acc == 0.5
    # -log softmax(-d)[target]: d = (1, 81) -> log(1 + e^-80); d = (16, 36) -> 20 + log(1 + e^-20)
    want = (math.log1p(math.exp(-80)) + 20 + math.log1p(math.exp(-20))) / 2
    assert loss == pytest.approx(want, rel=1e-6)
    # prototypes are the mean of the support: a 2-shot class at (-1, 0), (1, 0) sits at 0
    support2 = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]], [[9.0, 0.0], [11.0, 0.0]]])
    assert FS.protonet(support2, query)[0] == pytest.approx(want, rel=1e-6)


def test_episodes_draw_distinct_classes_and_disjoint_support_and_query():
    labels = np.repeat(np.arange(7), [30, 25, 20, 19, 40, 22, 21])
    classes, members = FS.class_members(labels, 20)
    assert classes == [0, 1, 2, 4, 5, 6]  # class 3 has 19 < 5 + 15 images: left out
    eps = list(FS.episodes(members, 5, 5, 15, 50, torch.Generator().manual_seed(3)))
    for ep in eps:
        assert len(set(ep.classes.tolist())) == 5
        assert ep.support.shape == (5, 5) and ep.query.shape == (5, 15)
        for row, c in enumerate(ep.classes.tolist()):
            idx = ep.support[row].tolist() + ep.query[row].tolist()
            assert len(set(idx)) == 20 and set(labels[idx]) == {classes[c]}
    again = list(FS.episodes(members, 5, 5, 15, 50, torch.Generator().manual_seed(3)))
    other = list(FS.episodes(members, 5, 5, 15, 50, torch.Generator().manual_seed(4)))
    assert all(torch.equal(a.support, b.support) for a, b in zip(eps, again))
    assert any(not torch.equal(a.support, b.support) for a, b in zip(eps, other))
    # every class is drawn about equally often
    counts = np.bincount(np.concatenate([e.classes.numpy() for e in eps]), minlength=6)
    assert counts.sum() == 250 and counts.min() > 20


def _official_loss(encoder, xs: torch.Tensor, xq: torch.Tensor) -> tuple[float, float]:
    """A transcription of ssl-transfer's ProtoNet.loss: the encoder runs on the episode's
    images (support then query), euclidean_dist by expansion, log_softmax, gather."""
    n_class, n_support, n_query = xs.size(0), xs.size(1), xq.size(1)
    target = torch.arange(0, n_class).view(n_class, 1, 1).expand(n_class, n_query, 1).long()
    x = torch.cat([xs.view(n_class * n_support, *xs.size()[2:]),
                   xq.view(n_class * n_query, *xq.size()[2:])], 0)  # fmt: skip
    z = encoder(x)
    z_proto = z[: n_class * n_support].view(n_class, n_support, z.size(-1)).mean(1)
    zq = z[n_class * n_support :]
    n, m, d = zq.size(0), z_proto.size(0), zq.size(1)
    dists = torch.pow(zq.unsqueeze(1).expand(n, m, d) - z_proto.unsqueeze(0).expand(n, m, d),
                      2).sum(2)  # fmt: skip
    log_p_y = torch.nn.functional.log_softmax(-dists, dim=1).view(n_class, n_query, -1)
    loss = -log_p_y.gather(2, target).squeeze().view(-1).mean()
    _, y_hat = log_p_y.max(2)
    return float(loss), float(torch.eq(y_hat, target.squeeze()).float().mean())


@torch.no_grad()
def test_features_once_equal_a_forward_pass_per_episode(float64):
    """The backbone in eval mode on a deterministic transform: ProtoNet on the cached
    features gives each episode the accuracy the official per-episode forward pass gives
    (float64: a batch of 48 and one of 20 may take float32 kernels that round apart)."""
    from common.archs import get_arch
    from transfer.backbone import FeatureResNet

    torch.manual_seed(0)
    net = FeatureResNet(get_arch("resnet18")).eval()
    images = torch.randn(48, 3, 32, 32) + torch.arange(4).repeat_interleave(12).view(48, 1, 1, 1)
    labels = np.repeat(np.arange(4), 12)

    def encoder(x):
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(net(x)["res5"], 1), 1)

    feats = encoder(images).numpy()
    _, members = FS.class_members(labels, 8)
    gen = torch.Generator().manual_seed(1)
    cached, official = [], []
    for ep in FS.episodes(members, 3, 3, 5, 20, gen):
        cached.append(FS.protonet(torch.from_numpy(feats)[ep.support],
                                  torch.from_numpy(feats)[ep.query]))  # fmt: skip
        official.append(_official_loss(encoder, images[ep.support], images[ep.query]))
    assert [a for _, a in cached] == [a for _, a in official]
    assert np.allclose([v for v, _ in cached], [v for v, _ in official], rtol=1e-9, atol=0)
    res = FS.evaluate(feats, labels, 3, 3, 5, 20, seed=0)
    assert res.accuracies.shape == (20,) and res.mean == FS.evaluate(
        feats, labels, 3, 3, 5, 20, seed=0).mean  # fmt: skip


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("fs")
    return write_recognition(root / "ssl"), write_recognition(root / "tv", layout="torchvision")


def test_cdfsl_readers_read_their_twins(twins):
    counts = {"cropdiseases": [12, 12, 12, 12], "eurosat": [12, 12, 12, 12],
              "isic": [12, 0, 12, 0, 12, 0, 12], "chestx": [11, 0, 11, 0, 11, 0, 12]}  # fmt: skip
    for root in twins:
        for name, want in counts.items():
            s = D.pooled(name, root)
            assert np.bincount(s.labels).tolist() == want, name
    assert D.find_dataset("eurosat", twins[1])[1] == "torchvision"
    # ChestX keeps single findings of its 7 classes: two findings, No Finding, Pneumonia go
    chestx = D.pooled("chestx", twins[0])
    assert chestx.pre_resize == (256, 256) and len(chestx) == 45
    rows = (twins[0] / "ChestX/Data_Entry_2017.csv").read_text().splitlines()[1:]
    kept = {p.name for p in chestx.paths}
    for r in rows:
        name, finding = r.split(",")[:2]
        assert (name in kept) == (finding in D.CHESTX_CLASSES), r
    # the 11 many-shot datasets pool every split (train, val, test)
    assert len(D.pooled("dtd", twins[0])) == 60 and len(D.pooled("cifar10", twins[0])) == 60


def test_chestx_images_are_resized_in_their_own_mode_first(twins):
    from PIL import Image

    from transfer.recognition.features import open_pre_resized

    path = next((twins[0] / "ChestX/images").glob("*.png"))
    img = open_pre_resized(path, (256, 256))
    with Image.open(path) as im:
        assert im.mode == "L"
        ref = im.resize((256, 256), Image.Resampling.BICUBIC).convert("RGB")
    assert img.size == (256, 256) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.asarray(ref))


def test_malformed_cdfsl_layouts_name_the_fix(twins, tmp_path):
    import shutil

    with pytest.raises(InputNotFound, match=r"EuroSAT.*2750"):
        D.find_dataset("eurosat", tmp_path)
    shutil.copytree(twins[0] / "ISIC", tmp_path / "ISIC")
    csv = tmp_path / "ISIC" / D.ISIC_CSV
    csv.write_text("image,MEL\nISIC_1,1.0\n")
    with pytest.raises(BadInput, match=r"GroundTruth.csv: line 2 has 2 fields, expected at least"):
        D.pooled("isic", tmp_path)


def test_fewshot_protocol_values():
    p = resolve("fewshot", smoke=False)
    assert (p.n_way, p.shots, p.n_query, p.episodes, p.image_size) == (5, (5, 20, 50), 15, 600, 224)
    assert resolve("fewshot", False, ["shots", "5,50"]).shots == (5, 50)
    with pytest.raises(ConfigError, match="n_way >= 2"):
        resolve("fewshot", False, ["n_way", "1"])
    from transfer.recognition.features import fewshot_transform

    sizes = [t.size for t in fewshot_transform(224, True).transforms[:2]]
    assert sizes == [[257, 257], (224, 224)]


@pytest.mark.slow
def test_fewshot_runner_and_table(tmp_path, capsys):
    from tables import __main__ as tables_cli
    from transfer import run_recognition

    argv = ["--weights", "none", "--arch", "resnet18", "--protocol", "fewshot", "--datasets",
            "eurosat", "chestx", "--dataset", "synthetic", "--output", str(tmp_path),
            "--seeds", "2"]  # fmt: skip
    assert run_recognition.cli(argv) == 0
    out = tmp_path / "fewshot_smoke" / "random_init_r18"
    m = json.loads((out / "chestx/seed0/metrics.json").read_text())
    m1 = json.loads((out / "chestx/seed1/metrics.json").read_text())
    ep = m["episodes"]["chestx_5shot"]
    assert ep["episodes"] == 600 and 0 <= ep["mean"] <= 100 and ep["classes"] == 4
    assert ep["ci95"] == pytest.approx(1.96 * ep["std"] / math.sqrt(600))
    assert m["headline"]["chestx_1shot"] != m1["headline"]["chestx_1shot"]  # seeded episodes
    capsys.readouterr()
    assert run_recognition.cli(argv) == 0  # finished: skipped
    assert capsys.readouterr().out.count("finished, skipped") == 4
    assert run_recognition.cli([*argv, "--datasets", "voc2007"]) == 2  # multi-label: refused
    written = tables_cli.main(tables_cli.get_args_parser().parse_args(
        ["--runs", str(tmp_path), "--out", str(tmp_path / "tables")]))  # fmt: skip
    md = written["fewshot_cdfsl.md"].read_text()
    assert "Rand Init (random_init_r18) (synthetic)" in md and "±" in md
    assert "fewshot_cdfsl.png" in written and "fewshot_cdfsl.tex" in written
    assert "88.4 ± 0.5" in md  # the reference row: DeepCluster-v2, EuroSAT 5-shot (88.39 ± 0.49)


def test_a_class_count_below_n_way_is_one_line(twins, tmp_path):
    from transfer.recognition import run as rec_run
    from transfer.spec import SeedSpec

    spec = SeedSpec(protocol="fewshot", protocol_name="fewshot_smoke", smoke=True,
                    dataset="synthetic", shapes_root=None, weights="",
                    weights_info={"stem": "random_init_r18", "sha256": None, "meta": {}},
                    seed_index=0, seed=1000, seed_dir=str(tmp_path / "seed0"),
                    opts=["n_way", "5"], arch="resnet18", data=str(twins[0]), task="eurosat",
                    cache_dir=str(tmp_path / "features"), family="recognition")  # fmt: skip
    with pytest.raises(BadInput, match="eurosat: 4 classes have 6 images or more; a 5-way"):
        rec_run.run_recognition_seed(spec)
