"""The official code's behaviour, by default: init rules, the EMA index, GSG's four-crop
pairing (against a direct transcription of the appendix's per-sample pseudo-code), the lr
schedules, CARE's per-GPU T-stream BatchNorms and its ablation variants."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pretrain.losses import negative_cosine
from pretrain.methods import CARE, GSG_PAIRS, CAREOptions, build_method, gsg_loss
from pretrain.models import TStream
from pretrain.recipes import recipe_config
from pretrain.schedules import momentum_at
from pretrain.trainer import Trainer, sync_batchnorm


def test_tstream_init_is_the_official_resnet_loop():
    """Every T-stream Conv2d: kaiming normal, fan_out, ReLU gain -> std sqrt(2 / fan_out);
    every BatchNorm gamma 1 (the BoT block's zero-init is overwritten by that loop)."""
    torch.manual_seed(0)
    t = TStream(1024, 2048, n_blocks=5, mid=512, heads=4)
    convs = [m for m in t.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 * 3 + 1  # reduce, qkv, post per block + the first shortcut
    for m in convs:
        fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        std = m.weight.std().item()
        assert std == pytest.approx(math.sqrt(2 / fan_out), rel=0.05), m
    bns = [m for m in t.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


@pytest.mark.parametrize("method", ["simsiam", "simsiam_gsg", "byol_gsg", "byol_gsgpaper"])
def test_simsiam_family_init_and_heads(method):
    m = build_method(method, "resnet50")
    last = [b.bn3 for layer in (m.backbone.layer1, m.backbone.layer4) for b in layer]
    assert all(torch.all(bn.weight == 0) for bn in last)  # zero_init_residual
    assert m.predictor.net[0].bias is None  # predictor: first Linear without bias
    assert m.projector.net[0].out_features == 2048  # hidden = the backbone's width
    care = build_method("care", "resnet50")
    assert torch.all(care.backbone.layer1[0].bn3.weight == 1)  # CARE: torchvision's default


def _official_loop(model, batches, lrs, taus_at_start=None, taus_after=None):
    """SGD over ``batches`` with the EMA update at the start of iteration k (official) or
    right after step k; returns the model."""
    opt = torch.optim.SGD(model.param_groups(), lr=lrs[0], momentum=0.9, weight_decay=1e-4)
    for k, views in enumerate(batches):
        if taus_at_start:
            model.update_target(taus_at_start[k])
        for group in opt.param_groups:
            group["lr"] = lrs[k]
        loss = model(views)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if taus_after:
            model.update_target(taus_after[k])
    return model


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="float64 agreement to rounding needs the CPU's kernels"
)
def test_ema_after_k_steps_equals_the_official_update_order(tmp_path, shapes_root):
    """Our loop updates the target right after step k with m(k + 1); the official one at the
    start of iteration k with m(k). After k steps both targets agree to float64 rounding;
    the old index (m(k) after step k) does not."""
    cfg = recipe_config(
        "test",
        method="byol",
        data=str(shapes_root / "imagefolder"),
        output=str(tmp_path),
        knn_every=0,
    )
    t = Trainer(cfg)
    t.model.double()
    start = copy.deepcopy(t.model)
    g = torch.Generator().manual_seed(0)
    batches = [
        [torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(2)]
        for _ in range(5)
    ]
    lrs = []
    for views in batches:
        lrs.append(t.schedule()[0])
        t.train_step(views)
    m = [momentum_at(k, t.total_steps, cfg.base_tau) for k in range(len(batches) + 1)]
    official = _official_loop(copy.deepcopy(start), batches, lrs, taus_at_start=m)
    official.update_target(m[len(batches)])  # the start of iteration k: after k steps
    for (name, a), b in zip(t.model.target.named_parameters(), official.target.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)
    old = _official_loop(copy.deepcopy(start), batches, lrs, taus_after=m[:-1])
    worst = max(
        (a - b).abs().max().item()
        for a, b in zip(old.target.parameters(), official.target.parameters())
    )
    assert worst > 1e-9  # the index matters far above rounding: the test can fail


def _official_gsg(p, z, r):
    """The appendix's per-sample pseudo-code, transcribed: p, z lists of 4 crops (N, D);
    sample i pairs crops 1, 2 of image i with crops 3, 4 of image r[i]."""

    def dist(x, y):
        return float(((x - y) ** 2).sum() ** 0.5)

    def cos(x, y):
        return float(torch.nn.functional.cosine_similarity(x, y, dim=0))

    losses, pairs = [], []
    for i in range(len(r)):
        p11, p12, z11, z12 = p[0][i], p[1][i], z[0][i], z[1][i]
        p21, p22, z21, z22 = p[2][r[i]], p[3][r[i]], z[2][r[i]], z[3][r[i]]
        d = [dist(z11, z21), dist(z11, z22), dist(z12, z21), dist(z12, z22)]
        best = min(d)
        if d[0] == best:
            loss, pair = -0.5 * (cos(p11, z12) + cos(p21, z22)), (0, 0)
        elif d[1] == best:
            loss, pair = -0.5 * (cos(p11, z12) + cos(p22, z21)), (0, 1)
        elif d[2] == best:
            loss, pair = -0.5 * (cos(p12, z11) + cos(p21, z22)), (1, 0)
        else:
            loss, pair = -0.5 * (cos(p12, z11) + cos(p22, z21)), (1, 1)
        losses.append(loss)
        pairs.append(pair)
    return losses, pairs


def test_gsg_four_crops_equal_the_per_sample_pseudo_code():
    g = torch.Generator().manual_seed(3)
    n, d = 6, 5
    z = [torch.randn(n, d, generator=g, dtype=torch.float64) * s for s in (1, 1, 2, 3)]
    p = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(4)]
    r = torch.tensor([2, 0, 1, 3, 5, 4])  # sample 3 meets its own crops 3 and 4
    losses, choice = gsg_loss(p, z, r)  # defaults: raw distance, partner crops 3 and 4
    ref_losses, ref_pairs = _official_gsg(p, z, r.tolist())
    assert losses.tolist() == pytest.approx(ref_losses, abs=1e-12)
    assert [GSG_PAIRS[c] for c in choice.tolist()] == ref_pairs
    assert len(set(ref_pairs)) > 1  # the batch exercises more than one branch
    # raw and normalised distances pick differently on this batch (the flag matters)
    _, norm_choice = gsg_loss(p, z, r, distance="normalized")
    assert not torch.equal(norm_choice, choice)
    # a sample's own crops 1, 2 never meet themselves: crops 3, 4 are other crops
    assert negative_cosine(p[0][3:4], z[1][3:4]).numel() == 1


def test_gsg_methods_draw_four_crops_and_a_plain_permutation():
    m = build_method(
        "simsiam_gsg", "resnet18", {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 8}
    )
    assert m.views_needed(m.cfg) == 4 and m.cfg.gsg_distance == "raw"
    torch.manual_seed(0)
    perms = [m.pairing(4, "cpu") for _ in range(200)]
    assert all(partner == (2, 3) for _, partner in perms)
    assert any((perm == torch.arange(4)).any() for perm, _ in perms)  # fixed points allowed
    views = [torch.randn(4, 3, 32, 32) for _ in range(4)]
    out = m.compute_loss(views)
    assert (
        torch.isfinite(out["loss"]) and sum(out[f"gsg_{a + 1}{b + 1}"] for a, b in GSG_PAIRS) == 1
    )
    two = build_method("byol_gsg", "resnet18", {"gsg_views": 2, "proj_hidden": 32})
    assert two.views_needed(two.cfg) == 2 and two.pairing(4, "cpu")[1] == (0, 1)


@pytest.mark.parametrize(
    "method,per_epoch", [("simsiam", True), ("byol_gsg", True), ("care", False), ("byol", False)]
)
def test_lr_schedule_per_epoch_or_per_step(tmp_path, shapes_root, method, per_epoch):
    cfg = recipe_config(
        "test",
        method=method,
        data=str(shapes_root / "imagefolder"),
        output=str(tmp_path),
        epochs=4,
        warmup_epochs=0.0,
        knn_every=0,
    )
    t = Trainer(cfg)
    spe, total, base = t.steps_per_epoch, t.total_steps, t.lr
    seen = {}
    for k in (0, 1, spe - 1, spe, spe + 1, 2 * spe, total - 1):
        t.global_step = k
        seen[k] = t.schedule()[0]
    if per_epoch:  # base * (1 + cos(pi * epoch / epochs)) / 2, constant within an epoch
        for k, lr in seen.items():
            assert lr == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * (k // spe) / 4)))
        assert seen[0] == seen[spe - 1] == base and seen[spe] == seen[spe + 1] < base
    else:  # every step
        for k, lr in seen.items():
            assert lr == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * k / total)))
        assert seen[0] > seen[1] > seen[spe - 1] > seen[spe]


