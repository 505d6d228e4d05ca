"""pretrain: losses, schedules, EMA, T-stream shapes and gradient routing (hand-checked)."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.losses import (
    attention_loss,
    info_nce,
    negative_cosine,
    regression_loss,
    symmetric_byol_loss,
)
from pretrain.methods import BYOL, CARE, CAREOptions, method_options
from pretrain.models import MHSA, ResNetTrunk, TStream
from pretrain.schedules import lr_at, momentum_at

SMALL = CAREOptions(proj_hidden=64, proj_dim=16, pred_hidden=64, mid_dim=64, n_blocks=2)


def test_regression_loss_by_hand():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.0, 1.0], [2.0, 0.0], [3.0, 0.0]])
    # orthogonal -> 2; parallel -> 0; 45 degrees -> 2 - 2 / sqrt(2)
    expected = torch.tensor([2.0, 0.0, 2 - math.sqrt(2)])
    torch.testing.assert_close(regression_loss(p, z), expected)
    # symmetric: mean over samples of (view1 vs target2) + (view2 vs target1)
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert symmetric_byol_loss(a, a, b, a).item() == pytest.approx(2.0 + 0.0)


def test_attention_loss_forms_by_hand():
    q = torch.tensor([[2.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 5.0]], requires_grad=True)
    # normalised: (1, 0) vs (0, 1): MSE over N x D = (1 + 1) / 2 = 1; Eq. 4: |diff| = sqrt 2
    assert attention_loss(q, t, "code").item() == pytest.approx(1.0)
    loss = attention_loss(q, t, "eq4")
    assert loss.item() == pytest.approx(math.sqrt(2))
    loss.backward()
    assert q.grad is not None and t.grad is None  # the T side is detached


def test_info_nce_and_negative_cosine_by_hand():
    q = torch.tensor([[1.0, 0.0]])
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # -log(e^1 / (e^1 + e^0)) = log(1 + e^-1)
    assert info_nce(q, keys, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert negative_cosine(q, torch.tensor([[3.0, 0.0]])).item() == pytest.approx(-1.0)


def test_schedules_at_their_boundaries():
    assert lr_at(0, 100, 10, 0.4, 1e-6) == pytest.approx(1e-6)
    assert lr_at(5, 100, 10, 0.4, 0.0) == pytest.approx(0.2)
    assert lr_at(10, 100, 10, 0.4) == pytest.approx(0.4)
    assert lr_at(55, 100, 10, 0.4) == pytest.approx(0.2)  # half-way through the cosine
    assert lr_at(100, 100, 10, 0.4) == pytest.approx(0.0, abs=1e-12)
    assert momentum_at(0, 100) == pytest.approx(0.99)
    assert momentum_at(50, 100) == pytest.approx(0.995)
    assert momentum_at(100, 100) == pytest.approx(1.0)


def test_ema_update_and_buffer_copy():
    torch.manual_seed(0)
    m = BYOL("resnet18", method_options("byol", SMALL.__dict__, strict=False))
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.fill_(1.0)
        for p in m.target["backbone"].parameters():
            p.fill_(0.0)
        m.backbone.bn1.running_mean.fill_(3.0)
    m.update_target(0.9)
    target = m.target["backbone"]
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in target.parameters())
    assert torch.equal(m.target["backbone"].bn1.running_mean, torch.full((64,), 3.0))
    assert "predictor" not in m.target  # predictors have no target copy


@pytest.mark.parametrize("size,res4,out", [(224, 14, 7), (64, 4, 2)])
def test_tstream_shapes(size, res4, out):
    trunk = ResNetTrunk("resnet50")
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        r4, r5 = trunk(x)
        assert r4.shape == (1, 1024, res4, res4) and r5.shape == (1, 2048, out, out)
        t = TStream(1024, 2048, n_blocks=2, mid=64, heads=4, pos="abs")(r4)
    assert t.shape == (1, 2048, out, out)


@pytest.mark.parametrize("pos", ["abs", "rel"])
def test_position_tables_follow_input_size(pos):
    attn = MHSA(dim=32, heads=4, size=14, pos=pos)
    p14, p4 = attn.position(14, 14), attn.position(4, 6)
    if pos == "abs":
        assert p14.shape == (196, 8) and p4.shape == (24, 8)
        # at the nominal size the learned tables are used as they are
        torch.testing.assert_close(p14[15], attn.height[1] + attn.width[1])
    else:
        assert p14.shape == (196, 196, 8) and p4.shape == (24, 24, 8)
        torch.testing.assert_close(p14[0, 0], attn.rel_h[13] + attn.rel_w[13])
    y = attn(torch.randn(2, 32, 4, 6))
    assert y.shape == (2, 32, 4, 6)


def test_abs_attention_equals_explicit_logits(float64):
    """The fused q.(k + pos) path equals softmax(q.k^T + q.pos^T) v written out (float64:
    the fused kernel's float32 arithmetic differs between CPUs)."""
    torch.manual_seed(0)
    attn = MHSA(dim=16, heads=2, size=3, pos="abs")
    x = torch.randn(1, 16, 3, 3)
    q, k, v = attn.qkv(x).reshape(1, 3, 2, 8, 9).unbind(1)
    q, k, v = q.transpose(-1, -2) * 8**-0.5, k.transpose(-1, -2), v.transpose(-1, -2)
    logits = q @ k.transpose(-1, -2) + q @ attn.position(3, 3).t()
    ref = (logits.softmax(-1) @ v).transpose(-1, -2).reshape(1, 16, 3, 3)
    assert ref.dtype == torch.float64
    torch.testing.assert_close(attn(x), ref, rtol=1e-12, atol=1e-12)


def _grads(module) -> list[bool]:
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()]


