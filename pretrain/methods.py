"""Self-supervised methods over one base class with three named hooks.

``build_heads()`` creates the method's heads, ``momentum_modules`` names the online modules
that get an EMA target copy, ``compute_loss(views)`` returns the loss terms. The training
loop (``pretrain.trainer``) is written once for all methods. Each method also carries its
paper's training defaults (``train_defaults``: lr, warmup, EMA schedule, augmentations) and
head sizes (``head_defaults``); a value given explicitly always wins.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from common.cli import ConfigError
from common.flags import opt
from pretrain.base import HeadSizes, Method, pool
from pretrain.losses import attention_loss, negative_cosine, symmetric_byol_loss
from pretrain.maskco import MaskCo, MaskCoOptions
from pretrain.models import MLP, TStream

__all__ = [
    "BYOL",
    "BYOLGSG",
    "CARE",
    "CAREOptions",
    "GSGOptions",
    "METHODS",
    "HeadSizes",
    "MaskCo",
    "MaskCoOptions",
    "Method",
    "SimSiam",
    "SimSiamGSG",
    "build_method",
    "derangement",
    "gsg_loss",
    "method_options",
]


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


@dataclass
class CAREOptions(HeadSizes):
    """CARE's T-stream and loss options (official code's values)."""

    n_blocks: int = opt(5, "transformer blocks n")
    heads: int = opt(4, "attention heads (of 128 dims at mid-dim 512)")
    mid_dim: int = opt(512, "T-stream block width")
    pos_enc: str = opt(
        "abs",
        "position encoding: abs (official code), rel (paper), none",
        choices=("abs", "rel", "none"),
    )
    lambda_att: float = opt(100.0, "weight lambda of the attention loss L_att")
    att_loss: str = opt(
        "code", "L_att as in the official code (MSE) or the paper's Eq. 4", choices=("code", "eq4")
    )
    t_detach: bool = opt(
        False, "the paper's text: L_t trains only the T-stream (official code: also res2-res4)"
    )
    nominal_res4: int = opt(14, "res4 side at 224 px: the size of the position tables")


class CARE(BYOL):
    """CARE: BYOL's C-stream plus a transformer stream on res4 that supervises it.

    L = L_c + L_t + lambda * L_att (official code; docs/methods.md, CARE). L_t also trains res2-res4
    unless ``t_detach``; L_att's T-side is detached.
    """

    name = "care"
    momentum_modules = ("backbone", "projector", "tstream", "t_projector")
    Options = CAREOptions

    def build_heads(self) -> None:
        super().build_heads()
        c = self.cfg
        self.tstream = TStream(
            self.backbone.res4_dim,
            self.backbone.dim,
            c.n_blocks,
            c.mid_dim,
            c.heads,
            c.pos_enc,
            c.nominal_res4,
        )
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
            t_targets = [
                self.target["t_projector"](pool(self.target["tstream"](t4))) for t4, _ in targets
            ]
        return {
            "loss_c": symmetric_byol_loss(preds[0], preds[1], targets[0][1], targets[1][1]),
            "loss_t": symmetric_byol_loss(t_preds[0], t_preds[1], t_targets[0], t_targets[1]),
            "loss_att": sum(attention_loss(p, t, c.att_loss) for p, t in zip(preds, t_preds)),
        }

    def compute_loss(self, views):
        t = self.terms(views)
        loss = t["loss_c"] + t["loss_t"] + self.cfg.lambda_att * t["loss_att"]
        return {"loss": loss, **{k: v.detach() for k, v in t.items()}}


SIMSIAM_TRAIN = {
    "base_lr": 0.05,
    "warmup_epochs": 0.0,
    "base_tau": 0.99,
    "tau_schedule": "constant",
    "crop_scale": (0.2, 1.0),
    "aug": "simsiam",
    "fix_pred_lr": True,
}
SIMSIAM_HEADS = {"proj_hidden": 2048, "proj_dim": 2048, "pred_hidden": 512}


class SimSiam(Method):
    """SimSiam: ``0.5 [D(p1, sg z2) + D(p2, sg z1)]``, no target network (docs/methods.md).

    Projector 3 x (Linear no-bias, BN, ReLU) with the last BN without affine; predictor
    2048 -> 512 (BN, ReLU) -> 2048.
    """

    name = "simsiam"
    train_defaults = SIMSIAM_TRAIN
    head_defaults = SIMSIAM_HEADS

    def build_heads(self) -> None:
        c = self.cfg
        self.projector = MLP(self.backbone.dim, c.proj_hidden, c.proj_dim, layers=3, last_bn=True)
        self.predictor = MLP(c.proj_dim, c.pred_hidden, c.proj_dim)

    def project(self, views) -> list[torch.Tensor]:
        """Online projections z of each view: (N, proj_dim)."""
        return [self.projector(pool(self.backbone(v)[1])) for v in views]

    def project_predict(self, views) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Projections z and predictions p = h(z) of each view, (N, proj_dim) each."""
        z = self.project(views)
        return z, [self.predictor(zv) for zv in z]

    def compute_loss(self, views):
        z, p = self.project_predict(views)
        loss = 0.5 * (negative_cosine(p[0], z[1]) + negative_cosine(p[1], z[0])).mean()
        return {"loss": loss}