def tiny_care(**options) -> CARE:
    """A ResNet-18 CARE with small heads and T-stream (seconds on a CPU)."""
    small = dict(proj_hidden=32, proj_dim=16, pred_hidden=32, mid_dim=64, n_blocks=2)
    return CARE("resnet18", CAREOptions(**{**small, **options}))


@pytest.mark.parametrize("cuda,synced_kind", [(True, "SyncBatchNorm"), (False, "GlobalBatchNorm")])
def test_tstream_batchnorms_stay_per_gpu_unless_asked(cuda, synced_kind):
    care = tiny_care()
    synced = sync_batchnorm(copy.deepcopy(care), care.local_bn_modules(), cuda)
    kinds = {
        n: type(m).__name__
        for n, m in synced.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    }
    assert all(k == "BatchNorm2d" for n, k in kinds.items() if ".tstream." in f".{n}")
    assert all(k == synced_kind for n, k in kinds.items() if ".tstream." not in f".{n}")
    assert any(n.startswith("target.tstream") for n in kinds)
    assert sum(k == synced_kind for k in kinds.values()) > 10
    flag = tiny_care(sync_tstream_bn=True)
    every = sync_batchnorm(flag, flag.local_bn_modules())
    assert all(
        isinstance(m, torch.nn.SyncBatchNorm)
        for m in every.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    )


@pytest.mark.parametrize(
    "design,pos", [("parallel", "sine"), ("sequential", "abs"), ("sequential", "rel")]
)
def test_care_ablation_variants_run(design, pos):
    m = tiny_care(t_design=design, pos_enc=pos)
    views = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    out = m.compute_loss(views)
    assert torch.isfinite(out["loss"])
    r4, r5 = m.backbone(views[0])
    t_out = m.tstream(r5 if design == "sequential" else r4)
    assert t_out.shape == r5.shape  # both designs end at res5's size
    assert m.tstream.blocks[0].shortcut.__class__.__name__ == (
        "Sequential" if design == "parallel" else "Identity"
    )
    if pos == "sine":  # fixed: nothing learned for positions
        assert not [n for n, _ in m.tstream.named_parameters() if "height" in n or "rel" in n]