def test_gradient_routing():
    torch.manual_seed(0)
    m = CARE("resnet18", SMALL)
    views = [torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)]
    terms = m.terms(views)
    terms["loss_att"].backward(retain_graph=True)
    for name in ("tstream", "t_projector", "t_predictor"):
        assert not any(_grads(getattr(m, name))), f"L_att reached {name}"
    assert any(_grads(m.predictor)) and any(_grads(m.backbone))
    m.zero_grad(set_to_none=True)
    (terms["loss_c"] + terms["loss_t"]).backward()
    assert any(_grads(m.tstream)) and any(_grads(m.backbone.layer3))  # L_t trains res4 (code)
    assert all(p.grad is None for p in m.target.parameters())
    assert not any(p.requires_grad for p in m.target.parameters())


def test_t_detach_keeps_tstream_loss_out_of_the_backbone():
    torch.manual_seed(0)
    m = CARE("resnet18", CAREOptions(**{**SMALL.__dict__, "t_detach": True}))
    terms = m.terms([torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)])
    terms["loss_t"].backward()
    assert not any(_grads(m.backbone)) and any(_grads(m.tstream))


def test_blur_sigma_scales_with_view_size_and_crop_recipe_is_geometric_only():
    from PIL import Image

    from pretrain.data import AugConfig, views_for

    assert AugConfig(size=224).blur_sigma() == pytest.approx((0.1, 2.0))
    assert AugConfig(size=56).blur_sigma() == pytest.approx((0.025, 0.5))
    img = Image.fromarray(torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8).numpy())
    t = views_for("crop", 24, (0.5, 1.0))[0].build()
    torch.manual_seed(3)
    view, geom = t(img)
    # the view is exactly the normalised resized crop (+ flip): no colour or blur change
    x0, y0, w, h, flip = geom.tolist()
    from torchvision.transforms import functional as TF

    ref = TF.resized_crop(img, int(y0), int(x0), int(h), int(w), [24, 24])  # default: bilinear
    ref = TF.hflip(ref) if flip else ref
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    expected = (TF.to_tensor(ref) - mean[:, None, None]) / std[:, None, None]
    assert torch.allclose(view, expected, atol=1e-6)
