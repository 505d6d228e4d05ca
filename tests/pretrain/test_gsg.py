"""SimSiam, SimSiam-GSG and BYOL-GSG: the GSG direction choice and losses by hand, the
pairing permutation, the exact-copy reduction, method defaults and the fixed predictor lr."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pretrain.config import PretrainConfig
from pretrain.losses import negative_cosine
from pretrain.methods import (
    BYOLGSG,
    GSG_PAIRS,
    SimSiam,
    SimSiamGSG,
    derangement,
    gsg_loss,
)
from pretrain.models import MLP
from pretrain.trainer import Trainer

SMALL = {"proj_hidden": 64, "proj_dim": 32, "pred_hidden": 16}


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# Image 0 has views z11 = (1, 0), z12 = (0, 1); image 1 (its partner under perm [1, 0]) has
# z21, z22 as below, chosen so that one cross pair is at distance 0 and the others are not.
# Predictions p11 = (3, 4), p12 = (4, 3), p21 = (-3, 4), p22 = (5, 12). Expected losses:
#   11-21: sources p11, p21; targets z12, z22=(-1,0): 0.5 (-0.8 - 0.6)        = -0.7
#   11-22: sources p11, p22; targets z12, z21=(-1,0): 0.5 (-0.8 + 5/13)       = -0.2076923
#   12-21: sources p12, p21; targets z11, z22=(0,-1): 0.5 (-0.8 + 0.8)        =  0.0
#   12-22: sources p12, p22; targets z11, z21=(0,-1): 0.5 (-0.8 + 12/13)      =  0.0615385
CASES = [
    ((0, 0), (1.0, 0.0), (-1.0, 0.0), -0.7),
    ((0, 1), (-1.0, 0.0), (1.0, 0.0), 0.5 * (-0.8 + 5 / 13)),
    ((1, 0), (0.0, 1.0), (0.0, -1.0), 0.0),
    ((1, 1), (0.0, -1.0), (0.0, 1.0), 0.5 * (-0.8 + 12 / 13)),
]


@pytest.mark.parametrize("pair,z21,z22,expected", CASES, ids=["11-21", "11-22", "12-21", "12-22"])
@pytest.mark.parametrize("distance", ["normalized", "raw"])
def test_gsg_direction_and_loss_by_hand(pair, z21, z22, expected, distance):
    z1 = _t((1.0, 0.0), z21).requires_grad_()  # view 1 of image 0 and of image 1
    z2 = _t((0.0, 1.0), z22).requires_grad_()  # view 2
    p1 = _t((3.0, 4.0), (-3.0, 4.0)).requires_grad_()
    p2 = _t((4.0, 3.0), (5.0, 12.0)).requires_grad_()
    perm = torch.tensor([1, 0])
    losses, choice = gsg_loss([p1, p2], [z1, z2], perm, distance, partner=(0, 1))
    assert GSG_PAIRS[choice[0]] == pair
    # sample 1 (image 1 paired with image 0) sees the same distances transposed
    assert GSG_PAIRS[choice[1]] == pair[::-1]
    assert losses.tolist() == pytest.approx([expected, expected], abs=1e-6)
    losses.mean().backward()
    assert z1.grad is None and z2.grad is None  # stop-gradient on every target
    src = {0: p1, 1: p2}
    assert src[pair[0]].grad[0].abs().sum() > 0  # image 0's source view got a gradient
    assert src[1 - pair[0]].grad[0].abs().sum() == 0  # its other view did not


def test_derangement_never_pairs_an_image_with_itself():
    torch.manual_seed(0)
    for n in (2, 3, 5, 32):
        for _ in range(200):
            perm = derangement(n)
            assert sorted(perm.tolist()) == list(range(n))
            assert not (perm == torch.arange(n)).any()
    seen = {tuple(derangement(3).tolist()) for _ in range(100)}
    assert seen == {(1, 2, 0), (2, 0, 1)}  # both derangements of 3 occur
    with pytest.raises(ValueError, match="too small"):
        derangement(1)


@pytest.mark.parametrize("cls", [SimSiamGSG, BYOLGSG])
def test_pairing_with_an_exact_copy_reduces_to_one_simsiam_term(cls, monkeypatch):
    """Two-view variant: image 3 is a pixel-exact copy of image 0 (same views) and is forced
    to be its partner: the pair (11, 21) is at distance 0 and the loss is D(p11, sg z12)."""
    torch.manual_seed(0)
    m = cls("resnet18", cls.Options(**SMALL, gsg_views=2))
    v1, v2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    v1[3], v2[3] = v1[0], v2[0]
    perm = torch.tensor([3, 2, 1, 0])
    monkeypatch.setattr("pretrain.methods.derangement", lambda n, device=None: perm)
    z = m.project([v1, v2])
    p = [m.predictor(zv) for zv in z]
    targets = m.targets([v1, v2], z)
    losses, choice = gsg_loss(p, targets, perm, partner=(0, 1))
    assert choice[0].item() == 0 and choice[3].item() == 0
    single = negative_cosine(p[0][0:1], targets[1][0:1])
    assert losses[0].item() == pytest.approx(single.item(), abs=1e-5)
    assert losses[3].item() == pytest.approx(single.item(), abs=1e-5)
    # and the method's loss is the mean of the per-sample losses with that pairing
    assert m.compute_loss([v1, v2])["loss"].item() == pytest.approx(losses.mean().item(), abs=1e-5)


def test_simsiam_loss_and_heads_by_hand():
    m = SimSiam("resnet18", SimSiam.Options(**SMALL))
    proj = m.projector.net
    assert [type(x).__name__ for x in proj] == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
    ]
    assert all(x.bias is None for x in proj if isinstance(x, torch.nn.Linear))
    assert not proj[-1].affine and proj[1].affine
    assert isinstance(m.predictor, MLP) and m.predictor.net[0].out_features == 16
    assert m.predictor.net[0].bias is None and m.predictor.net[-1].bias is not None
    assert not hasattr(m, "target") or len(m.target) == 0  # no momentum network
    # official sizes when nothing is given: the projector as wide as the backbone's feature
    full = SimSiam("resnet18")
    assert (full.cfg.proj_hidden, full.cfg.proj_dim, full.cfg.pred_hidden) == (512, 2048, 512)
    assert PretrainConfig(method="simsiam").options.proj_hidden == 2048  # ResNet-50
    # symmetric loss 0.5 [D(p1, sg z2) + D(p2, sg z1)], D = -cos, with z1 = (1, 1),
    # z2 = (3, 4) and a predictor diag(2, -1): p1 = (2, -1), p2 = (6, -4)
    z1, z2 = _t((1.0, 1.0)).requires_grad_(), _t((3.0, 4.0)).requires_grad_()
    m.project = lambda views: [z1, z2]
    m.predictor = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        m.predictor.weight.copy_(torch.diag(torch.tensor([2.0, -1.0])))
    loss = m.compute_loss([None, None])["loss"]
    expected = 0.5 * (-(6 - 4) / (5**0.5 * 5) - (6 - 4) / (52**0.5 * 2**0.5))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert z1.grad is not None  # through the predictor; the targets' copies are detached
    assert torch.allclose(
        z1.grad, torch.autograd.grad(0.5 * negative_cosine(m.predictor(z1), z2).sum(), z1)[0]
    )


def test_method_defaults_and_explicit_values():
    ss = PretrainConfig(method="simsiam")
    assert (ss.crop_scale, ss.warmup_epochs, ss.aug, ss.fix_pred_lr) == (
        (0.2, 1.0),
        0.0,
        "simsiam",
        True,
    )
    o = ss.options
    assert (o.proj_hidden, o.proj_dim, o.pred_hidden) == (2048, 2048, 512)
    bg = PretrainConfig(method="byol_gsg")
    assert (bg.tau_schedule, bg.base_tau) == ("constant", 0.99)
    care = PretrainConfig(method="care")
    assert (care.crop_scale, care.warmup_epochs, care.aug, care.tau_schedule) == (
        (0.08, 1.0),
        10.0,
        "byol",
        "cosine",
    )
    assert care.options.proj_hidden == 4096
    mine = PretrainConfig(method="simsiam", crop_scale=(0.5, 1.0), options={"proj_dim": 64})
    assert mine.crop_scale == (0.5, 1.0) and mine.options.proj_dim == 64
    assert mine.options.pred_hidden == 512
    with pytest.raises(ValueError, match="has no option lambda_att"):
        PretrainConfig(method="simsiam", options={"lambda_att": 1.0})
    with pytest.raises(ValueError, match="unknown method"):
        PretrainConfig(method="mocov9")
    for method in ("simsiam_gsg", "byol_gsg", "maskco"):
        with pytest.raises(ValueError, match="--batch-size >= 2"):
            PretrainConfig(method=method, batch_size=1)
    assert PretrainConfig(method="simsiam", batch_size=1).batch_size == 1


@pytest.fixture(scope="module")
def folder(shapes_root):
    return shapes_root / "imagefolder"


@pytest.mark.parametrize("method", ["simsiam", "byol_gsg"])
def test_fixed_predictor_lr_and_tau_schedule(tmp_path, folder, method):
    cfg = PretrainConfig(
        method=method,
        arch="resnet18",
        data=str(folder),
        output=str(tmp_path),
        epochs=2,
        batch_size=8,
        image_size=32,
        workers=0,
        knn_every=0,
        options=SMALL,
        crop_scale=(0.3, 1.0),
        batch_aug="off",  # the views made by the workers, also on a CUDA machine
    )
    t = Trainer(cfg)
    loader = torch.utils.data.DataLoader(
        t.dataset, batch_size=8, collate_fn=lambda b: torch.utils.data.default_collate(b)
    )
    views = next(iter(loader))[0]
    lrs, taus = [], []
    for _ in range(3):
        stats = t.train_step(views)
        lrs.append([g["lr"] for g in t.optimizer.param_groups])
        taus.append(stats["tau"])
    assert len(t.optimizer.param_groups) == 2 and t.optimizer.param_groups[1]["fixed_lr"]
    assert all(lr[1] == pytest.approx(t.lr) for lr in lrs)  # predictor: fixed
    # the rest: cosine set once per epoch (official), so the whole first epoch runs at base
    assert all(lr[0] == pytest.approx(t.lr) for lr in lrs)
    assert taus == [0.99] * 3  # constant EMA momentum (SimSiam has no target to update)
    if method == "byol_gsg":
        assert any(k.startswith("gsg_") for k in stats)
        assert sum(stats[f"gsg_{a + 1}{b + 1}"] for a, b in GSG_PAIRS) == pytest.approx(1.0)
    # without --fix-pred-lr one group follows the schedule
    t2 = Trainer(replace(cfg, fix_pred_lr=False, output=str(tmp_path / "b")))
    assert len(t2.optimizer.param_groups) == 1
