"""The base of every method: ``HeadSizes`` (the options every method has) and ``Method``
(online backbone + heads, EMA target copies, optimiser groups), with named hooks:
``build_heads()``, ``momentum_modules``, ``compute_loss(views)`` and, for a method whose
views need more than the standard augmentations, ``data_hook(options)``.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from common.archs import get_arch
from common.flags import opt
from pretrain.models import ResNetTrunk


@dataclass
class HeadSizes:
    """Head sizes shared by every method; ``None`` = the method's paper value
    (``Method.head_defaults``). Each method's options extend this with its own fields."""

    proj_hidden: int | None = opt(
        None,
        "projector hidden width (per method: 4096 BYOL / CARE, 2048 SimSiam family, 2048 MaskCo)",
    )
    proj_dim: int | None = opt(
        None, "projection width (per method: 256 BYOL / CARE, 2048 SimSiam family, 128 MaskCo)"
    )
    pred_hidden: int | None = opt(
        None, "predictor hidden width (per method: 4096 BYOL / CARE, 512 SimSiam family)"
    )
    zero_init: bool | None = opt(
        None,
        "the last BN gamma of every residual block starts at 0 (per method: on for the SimSiam "
        "family as its official code, off for BYOL / CARE / MaskCo; lightly's CIFAR "
        "benchmark: off)",
    )
    stem_relu: bool | None = opt(
        None,
        "apply the stem's ReLU (default: the arch's; off for resnet18_cifar, whose benchmark "
        "backbone drops it)",
    )

    def with_defaults(self, defaults: dict, feature_dim: int | None = None):
        """A copy with every ``None`` field taken from ``defaults``; the default
        ``"feature_dim"`` stands for the backbone's pooled width (2048 for ResNet-50)."""
        filled = {
            f.name: defaults[f.name]
            for f in fields(self)
            if getattr(self, f.name) is None and f.name in defaults
        }
        if feature_dim is not None:
            filled = {k: feature_dim if v == "feature_dim" else v for k, v in filled.items()}
        return replace(self, **filled)


def pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) global average."""
    return x.mean(dim=(2, 3))


class Method(nn.Module, metaclass=abc.ABCMeta):
    """Online backbone + heads; EMA copies of ``momentum_modules`` under ``self.target``."""

    name = "base"
    momentum_modules: tuple[str, ...] = ()
    n_views = 2
    zero_init_residual = False  # the SimSiam family's encoders: last BN gamma of a block = 0
    needs_boxes = False  # compute_loss(views, boxes): the data give each view's box (MaskCo)
    # the forward draws no random numbers on the host: its step can be a CUDA graph
    graph_safe = True
    min_batch = 1  # per process: GSG pairs images and MaskCo takes negatives within the batch
    # BYOL / CARE (docs/methods.md, CARE); subclasses override what their paper changes
    train_defaults: dict = {
        "base_lr": 0.05,
        "warmup_epochs": 10.0,
        "base_tau": 0.99,
        "tau_schedule": "cosine",
        "crop_scale": (0.08, 1.0),
        "aug": "byol",
        "fix_pred_lr": False,
        "lr_schedule": "step",
    }
    head_defaults: dict = {"proj_hidden": 4096, "proj_dim": 256, "pred_hidden": 4096}
    Options: type[HeadSizes] = HeadSizes  # the method's options (a subclass adds its own)

    def __init__(self, arch: str = "resnet50", cfg: HeadSizes | None = None):
        super().__init__()
        cfg = cfg if cfg is not None else self.Options()
        if not isinstance(cfg, self.Options):
            raise TypeError(f"{self.name} takes {self.Options.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg.with_defaults(self.head_defaults, get_arch(arch).feature_dim)
        zero = self.zero_init_residual if self.cfg.zero_init is None else self.cfg.zero_init
        self.backbone = ResNetTrunk(arch, zero_init_residual=zero, stem_relu=self.cfg.stem_relu)
        self.build_heads()
        self.target = nn.ModuleDict(
            {name: copy.deepcopy(getattr(self, name)) for name in self.momentum_modules}
        )
        self.target.requires_grad_(False)

    @abc.abstractmethod
    def build_heads(self) -> None:
        """Create the method's heads as attributes (called before the target copy)."""

    @classmethod
    def data_hook(cls, options: HeadSizes):
        """What the data side needs beyond the standard views: None, or a callable
        ``(image, view_transforms) -> (views, *extra)`` run in the loader workers (MaskCo's
        masked pair with its boxes). ``extra`` reaches ``compute_loss`` after the views."""
        return None

    @classmethod
    def views_needed(cls, options: HeadSizes) -> int:
        """Views drawn per image (GSG's official code: four crops)."""
        return cls.n_views

    def local_bn_modules(self) -> tuple[str, ...]:
        """Submodules whose BatchNorms keep per-GPU statistics under DDP (the rest become
        SyncBatchNorm on CUDA), e.g. CARE's T-stream as in its official code."""
        return ()

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
            if t_params:  # a module may have none (MaskCo --no-mph: an identity)
                torch._foreach_mul_(t_params, tau)
                torch._foreach_add_(t_params, o_params, alpha=1 - tau)
            for tb, ob in zip(target.buffers(), online.buffers()):
                tb.copy_(ob)
