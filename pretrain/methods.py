"""Self-supervised methods over one base class with three named hooks.

``build_heads()`` creates the method's heads, ``momentum_modules`` names the online modules
that get an EMA target copy, ``compute_loss(views)`` returns the loss terms. The training
loop (``pretrain.train``) is written once for all methods.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass

import torch
from torch import nn

from .losses import attention_loss, symmetric_byol_loss
from .models import MLP, ResNetTrunk, TStream


@dataclass
class HeadConfig:
    """Head sizes and method options (paper defaults; every one is a CLI flag)."""

    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    # CARE (DESIGN.md s. 4)
    n_blocks: int = 5
    heads: int = 4
    mid_dim: int = 512
    pos_enc: str = "abs"
    lambda_att: float = 100.0
    att_loss: str = "code"
    t_detach: bool = False  # the paper's text: T-stream loss trains only T-stream modules
    nominal_res4: int = 14  # res4 side at 224 px, for the T-stream's position tables


def pool(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C) global average."""
    return x.mean(dim=(2, 3))


class Method(nn.Module, metaclass=abc.ABCMeta):
    """Online backbone + heads; EMA copies of ``momentum_modules`` under ``self.target``."""

    name = "base"
    momentum_modules: tuple[str, ...] = ()
    n_views = 2

    def __init__(self, arch: str = "resnet50", cfg: HeadConfig | None = None):
        super().__init__()
        self.cfg = cfg or HeadConfig()
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

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """DDP calls forward: the loss terms of ``compute_loss``."""
        return self.compute_loss(views)

    def online_parameters(self):
        return (p for n, p in self.named_parameters() if not n.startswith("target."))

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


class BYOL(Method):
    """BYOL: the C-stream alone (CARE's baseline, lambda = 0)."""

    name = "byol"
    momentum_modules = ("backbone", "projector")

    def build_heads(self) -> None:
        c = self.cfg
        self.projector = MLP(self.backbone.dim, c.proj_hidden, c.proj_dim)
        self.predictor = MLP(c.proj_dim, c.pred_hidden, c.proj_dim)

    def c_stream(self, views):
        """Online predictions, online res4 maps, target projections (no grad)."""
        preds, res4s = [], []
        for v in views:
            res4, res5 = self.backbone(v)
            preds.append(self.predictor(self.projector(pool(res5))))
            res4s.append(res4)
        with torch.no_grad():
            targets = []
            for v in views:
                t4, t5 = self.target["backbone"](v)
                targets.append((t4, self.target["projector"](pool(t5))))
        return preds, res4s, targets

    def compute_loss(self, views):
        preds, _, targets = self.c_stream(views)
        loss_c = symmetric_byol_loss(preds[0], preds[1], targets[0][1], targets[1][1])
        return {"loss": loss_c, "loss_c": loss_c.detach()}


class CARE(BYOL):
    """CARE: BYOL's C-stream plus a transformer stream on res4 that supervises it.

    L = L_c + L_t + lambda * L_att (official code; DESIGN.md s. 4). L_t also trains res2-res4
    unless ``t_detach``; L_att's T-side is detached.
    """

    name = "care"
    momentum_modules = ("backbone", "projector", "tstream", "t_projector")

    def build_heads(self) -> None:
        super().build_heads()
        c = self.cfg
        self.tstream = TStream(self.backbone.res4_dim, self.backbone.dim, c.n_blocks, c.mid_dim,
                               c.heads, c.pos_enc, c.nominal_res4)
        self.t_projector = MLP(self.backbone.dim, c.proj_hidden, c.proj_dim)
        self.t_predictor = MLP(c.proj_dim, c.pred_hidden, c.proj_dim)

    def terms(self, views) -> dict[str, torch.Tensor]:
        """L_c, L_t and L_att with their graphs (tests check where gradients go)."""
        c = self.cfg
        preds, res4s, targets = self.c_stream(views)
        t_preds = []
        for r4 in res4s:
            r4 = r4.detach() if c.t_detach else r4
            t_preds.append(self.t_predictor(self.t_projector(pool(self.tstream(r4)))))
        with torch.no_grad():
            t_targets = [self.target["t_projector"](pool(self.target["tstream"](t4)))
                         for t4, _ in targets]
        return {
            "loss_c": symmetric_byol_loss(preds[0], preds[1], targets[0][1], targets[1][1]),
            "loss_t": symmetric_byol_loss(t_preds[0], t_preds[1], t_targets[0], t_targets[1]),
            "loss_att": sum(attention_loss(p, t, c.att_loss) for p, t in zip(preds, t_preds)),
        }

    def compute_loss(self, views):
        t = self.terms(views)
        loss = t["loss_c"] + t["loss_t"] + self.cfg.lambda_att * t["loss_att"]
        return {"loss": loss, **{k: v.detach() for k, v in t.items()}}


METHODS: dict[str, type[Method]] = {"byol": BYOL, "care": CARE}


def build_method(name: str, arch: str, cfg: HeadConfig | None = None) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name](arch, cfg)
