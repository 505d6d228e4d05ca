"""Self-supervised methods over one base class with three named hooks.

``build_heads()`` creates the method's heads, ``momentum_modules`` names the online modules
that get an EMA target copy, ``compute_loss(views)`` returns the loss terms. The training
loop (``pretrain.trainer``) is written once for all methods. Each method also carries its
paper's training defaults (``train_defaults``: lr, warmup, EMA schedule, augmentations) and
head sizes (``head_defaults``); a value given explicitly always wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from common.cli import ConfigError
from common.flags import opt
from pretrain.base import HeadSizes, Method, pool
from pretrain.losses import attention_loss, negative_cosine, symmetric_regression
from pretrain.maskco import MaskCo, MaskCoOptions
from pretrain.models import MLP, TStream

__all__ = [
    "BYOL",
    "BYOLGSG",
    "BYOLGSGPaper",
    "BYOLOptions",
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
    "SimSiamOptions",
    "build_method",
    "derangement",
    "gsg_loss",
    "method_options",
]


@dataclass
class BYOLOptions(HeadSizes):
    """BYOL's (and CARE's) loss form."""

    byol_loss: str = opt(
        "byol",
        "the regression loss: byol (BYOL's / CARE's 2 - 2 cos summed over both directions) or "
        "lightly (lightly's CIFAR benchmark: 0.5 (-cos - cos), a quarter of the gradient; the "
        "CIFAR recipes' default)",
        choices=("byol", "lightly"),
    )


class BYOL(Method):
    """BYOL: the C-stream alone (CARE's baseline, lambda = 0)."""

    name = "byol"
    momentum_modules = ("backbone", "projector")
    Options = BYOLOptions

    def build_heads(self) -> None:
        c = self.cfg
        self.projector = MLP(self.backbone.dim, c.proj_hidden, c.proj_dim)
        self.predictor = MLP(c.proj_dim, c.pred_hidden, c.proj_dim)

    t_input = 0  # which backbone map feeds CARE's T-stream: 0 = res4 (parallel), 1 = res5

    def c_stream(self, views):
        """Online predictions, the online maps a T-stream reads (res4, or res5 for CARE's
        sequential design), and per view (target map, target projection), without grad."""
        preds, maps = [], []
        for v in views:
            res = self.backbone(v)
            preds.append(self.predictor(self.projector(pool(res[1]))))
            maps.append(res[self.t_input])
        with torch.no_grad():
            targets = []
            for v in views:
                t = self.target["backbone"](v)
                targets.append((t[self.t_input], self.target["projector"](pool(t[1]))))
        return preds, maps, targets

    def compute_loss(self, views):
        preds, _, targets = self.c_stream(views)
        form = self.cfg.byol_loss
        loss_c = symmetric_regression(preds[0], preds[1], targets[0][1], targets[1][1], form)
        return {"loss": loss_c, "loss_c": loss_c.detach()}


@dataclass
class CAREOptions(BYOLOptions):
    """CARE's T-stream and loss options (official code's values)."""

    n_blocks: int = opt(5, "transformer blocks n")
    heads: int = opt(4, "attention heads (of 128 dims at mid-dim 512)")
    mid_dim: int = opt(512, "T-stream block width")
    pos_enc: str = opt(
        "abs",
        "position encoding: abs (official code: learned tables), rel (the paper's text), sine "
        "(fixed 2-D sine-cosine), none",
        choices=("abs", "rel", "sine", "none"),
    )
    lambda_att: float = opt(100.0, "weight lambda of the attention loss L_att")
    att_loss: str = opt(
        "code", "L_att as in the official code (MSE) or the paper's Eq. 4", choices=("code", "eq4")
    )
    t_detach: bool = opt(
        False, "the paper's text: L_t trains only the T-stream (official code: also res2-res4)"
    )
    nominal_res4: int = opt(14, "res4 side at 224 px: the size of the position tables")
    t_design: str = opt(
        "parallel",
        "parallel (official code: the T-stream on res4 beside res5) or sequential (the paper's "
        "ablation: on res5's output; its layout is ours, docs/fidelity.md)",
        choices=("parallel", "sequential"),
    )
    sync_tstream_bn: bool = opt(
        False, "under DDP, sync the T-stream's BatchNorms too (official: per-GPU statistics)"
    )


class CARE(BYOL):
    """CARE: BYOL's C-stream plus a transformer stream on res4 that supervises it.

    L = L_c + L_t + lambda * L_att (official code; docs/methods.md). L_t also trains
    res2-res4 unless ``t_detach``; L_att's T-side is detached. Under DDP the T-stream's
    BatchNorms keep per-GPU statistics (official), unless ``sync_tstream_bn``.
    """

    name = "care"
    momentum_modules = ("backbone", "projector", "tstream", "t_projector")
    Options = CAREOptions

    def build_heads(self) -> None:
        super().build_heads()
        c = self.cfg
        sequential = c.t_design == "sequential"
        self.t_input = 1 if sequential else 0
        self.tstream = TStream(
            self.backbone.dim if sequential else self.backbone.res4_dim,
            self.backbone.dim,
            c.n_blocks,
            c.mid_dim,
            c.heads,
            c.pos_enc,
            math.ceil(c.nominal_res4 / 2) if sequential else c.nominal_res4,
            c.t_design,
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
        form = c.byol_loss
        return {
            "loss_c": symmetric_regression(preds[0], preds[1], targets[0][1], targets[1][1], form),
            "loss_t": symmetric_regression(
                t_preds[0], t_preds[1], t_targets[0], t_targets[1], form
            ),
            "loss_att": sum(attention_loss(p, t, c.att_loss) for p, t in zip(preds, t_preds)),
        }

    def local_bn_modules(self) -> tuple[str, ...]:
        return () if self.cfg.sync_tstream_bn else ("tstream", "target.tstream")

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
    "lr_schedule": "epoch",
}
# the projector's hidden width is the backbone's pooled width (2048 for ResNet-50)
SIMSIAM_HEADS = {"proj_hidden": "feature_dim", "proj_dim": 2048, "pred_hidden": 512}


@dataclass
class SimSiamOptions(HeadSizes):
    """The SimSiam family's projector shape (defaults: the official ImageNet code)."""

    proj_layers: int = opt(
        3, "projector Linear layers (official ImageNet: 3; GSG C.2 / lightly's CIFAR: 2)"
    )
    proj_last_affine: bool = opt(
        False,
        "the projector's last BN has affine parameters (official ImageNet: no; lightly's CIFAR "
        "projector: yes)",
    )


class SimSiam(Method):
    """SimSiam: ``0.5 [D(p1, sg z2) + D(p2, sg z1)]``, no target network (docs/methods.md).

    As the official code (facebookresearch/simsiam, bych-lee/gsg): the encoder's residual
    blocks zero-initialised (last BN gamma 0); projector 3 x (Linear no-bias, BN, ReLU) at
    the backbone's width, the last BN without affine and no ReLU; predictor Linear(2048, 512,
    no bias) - BN - ReLU - Linear(512, 2048).
    """

    name = "simsiam"
    zero_init_residual = True
    train_defaults = SIMSIAM_TRAIN
    head_defaults = SIMSIAM_HEADS

    Options = SimSiamOptions

    def build_heads(self) -> None:
        c = self.cfg
        self.projector = MLP(self.backbone.dim, c.proj_hidden, c.proj_dim, layers=c.proj_layers,
                             last_bn=True, last_affine=c.proj_last_affine)  # fmt: skip
        self.predictor = MLP(c.proj_dim, c.pred_hidden, c.proj_dim, hidden_bias=False)

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


class BYOLGSGPaper(SimSiam):
    """The GSG paper's BYOL baseline (bych-lee/gsg ``BYOL``): SimSiam's encoder and heads, an
    EMA copy of backbone + projector (0.99, constant) whose projections are the targets:
    ``0.5 [D(p1, sg z2') + D(p2, sg z1')]``, z' the target network's. Trained with SimSiam's
    schedule and augmentations; CARE's BYOL (``byol``) is the other BYOL."""

    name = "byol_gsgpaper"
    momentum_modules = ("backbone", "projector")

    def compute_loss(self, views):
        _, p = self.project_predict(views)
        with torch.no_grad():
            t = [self.target["projector"](pool(self.target["backbone"](v)[1])) for v in views]
        loss = 0.5 * (negative_cosine(p[0], t[1]) + negative_cosine(p[1], t[0])).mean()
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
    p: list[torch.Tensor],
    z: list[torch.Tensor],
    perm: torch.Tensor,
    distance: str = "raw",
    partner: tuple[int, int] = (2, 3),
):
    """Guided stop-gradient (docs/methods.md) for sample i = (image i, image perm[i]).

    ``p``: online predictions of each view, (N, D) each; ``z``: the projections that serve
    as the distances' inputs and as stop-gradient targets (detached here; the target
    network's for BYOL-GSG). Sample i's own views are views 0 and 1 of image i; its partner's
    are views ``partner`` of image perm[i] (the official code: crops 3 and 4, other crops
    than the partner's own; ``(0, 1)`` for the two-view variant). Of the four cross pairs
    (own view a, partner view b) the closest becomes the sources: ``0.5 [D(p_a, sg z_a') +
    D(p_b, sg z_b')]``, a' the other view of the same image and D the negative cosine.
    Returns ((N,) per-sample losses, (N,) chosen pair index into ``GSG_PAIRS``); ties go
    to the first pair in ``GSG_PAIRS`` order (``argmin``).
    """
    if distance not in ("normalized", "raw"):
        raise ValueError(f"unknown GSG distance {distance!r} (normalized, raw)")
    z = [zv.detach() for zv in z]
    own_p, own_z = (p[0], p[1]), (z[0], z[1])
    part_p = (p[partner[0]][perm], p[partner[1]][perm])
    part_z = (z[partner[0]][perm], z[partner[1]][perm])
    norm = (lambda x: F.normalize(x, dim=-1)) if distance == "normalized" else (lambda x: x)
    d = torch.stack(
        [((norm(own_z[a]) - norm(part_z[b])) ** 2).sum(-1).sqrt() for a, b in GSG_PAIRS], dim=1
    )
    choice = d.argmin(dim=1)
    a, b = (choice // 2).bool().unsqueeze(1), (choice % 2).bool().unsqueeze(1)
    p1, t1 = torch.where(a, own_p[1], own_p[0]), torch.where(a, own_z[0], own_z[1])
    p2, t2 = torch.where(b, part_p[1], part_p[0]), torch.where(b, part_z[0], part_z[1])
    return 0.5 * (negative_cosine(p1, t1) + negative_cosine(p2, t2)), choice


@dataclass
class GSGOptions(SimSiamOptions):
    """Guided stop-gradient's options (defaults: the official code)."""

    gsg_distance: str = opt(
        "raw",
        "distance that picks the closest cross-image pair: Euclidean between raw projections "
        "(official) or L2-normalised ones (ours)",
        choices=("raw", "normalized"),
    )
    gsg_views: int = opt(
        4,
        "crops per image: 4 (official: the partner's views are its crops 3 and 4, a random "
        "permutation pairs the images) or 2 (ours: the partner's own two views, a permutation "
        "without fixed points; half the encoder passes)",
        choices=(4, 2),
    )


class SimSiamGSG(SimSiam):
    """SimSiam with guided stop-gradient: images paired within the (per-GPU) batch."""

    name = "simsiam_gsg"
    min_batch = 2
    graph_safe = False  # the pairing permutation is drawn inside the forward
    Options = GSGOptions

    @classmethod
    def views_needed(cls, options: GSGOptions) -> int:
        return options.gsg_views

    def targets(self, views, z) -> list[torch.Tensor]:
        return z

    def pairing(self, n: int, device) -> tuple[torch.Tensor, tuple[int, int]]:
        """(perm, partner views): ``torch.randperm`` with crops 3, 4 (official), or a
        derangement with the partner's own views (the two-view variant)."""
        if self.cfg.gsg_views == 4:
            return torch.randperm(n).to(device), (2, 3)
        return derangement(n, device), (0, 1)

    def compute_loss(self, views):
        z, p = self.project_predict(views)
        perm, partner = self.pairing(len(views[0]), views[0].device)
        per_sample, choice = gsg_loss(
            p, self.targets(views, z), perm, self.cfg.gsg_distance, partner
        )
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
    "byol_gsgpaper": BYOLGSGPaper,
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
