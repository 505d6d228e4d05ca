"""MaskCo: contrastive mask prediction (ICCV 2021; docs/methods.md, MaskCo).

Two views of an image; a box region of the query view is masked out. The query is the
RoIAlign feature of that box on the online network (backbone + mask prediction head, MPH)
through a projection head; keys are RoIAlign features of boxes on the momentum network's
key view: the positive is the same image region (box 0), negatives are ``n_neg_boxes``
random boxes of every other image of this GPU's batch and, with ``intra_negatives``,
``n_neg_boxes`` boxes of the same key view that overlap the positive by less than
``intra_max_iou``. InfoNCE with temperature; EMA update of backbone, MPH and head; no queue.

What the supplement leaves open is ours and a flag (README, ``--help``): MPH = ``mph_layers``
x (3x3 conv, BN, ReLU) at ``mph_dim`` channels then a 1x1 conv back to the backbone's width,
on res5; RoIAlign ``roi_size`` x ``roi_size`` (aligned, 2 samples per bin) then average;
MoCo v2 head 2048-2048-128 without BN; temperature 0.2; EMA 0.999 constant; boxes: the
positive is a sub-rectangle (sides ``box_scale`` of the two crops' overlap) of the region
both views see; the masked pixels are set to the dataset mean (``mask_fill``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from torchvision.ops import roi_align

from common.flags import opt
from pretrain.base import HeadSizes, Method
from pretrain.data import ViewTransform, map_boxes
from pretrain.losses import info_nce
from pretrain.models import MLP


def crop_xyxy(crop: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    """(top, left, height, width) -> (x0, y0, x1, y1)."""
    top, left, h, w = crop
    return float(left), float(top), float(left + w), float(top + h)


def intersection(a, b) -> tuple[float, float, float, float] | None:
    """Intersection of two xyxy boxes, or None if they do not overlap."""
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _area(b) -> float:
    return (b[2] - b[0]) * (b[3] - b[1])


@dataclass
class MaskCoOptions(HeadSizes):
    """MaskCo's options; every value is ours (the supplement does not give them)."""

    mph_layers: int = opt(2, "mask prediction head: 3x3 conv-BN-ReLU layers on res5")
    mph_dim: int = opt(512, "mask prediction head width")
    roi_size: int = opt(3, "RoIAlign bins per side on res5, then averaged")
    temperature: float = opt(0.2, "InfoNCE temperature (MoCo v2)")
    n_neg_boxes: int = opt(16, "negative boxes per image (paper: 16)")
    intra_negatives: bool = opt(False, "MaskCo(+in): also n-neg-boxes boxes of the same image")
    intra_max_iou: float = opt(
        0.3, "an intra-image negative overlaps the positive box by less than this"
    )
    neg_box_scale: tuple[float, float] = opt(
        (0.2, 0.6), "negative box sides / view side", metavar=("MIN", "MAX")
    )
    box_scale: tuple[float, float] = opt(
        (0.3, 0.6), "masked box sides / sides of the region both views see", metavar=("MIN", "MAX")
    )
    min_overlap: float = opt(0.3, "the key crop covers at least this fraction of the query crop")
    mask_fill: str = opt(
        "mean", "masked pixels: the dataset mean or Gaussian noise", choices=("mean", "noise")
    )
    mph: bool = opt(True, "the mask prediction head; off: RoIAlign on res5 itself (supp. Table 2)")
    mask: bool = opt(True, "mask the query's box; off: the box stays visible (supp. Table 2)")


