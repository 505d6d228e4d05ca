"""The base of every method: ``HeadConfig`` (head sizes and method options) and ``Method``
(online backbone + heads, EMA target copies, optimiser groups), with three named hooks:
``build_heads()``, ``momentum_modules`` and ``compute_loss(views)``.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from pretrain.models import ResNetTrunk


@dataclass
class HeadConfig:
    """Head sizes and method options (paper defaults; every one is a CLI flag).

    ``None`` means "the method's default" (``Method.head_defaults``).
    """

    proj_hidden: int | None = None
    proj_dim: int | None = None
    pred_hidden: int | None = None
    # CARE (DESIGN.md s. 4)
    n_blocks: int = 5
    heads: int = 4
    mid_dim: int = 512
    pos_enc: str = "abs"
    lambda_att: float = 100.0
    att_loss: str = "code"
    t_detach: bool = False  # the paper's text: T-stream loss trains only T-stream modules
    nominal_res4: int = 14  # res4 side at 224 px, for the T-stream's position tables
    # GSG (DESIGN.md s. 5)
    gsg_distance: str = "normalized"  # ours: Euclidean distance of L2-normalised projections
    # MaskCo (DESIGN.md s. 6): every value below is ours (the supplement does not give them)
    mph_layers: int = 2  # mask prediction head: 3x3 conv-BN-ReLU layers on res5
    mph_dim: int = 512
    roi_size: int = 3  # RoIAlign bins per side on res5, then averaged
    temperature: float = 0.2  # MoCo v2
    n_neg_boxes: int = 16  # boxes per image (paper: 16)
    intra_negatives: bool = False  # MaskCo(+in)
    intra_max_iou: float = 0.3  # an intra-image negative overlaps the positive less than this
    neg_box_scale: tuple[float, float] = (0.2, 0.6)  # negative box sides / view side
    box_scale: tuple[float, float] = (0.3, 0.6)  # masked box sides / the views' overlap sides
    min_overlap: float = 0.3  # key crop must cover this fraction of the query crop
    mask_fill: str = "mean"  # mean (0 after normalisation) | noise

    def with_defaults(self, defaults: dict) -> HeadConfig:
        """A copy with every ``None`` field taken from ``defaults``."""
        return replace(self, **{f.name: defaults[f.name] for f in fields(self)
                                if getattr(self, f.name) is None and f.name in defaults})


def pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) global average."""
    return x.mean(dim=(2, 3))


class Method(nn.Module, metaclass=abc.ABCMeta):
    """Online backbone + heads; EMA copies of ``momentum_modules`` under ``self.target``."""

    name = "base"
    momentum_modules: tuple[str, ...] = ()
    n_views = 2
    needs_boxes = False  # compute_loss(views, boxes): the data give each view's box (MaskCo)
    min_batch = 1  # per process: GSG pairs images and MaskCo takes negatives within the batch
    # BYOL / CARE (DESIGN.md s. 4); subclasses override what their paper changes
    train_defaults: dict = {"base_lr": 0.05, "warmup_epochs": 10.0, "base_tau": 0.99,
                            "tau_schedule": "cosine", "crop_scale": (0.08, 1.0), "aug": "byol",
                            "fix_pred_lr": False}
    head_defaults: dict = {"proj_hidden": 4096, "proj_dim": 256, "pred_hidden": 4096}

    def __init__(self, arch: str = "resnet50", cfg: HeadConfig | None = None):
        super().__init__()
        self.cfg = (cfg or HeadConfig()).with_defaults(self.head_defaults)
        self.backbone = ResNetTrunk(arch)
        self.build_heads()
        self.target = nn.ModuleDict(
            {name: copy.deepcopy(getattr(self, name)) for name in self.momentum_modules})
        self.target.requires_grad_(False)

    @abc.abstractmethod
    def build_heads(self) -> None:
        """Create the method's heads as attributes (called before the target copy)."""

    @abc.abstractmethod
    def compute_loss(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss terms for a batch of views (each (N, 3, H, W)); ``"loss"`` is optimised."""

    def forward(self, views: list[torch.Tensor], *extra) -> dict[str, torch.Tensor]:
        """DDP calls forward: the loss terms of ``compute_loss``."""
        return self.compute_loss(views, *extra)

    def online_parameters(self):
        return (p for n, p in self.named_parameters() if not n.startswith("target."))

    def param_groups(self, fix_pred_lr: bool = False) -> list[dict]:
        """Optimiser groups; with ``fix_pred_lr`` the predictor's group is marked
        ``fixed_lr`` (SimSiam: its lr stays at the base value, not scheduled)."""
        pred = getattr(self, "predictor", None)
        if not fix_pred_lr or pred is None:
            return [{"params": list(self.online_parameters())}]
        ids = {id(p) for p in pred.parameters()}
        rest = [p for p in self.online_parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": list(pred.parameters()), "fixed_lr": True}]

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """target <- tau * target + (1 - tau) * online (parameters); buffers are copied."""
        for name in self.momentum_modules:
            online, target = getattr(self, name), self.target[name]
            t_params = list(target.parameters())
            o_params = [p.detach() for p in online.parameters()]
            torch._foreach_mul_(t_params, tau)
            torch._foreach_add_(t_params, o_params, alpha=1 - tau)
            for tb, ob in zip(target.buffers(), online.buffers()):
                tb.copy_(ob)
