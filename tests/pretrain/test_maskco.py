"""MaskCo: box geometry through crop / resize / flip, the masked region under RoIAlign,
negatives that never include the positive, InfoNCE with excluded keys (hand-checked)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.data import MEAN, STD, AugConfig, map_boxes
from pretrain.losses import info_nce
from pretrain.maskco import (
    MaskCo,
    MaskCoOptions,
    MaskedPair,
    assemble_keys,
    box_iou_rows,
    intra_boxes,
    random_boxes,
    roi_features,
)

W, H, S = 200, 160, 64
# no photometric change, so pixel colours can be decoded back to source coordinates
PLAIN = AugConfig(size=S, scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)


def coordinate_image() -> Image.Image:
    """R = x, G = y (scaled to 0..255), B = 128: a pixel's colour tells where it came from."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 255 / (W - 1), yy * 255 / (H - 1), np.full_like(xx, 128)], -1)
    return Image.fromarray(img.round().astype(np.uint8))


def decode(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Source (x, y) of each pixel of a normalised view (3, S, S)."""
    rgb = view * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    return rgb[0] * (W - 1), rgb[1] * (H - 1)


def test_map_boxes_by_hand():
    box = torch.tensor([30.0, 20.0, 45.0, 30.0])
    crop = torch.tensor([20.0, 10.0, 50.0, 40.0, 0.0])  # x0, y0, w, h, flip; view side 100
    assert map_boxes(box, crop, 100).tolist() == pytest.approx([20.0, 25.0, 50.0, 50.0])
    flipped = crop.clone()
    flipped[4] = 1.0
    assert map_boxes(box, flipped, 100).tolist() == pytest.approx([50.0, 25.0, 80.0, 50.0])


def test_views_record_their_crop_and_flip():
    img, t = coordinate_image(), PLAIN.build()
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        view, geom = t(img)
        flips.add(bool(geom[4]))
        x, y = decode(view)
        x0, y0, w, h, flip = geom.tolist()
        # the view's left column comes from x0 (or x0 + w when flipped), top row from y0
        left = x[:, 2].mean().item()
        assert left == pytest.approx(x0 + w - 2.5 * w / S if flip else x0 + 2.5 * w / S, abs=3.0)
        assert y[2, :].mean().item() == pytest.approx(y0 + 2.5 * h / S, abs=3.0)
    assert flips == {True, False}


def test_masked_box_and_roialign_land_on_the_same_region_after_flips():
    cfg = MaskCoOptions(box_scale=(0.3, 0.6), min_overlap=0.3)
    pair, img = MaskedPair(cfg), coordinate_image()
    transforms = [PLAIN.build(), PLAIN.build()]
    flips = set()
    for seed in range(16):
        torch.manual_seed(seed)
        s = pair.sample(img, transforms)
        (query, key), (qb, kb), src = s["views"], s["boxes"], s["source_box"]
        flips.update(bool(f) for f in s["geoms"][:, 4])
        assert 0 <= qb.min() and qb.max() <= S and 0 <= kb.min() and kb.max() <= S
        # RoIAlign at each view's box reads the source box's region (mean coordinate = centre)
        centre = [(src[0] + src[2]).item() / 2, (src[1] + src[3]).item() / 2]
        for view, b in ((query, qb), (key, kb)):
            xy = roi_features(torch.stack(decode(view))[None], b[None, None], S, 4)[0, 0]
            assert xy.tolist() == pytest.approx(centre, abs=3.0)
        # the masked query: the box reads the fill (0 = the mean after normalisation) ...
        pair.mask(query, qb)
        inside = roi_features(query[None], qb[None, None], S, 4)[0, 0]
        assert inside.abs().max().item() < 1e-6
        # ... and the pixels outside it keep the image
        x0, y0, x1, y1 = qb.tolist()
        outside = torch.ones(S, S, dtype=torch.bool)
        outside[
            max(0, int(y0) - 1) : int(math.ceil(y1)) + 1,
            max(0, int(x0) - 1) : int(math.ceil(x1)) + 1,
        ] = False
        assert (query[:, outside].abs().sum(0) > 0.05).float().mean() > 0.95
        # and __call__ gives the same views and boxes, masked
        torch.manual_seed(seed)
        views, boxes = pair(img, transforms)
        assert torch.equal(boxes, s["boxes"]) and torch.equal(views[0], query)
    assert flips == {True, False}  # flipped and unflipped views were both exercised


def test_info_nce_with_excluded_keys_by_hand():
    q = torch.tensor([[1.0, 0.0]], requires_grad=True)
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]], requires_grad=True)
    valid = torch.tensor([[True, True, False]])
    # the excluded third key (a copy of the positive) does not count: log(1 + e^-1)
    loss = info_nce(q, keys, 1.0, valid)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))
    # with it, -log(e / (2e + 1))
    assert info_nce(q, keys, 1.0).item() == pytest.approx(-math.log(math.e / (2 * math.e + 1)))
    # temperature 0.5: -log(e^2 / (e^2 + 1))
    assert info_nce(q, keys, 0.5, valid).item() == pytest.approx(math.log(1 + math.exp(-2)))
    loss.backward()
    assert q.grad is not None and keys.grad is None  # keys: momentum encoder, no gradient


def test_negatives_never_include_the_positive():
    torch.manual_seed(0)
    n, k, d = 4, 3, 8
    k_pos = torch.randn(n, d)
    # every image's inter boxes contain an exact copy of its own positive ...
    k_inter = torch.randn(n, k, d)
    k_inter[:, 1] = k_pos
    pos_boxes = random_boxes(n, 1, S, (0.3, 0.6))[:, 0]
    intra, valid_intra = intra_boxes(pos_boxes, k, S, (0.2, 0.6), max_iou=0.3)
    k_intra = torch.randn(n, k, d)
    keys, valid = assemble_keys(k_pos, k_inter, k_intra, valid_intra)
    assert keys.shape == (n, 1 + n * k + k, d)
    for i in range(n):
        own = slice(1 + i * k, 1 + (i + 1) * k)
        assert valid[i, 0] and not valid[i, own].any()  # ... which is never a negative
        others = [j for j in range(1 + n * k) if j > 0 and not own.start <= j < own.stop]
        assert valid[i, others].all()
        assert torch.equal(valid[i, 1 + n * k :], valid_intra[i])
    iou = box_iou_rows(pos_boxes, intra)
    assert (iou[valid_intra] < 0.3).all()
    assert valid_intra.float().mean() > 0.5  # most rows find enough non-overlapping boxes
    # so query 0's loss ignores image 0's own inter boxes (the positive's copy included) ...
    q = torch.randn(n, d)
    k_inter2 = k_inter.clone()
    k_inter2[0] = torch.randn(k, d)
    keys2, valid2 = assemble_keys(k_pos, k_inter2, k_intra, valid_intra)
    assert info_nce(q[:1], keys[:1], 0.2, valid[:1]).item() == pytest.approx(
        info_nce(q[:1], keys2[:1], 0.2, valid2[:1]).item(), abs=1e-6
    )
    # ... while query 1 sees them as negatives
    assert info_nce(q[1:2], keys[1:2], 0.2, valid[1:2]).item() != pytest.approx(
        info_nce(q[1:2], keys2[1:2], 0.2, valid2[1:2]).item(), abs=1e-6
    )


def test_box_iou_rows_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]]])
    assert box_iou_rows(a, b)[0].tolist() == pytest.approx([50 / 150, 0.0, 1.0])


def test_maskco_step_routes_gradients_to_the_online_network_only():
    torch.manual_seed(0)
    m = MaskCo(
        "resnet18", MaskCoOptions(proj_hidden=32, proj_dim=8, mph_dim=16, intra_negatives=True)
    )
    assert set(m.target) == {"backbone", "mph", "projector"}
    views = [torch.randn(3, 3, S, S), torch.randn(3, 3, S, S)]
    boxes = torch.tensor([[[8.0, 8.0, 40.0, 40.0], [10.0, 12.0, 50.0, 44.0]]]).repeat(3, 1, 1)
    loss = m(views, boxes)["loss"]
    # 1 positive + 2 other images x 16 + 16 intra candidates: near log(49) at init
    assert 0.5 * math.log(49) < loss.item() < 2 * math.log(49)
    loss.backward()
    assert all(p.grad is not None for p in m.online_parameters())
    assert all(p.grad is None for p in m.target.parameters())


def test_supp_table2_options_no_mph_and_no_mask():
    """``--no-mph``: RoIAlign reads res5 itself (no head parameters, EMA on backbone and
    projector only); ``--no-mask``: the query's box keeps the image (the same draws and
    boxes as with the mask)."""
    from pretrain.methods import build_method

    model = build_method("maskco", "resnet18", {"mph": False})
    assert isinstance(model.mph, torch.nn.Identity)
    assert not any(n.startswith("mph.") for n, _ in model.named_parameters())
    views = [torch.randn(4, 3, 64, 64) for _ in range(2)]
    torch.manual_seed(0)
    boxes = torch.stack([random_boxes(4, 1, 64, (0.3, 0.5), "cpu")[:, 0]] * 2, dim=1)
    loss = model(views, boxes)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.conv1.weight.grad is not None
    model.update_target(0.99)

    img, transforms = coordinate_image(), [PLAIN.build(), PLAIN.build()]
    torch.manual_seed(5)
    masked, b1 = MaskedPair(MaskCoOptions())(img, transforms)
    torch.manual_seed(5)
    plain, b2 = MaskedPair(MaskCoOptions(mask=False))(img, transforms)
    assert torch.equal(b1, b2) and torch.equal(masked[1], plain[1])
    inside = roi_features(plain[0][None], b2[None, :1], S, 4)[0, 0]
    assert inside.abs().max().item() > 0.1  # the image, not the fill
    assert roi_features(masked[0][None], b1[None, :1], S, 4).abs().max().item() < 1e-6


def test_the_maskco_coco_recipe_pretrains_on_a_flat_folder(tmp_path, shapes_root):
    """MaskCo supp. A.2: the COCO recipe on a flat folder of images (as train2017/), here
    one short epoch; the checkpoint records the no-MPH option the tables select on."""
    import shutil

    from pretrain.recipes import recipe_config
    from pretrain.trainer import Trainer

    flat = tmp_path / "train2017"
    flat.mkdir()
    for i, f in enumerate(sorted((shapes_root / "imagefolder" / "train").rglob("*.*"))[:16]):
        shutil.copy(f, flat / f"{i:012d}{f.suffix}")
    cfg = recipe_config("maskco-coco", data=str(flat), output=str(tmp_path / "run"),
                        epochs=1, batch_size=8, image_size=64, arch="resnet18", workers=0,
                        knn_every=0)  # fmt: skip
    assert cfg.method == "maskco" and cfg.options.mph is False and cfg.options.mask is True
    out = Trainer(cfg).fit()
    meta = torch.load(out, weights_only=False)["meta"]
    assert meta["options"]["mph"] is False and meta["options"]["mask"] is True


def test_the_supp_table2_rows_select_no_mph_checkpoints(tmp_path):
    """The maskco_coco table: the paper's two rows, and a row per no-MPH MaskCo checkpoint
    labelled by its mask option; a checkpoint with the MPH is left out."""
    import json

    from tables.aggregate import collect
    from tables.layout import TABLES, build_table

    for name, opts in (("coco_nomask", {"mph": False, "mask": False}),
                       ("imagenet_mph", {"mph": True, "mask": True})):  # fmt: skip
        for k, top in enumerate((50.0, 52.0)):
            d = tmp_path / "linear_multilayer" / name / f"seed{k}"
            d.mkdir(parents=True)
            m = {"protocol": "linear_multilayer", "seed": 1000 + k,
                 "cls": {"conv4_top1": top, "conv5_top1": top - 10},
                 "weights": {"sha256": name, "meta": {"method": "MASKCO", "epochs": 200,
                                                      "options": opts}}}  # fmt: skip
            (d / "metrics.json").write_text(json.dumps(m))
    rows = build_table(TABLES["maskco_coco"], collect([tmp_path]), {})
    assert [(r.kind, r.method) for r in rows] == [("paper", "yes"), ("paper", "no"),
                                                  ("ours", "no")]  # fmt: skip
    ours = rows[-1]
    assert ours.mean("linear_conv4") == pytest.approx(51.0)
    assert ours.mean("linear_conv5") == pytest.approx(41.0) and ours.mean("voc_AP") is None