class MaskedPair:
    """The query / key views of one image with the masked box (runs in the data workers).

    ``__call__(img, (query_transform, key_transform))`` returns ``([query, key], boxes)``:
    views (3, S, S) each, the query's box filled, and ``boxes`` (2, 4) = the same image
    region in the query's and in the key's pixels (xyxy). The key crop is redrawn (up to
    ``tries`` times) until it covers at least ``min_overlap`` of the query crop; failing
    that, the key uses the query's crop (its own flip and colours).
    """

    def __init__(self, cfg: MaskCoOptions, tries: int = 10):
        self.cfg, self.tries = cfg, tries
        if cfg.mask_fill not in ("mean", "noise"):
            raise ValueError(f"mask fill {cfg.mask_fill!r}: mean or noise")

    def __call__(self, img: Image.Image, transforms: list[ViewTransform]):
        s = self.sample(img, transforms)
        if self.cfg.mask:
            self.mask(s["views"][0], s["boxes"][0])
        return s["views"], s["boxes"]

    def sample(self, img: Image.Image, transforms: list[ViewTransform]) -> dict:
        """The unmasked views, their boxes (2, 4), geometries (2, 5) and the source box (4,)."""
        q_t, k_t = transforms
        crop_q = q_t.crop_params(img)
        qb = crop_xyxy(crop_q)
        for _ in range(self.tries):
            crop_k = k_t.crop_params(img)
            inter = intersection(qb, crop_xyxy(crop_k))
            if inter and _area(inter) >= self.cfg.min_overlap * _area(qb):
                break
        else:
            crop_k, inter = crop_q, qb
        query, q_geom = q_t(img, crop_q)
        key, k_geom = k_t(img, crop_k)
        lo, hi = self.cfg.box_scale
        u = torch.rand(4).tolist()
        iw, ih = inter[2] - inter[0], inter[3] - inter[1]
        bw, bh = iw * (lo + (hi - lo) * u[0]), ih * (lo + (hi - lo) * u[1])
        x0, y0 = inter[0] + (iw - bw) * u[2], inter[1] + (ih - bh) * u[3]
        box = torch.tensor([x0, y0, x0 + bw, y0 + bh])
        size = query.shape[-1]
        boxes = torch.stack([map_boxes(box, q_geom, size), map_boxes(box, k_geom, size)])
        return {
            "views": [query, key],
            "boxes": boxes,
            "geoms": torch.stack([q_geom, k_geom]),
            "source_box": box,
        }

    def mask(self, view: torch.Tensor, box: torch.Tensor) -> None:
        """Fill the pixels the box covers (in place): 0 = the mean after normalisation."""
        size = view.shape[-1]
        x0, y0 = int(box[0].floor().clamp(0, size)), int(box[1].floor().clamp(0, size))
        x1, y1 = int(box[2].ceil().clamp(0, size)), int(box[3].ceil().clamp(0, size))
        region = view[:, y0:y1, x0:x1]
        region.copy_(
            torch.zeros_like(region) if self.cfg.mask_fill == "mean" else torch.randn(region.shape)
        )


def random_boxes(
    n: int, k: int, size: int, scale: tuple[float, float], device=None
) -> torch.Tensor:
    """(n, k, 4) random xyxy boxes inside a size x size view, sides ``scale`` x size."""
    lo, hi = scale
    u = torch.rand(n, k, 4, device=device)
    w, h = (lo + (hi - lo) * u[..., 0]) * size, (lo + (hi - lo) * u[..., 1]) * size
    x0, y0 = (size - w) * u[..., 2], (size - h) * u[..., 3]
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=-1)