def derangement(n: int, device=None) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` without fixed points (n >= 2): (n,).

    Rejection sampling: about e draws on average. Uses the global torch RNG (checkpointed).
    """
    if n < 2:
        raise ValueError(f"GSG pairs each image with another one: a batch of {n} is too small")
    while True:
        perm = torch.randperm(n)
        if not (perm == torch.arange(n)).any():
            return perm.to(device)


# The four cross-image pairs in the order of their argmin index: (view of image 1, of image 2)
GSG_PAIRS = ((0, 0), (0, 1), (1, 0), (1, 1))


def gsg_loss(
    p: list[torch.Tensor], z: list[torch.Tensor], perm: torch.Tensor, distance: str = "normalized"
):
    """Guided stop-gradient (docs/methods.md) for sample i = (image i, image perm[i]).

    ``p``: online predictions of view 1 and 2, each (N, D); ``z``: the projections that
    serve as distances' inputs and as stop-gradient targets (detached here; the target
    network's for BYOL-GSG). Of the cross-image pairs (z1a, z2b) the closest one becomes
    the sources: ``0.5 [D(p1a, sg z1a') + D(p2b, sg z2b')]``, a' the other view and D the
    negative cosine.
    Returns ((N,) per-sample losses, (N,) chosen pair index into ``GSG_PAIRS``); ties go
    to the first pair in ``GSG_PAIRS`` order.
    """
    if distance not in ("normalized", "raw"):
        raise ValueError(f"unknown GSG distance {distance!r} (normalized, raw)")
    z = [zv.detach() for zv in z]
    zd = [F.normalize(zv, dim=-1) for zv in z] if distance == "normalized" else z
    d = torch.stack([(zd[a] - zd[b][perm]).norm(dim=-1) for a, b in GSG_PAIRS], dim=1)
    choice = d.argmin(dim=1)
    a, b = (choice // 2).bool().unsqueeze(1), (choice % 2).bool().unsqueeze(1)
    p1, t1 = torch.where(a, p[1], p[0]), torch.where(a, z[0], z[1])
    p2, t2 = torch.where(b, p[1][perm], p[0][perm]), torch.where(b, z[0][perm], z[1][perm])
    return 0.5 * (negative_cosine(p1, t1) + negative_cosine(p2, t2)), choice


@dataclass
class GSGOptions(HeadSizes):
    """Guided stop-gradient's options."""

    gsg_distance: str = opt(
        "normalized",
        "distance that picks the closest cross-image pair: "
        "Euclidean between L2-normalised (ours) or raw projections",
        choices=("normalized", "raw"),
    )


class SimSiamGSG(SimSiam):
    """SimSiam with guided stop-gradient: images paired within the (per-GPU) batch."""

    name = "simsiam_gsg"
    min_batch = 2
    Options = GSGOptions

    def targets(self, views, z) -> list[torch.Tensor]:
        return z

    def compute_loss(self, views):
        z, p = self.project_predict(views)
        perm = derangement(len(views[0]), views[0].device)
        per_sample, choice = gsg_loss(p, self.targets(views, z), perm, self.cfg.gsg_distance)
        loss = per_sample.mean()
        share = torch.bincount(choice, minlength=4).float() / len(choice)
        return {
            "loss": loss,
            **{f"gsg_{a + 1}{b + 1}": share[i] for i, (a, b) in enumerate(GSG_PAIRS)},
        }


class BYOLGSG(SimSiamGSG):
    """BYOL with guided stop-gradient: SimSiam's heads, an EMA target (0.99, constant)
    whose projections choose the pairs and are the targets (loss D as SimSiam-GSG)."""

    name = "byol_gsg"
    momentum_modules = ("backbone", "projector")

    @torch.no_grad()
    def targets(self, views, z):
        return [self.target["projector"](pool(self.target["backbone"](v)[1])) for v in views]


METHODS: dict[str, type[Method]] = {
    "byol": BYOL,
    "care": CARE,
    "simsiam": SimSiam,
    "simsiam_gsg": SimSiamGSG,
    "byol_gsg": BYOLGSG,
    "maskco": MaskCo,
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_options(name: str, values: dict | None = None, strict: bool = True) -> HeadSizes:
    """The options of method ``name`` from ``values`` (field -> value).

    ``strict``: a value the method has no option for is an error naming the method (a flag
    of another method); otherwise it is ignored (recipes share sizes across methods).
    """
    cls = method_class(name).Options
    known = {f.name for f in fields(cls)}
    values = dict(values or {})
    foreign = sorted(set(values) - known)
    if foreign and strict:
        raise ConfigError(
            f"--method {name} has no option {', '.join(foreign)} (its options: "
            f"{', '.join(sorted(known))})"
        )
    return cls(**{k: v for k, v in values.items() if k in known})


def all_option_classes() -> list[type[HeadSizes]]:
    """Every method's options class, each once, base class first."""
    seen: list[type[HeadSizes]] = [HeadSizes]
    for m in METHODS.values():
        if m.Options not in seen:
            seen.append(m.Options)
    return seen


def build_method(name: str, arch: str, options: HeadSizes | dict | None = None) -> Method:
    """An instance of method ``name``; ``options`` as its ``Options`` or a dict of values."""
    if options is None or isinstance(options, dict):
        options = method_options(name, options)
    return method_class(name)(arch, options)