def box_iou_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of box a[i] (N, 4) with each of b[i] (N, K, 4): (N, K)."""
    a = a.unsqueeze(1)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area + area_b - inter)


def intra_boxes(
    pos: torch.Tensor, k: int, size: int, scale: tuple[float, float], max_iou: float, tries: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """k boxes per key view overlapping its positive (N, 4) by IoU < max_iou.

    Draws ``tries * k`` candidates and keeps the first k that qualify. Returns boxes
    (N, k, 4) and ``valid`` (N, k): False where too few candidates qualified.
    """
    cand = random_boxes(pos.shape[0], tries * k, size, scale, pos.device)
    ok = box_iou_rows(pos, cand) < max_iou
    order = torch.argsort((~ok).to(torch.int8), dim=1, stable=True)[:, :k]
    picked = torch.gather(cand, 1, order.unsqueeze(-1).expand(-1, -1, 4))
    return picked, torch.gather(ok, 1, order)


class MaskPredictionHead(nn.Module):
    """``layers`` x (3x3 conv, BN, ReLU) at ``hidden`` channels, then a 1x1 conv back to
    ``dim``: (N, dim, h, w) -> (N, dim, h, w). Fills the masked region from its context."""

    def __init__(self, dim: int, hidden: int, layers: int):
        super().__init__()
        mods: list[nn.Module] = []
        c = dim
        for _ in range(layers):
            mods += [
                nn.Conv2d(c, hidden, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            ]
            c = hidden
        mods.append(nn.Conv2d(c, dim, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def roi_features(
    feat: torch.Tensor, boxes: torch.Tensor, image_size: int, output: int
) -> torch.Tensor:
    """RoIAlign of boxes (N, K, 4) in the views' pixels on their maps (N, C, h, w), averaged
    over the ``output`` x ``output`` bins: (N, K, C)."""
    n, k = boxes.shape[:2]
    idx = torch.arange(n, device=boxes.device, dtype=boxes.dtype).repeat_interleave(k)
    rois = torch.cat([idx[:, None], boxes.reshape(-1, 4)], dim=1).to(feat.dtype)
    pooled = roi_align(
        feat,
        rois,
        output,
        spatial_scale=feat.shape[-1] / image_size,
        sampling_ratio=2,
        aligned=True,
    )
    return pooled.mean(dim=(2, 3)).reshape(n, k, -1)


class MaskCo(Method):
    """MaskCo over the shared loop: ``compute_loss(views, boxes)`` with boxes (N, 2, 4)."""

    name = "maskco"
    momentum_modules = ("backbone", "mph", "projector")
    needs_boxes = True
    graph_safe = False  # the negative boxes are drawn inside the forward
    min_batch = 2
    train_defaults = {
        "base_lr": 0.03,
        "warmup_epochs": 0.0,
        "base_tau": 0.999,
        "tau_schedule": "constant",
        "crop_scale": (0.2, 1.0),
        "aug": "simsiam",
        "fix_pred_lr": False,
        "lr_schedule": "step",
    }
    head_defaults = {"proj_hidden": 2048, "proj_dim": 128, "pred_hidden": 0}
    Options = MaskCoOptions

    @classmethod
    def data_hook(cls, options: MaskCoOptions) -> MaskedPair:
        """The masked query / key pair with its boxes, made in the loader workers."""
        return MaskedPair(options)

    def build_heads(self) -> None:
        c, dim = self.cfg, self.backbone.dim
        self.mph = MaskPredictionHead(dim, c.mph_dim, c.mph_layers) if c.mph else nn.Identity()
        self.projector = MLP(dim, c.proj_hidden, c.proj_dim, bn=False)

    def keys(self, key_view: torch.Tensor, pos: torch.Tensor):
        """Momentum keys (no grad) of the key view (N, 3, S, S) and its positive boxes (N, 4):
        positive (N, D), inter-image negatives (N, k, D), intra-image negatives (N, k, D)
        with ``valid`` (N, k), or None, None without ``intra_negatives``."""
        c, size = self.cfg, key_view.shape[-1]
        n = key_view.shape[0]
        with torch.no_grad():
            feat = self.target["mph"](self.target["backbone"](key_view)[1])
            inter = random_boxes(n, c.n_neg_boxes, size, c.neg_box_scale, key_view.device)
            parts = [pos.unsqueeze(1), inter]
            valid = None
            if c.intra_negatives:
                intra, valid = intra_boxes(
                    pos, c.n_neg_boxes, size, c.neg_box_scale, c.intra_max_iou
                )
                parts.append(intra)
            boxes = torch.cat(parts, dim=1)
            k = self.target["projector"](
                roi_features(feat, boxes, size, c.roi_size).flatten(0, 1)
            ).reshape(n, boxes.shape[1], -1)
        k_pos, k_inter = k[:, 0], k[:, 1 : 1 + c.n_neg_boxes]
        k_intra = k[:, 1 + c.n_neg_boxes :] if c.intra_negatives else None
        return k_pos, k_inter, k_intra, valid

    def compute_loss(self, views, boxes):
        c = self.cfg
        query_view, key_view = views
        size = query_view.shape[-1]
        feat = self.mph(self.backbone(query_view)[1])
        q = self.projector(roi_features(feat, boxes[:, 0:1], size, c.roi_size)[:, 0])
        k_pos, k_inter, k_intra, valid_intra = self.keys(key_view, boxes[:, 1])
        keys, valid = assemble_keys(k_pos, k_inter, k_intra, valid_intra)
        loss = info_nce(q, keys, c.temperature, valid)
        return {"loss": loss}


def assemble_keys(
    k_pos: torch.Tensor,
    k_inter: torch.Tensor,
    k_intra: torch.Tensor | None,
    valid_intra: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's key list: [positive, every image's inter boxes, own intra boxes].

    k_pos (N, D), k_inter (N, k, D), k_intra (N, k, D) or None. Returns keys (N, K, D) and
    ``valid`` (N, K): a query's own image's inter boxes are not negatives (they may cover
    the positive region), nor are intra boxes that overlap it too much.
    """
    n, k, d = k_inter.shape
    all_inter = k_inter.reshape(1, n * k, d).expand(n, -1, -1)
    owner = torch.arange(n, device=k_pos.device).repeat_interleave(k)
    valid_inter = owner.unsqueeze(0) != torch.arange(n, device=k_pos.device).unsqueeze(1)
    parts = [k_pos.unsqueeze(1), all_inter]
    valid = [torch.ones(n, 1, dtype=torch.bool, device=k_pos.device), valid_inter]
    if k_intra is not None:
        parts.append(k_intra)
        valid.append(valid_intra)
    return torch.cat(parts, dim=1), torch.cat(valid, dim=1)
