"""The ImageNet classification protocols as frozen configs, each citing where it comes from.

``CLS_PROTOCOLS[name]`` is the full-size protocol; ``smoke(protocol)`` its CPU variant on the
built-in synthetic ImageFolder (small crops, few epochs, same code path). ``resolve`` applies
``KEY VALUE`` overrides (``epochs 5 batch_size 128``) with type checks; the result is
recorded in every seed's ``config.yaml``. The learning rate is always
``lr_per_256 * batch_size / 256``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common.cli import ConfigError
from transfer.overrides import apply_overrides

KINDS = ("linear", "multilayer", "knn", "finetune")
HEADS = ("linear", "linear_bn", "multihead", "none")
SCHEDULES = ("cosine", "step")
TRAIN_AUGS = ("rrc_flip", "rrc_flip_jitter_lighting")
POOLS = ("specified", "adaptive")


@dataclass(frozen=True)
class ClsProtocol:
    """One classification protocol (every field is recorded in the seed's config.yaml)."""

    name: str
    kind: str  # linear (frozen, one head) | multilayer | knn (no training) | finetune
    source: str  # where every value below comes from
    head: str = "linear"  # linear | linear_bn (Linear + BatchNorm1d) | multihead | none
    epochs: int = 0
    batch_size: int = 256  # total over all GPUs
    lr_per_256: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine: per iteration, to 0 | step: x0.1 at each milestone
    milestones: tuple[int, ...] = ()  # epochs (step schedule)
    drop_last: bool = True  # the training loader drops its last partial batch
    train_aug: str = "rrc_flip"  # RandomResizedCrop + flip (+ jitter + PCA lighting)
    crop: int = 224  # training crop and evaluation centre crop, pixels
    val_resize: int = 256  # evaluation: Resize(val_resize) then CenterCrop(crop)
    square_resize: bool = False  # evaluation resize to (val_resize, val_resize) (GSG's kNN)
    stages: tuple[str, ...] = ("res5",)  # features probed: conv1, res2 .. res5
    pool: str = "specified"  # multilayer: OpenSelfSup's AvgPool2d params or adaptive sizes
    knn_ks: tuple[int, ...] = ()
    knn_temperature: float = 0.0
    subset: str = ""  # finetune: SimCLR's subset file (1percent.txt / 10percent.txt)
    sync_bn: bool = False  # finetune under DDP: SyncBatchNorm (global batch statistics)
    eval_every: int = 0  # also evaluate every N epochs (0: after the last epoch only)
    workers: int = 8  # data-loading processes per GPU
    eval_batch_size: int = 256  # per process
    max_bad_frac: float = 0.01  # fail when more of an epoch's images are unreadable
    smoke: bool = False

    @property
    def lr(self) -> float:
        return self.lr_per_256 * self.batch_size / 256

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


_LINEAR_SOURCE = (
    "CARE official code exps/arxiv/linear_eval_exp_care.py (+ linear_eval_exp.py, "
    "tools/eval_new.py, data/transforms.py typical_imagenet_transform): frozen encoder in eval "
    "mode, pooled res5 -> Linear(d, C) + BatchNorm1d(C), Linear N(0, 0.01) / bias 0, SGD "
    "lr 0.2 x B/256, B 256, momentum 0.9, wd 0, cosine per iteration, 80 epochs, drop_last"
)

CLS_PROTOCOLS: dict[str, ClsProtocol] = {
    p.name: p
    for p in (
        ClsProtocol(
            "linear_care",
            "linear",
            _LINEAR_SOURCE,
            head="linear_bn",
            epochs=80,
            lr_per_256=0.2,
        ),
        ClsProtocol(
            "linear_moco",
            "linear",
            "MoCo main_lincls.py: frozen encoder in eval mode, pooled res5 -> Linear(d, C) "
            "N(0, 0.01) / bias 0, SGD lr 30 (B 256), momentum 0.9, wd 0, 100 epochs, lr x0.1 "
            "at epochs 60 and 80; RandomResizedCrop 224 + flip / Resize 256 + CenterCrop 224",
            head="linear",
            epochs=100,
            lr_per_256=30.0,
            schedule="step",
            milestones=(60, 80),
            drop_last=False,
        ),
        ClsProtocol(
            "linear_multilayer",
            "multilayer",
            "MaskCo supplement A.3 (lr 0.1, x0.1 at 30 and 60, 90 epochs) on OpenSelfSup "
            "configs/benchmarks/linear_classification/imagenet/r50_multihead.py: frozen "
            "ResNet (frozen_stages 4), MultiClsHead(pool_type='specified') with "
            "openselfsup/models/utils/multi_pooling.py POOL_PARAMS['resnet50'], BatchNorm2d "
            "(affine False, momentum 0.1) before each Linear N(0, 0.01); SGD momentum 0.9, "
            "nesterov, wd 1e-4, B 256; RandomResizedCrop 224, flip, ColorJitter(0.4, 0.4, "
            "0.4, 0), Lighting (PCA, alphastd 0.1) / Resize 256 + CenterCrop 224",
            head="multihead",
            epochs=90,
            lr_per_256=0.1,
            nesterov=True,
            weight_decay=1e-4,
            schedule="step",
            milestones=(30, 60),
            drop_last=False,
            train_aug="rrc_flip_jitter_lighting",
            stages=("conv1", "res2", "res3", "res4", "res5"),
        ),
        ClsProtocol(
            "knn",
            "knn",
            "GSG official code main_knn.py: frozen encoder in eval mode, pooled res5, "
            "L2-normalised; the train split is the bank; weighted votes exp(cos / 0.2) of the "
            "k = 200 nearest; Resize((256, 256)) + CenterCrop 224 for both splits; features "
            "gathered across GPUs. k = 20 added (the InstDisc / DINO value)",
            head="none",
            square_resize=True,
            knn_ks=(20, 200),
            knn_temperature=0.2,
            batch_size=512,
        ),
        *(
            ClsProtocol(
                f"semisup_{pct}pct",
                "finetune",
                "SimCLR (Chen et al. 2020) appendix B.5, the protocol BYOL and CARE follow: "
                "fine-tune the whole network and a new Linear(d, C) N(0, 0.01) on SimCLR's "
                f"{pct}% subset ({pct}percent.txt), SGD Nesterov momentum 0.9, lr 0.05 x B/256 "
                "with B 4096 (0.8), no warmup, no weight decay, cosine decay, "
                f"{epochs} epochs; RandomResizedCrop 224 + flip only; Resize 256 + "
                "CenterCrop 224 for evaluation; global BatchNorm (SyncBatchNorm)",
                head="linear",
                epochs=epochs,
                batch_size=4096,
                lr_per_256=0.05,
                nesterov=True,
                drop_last=False,
                subset=f"{pct}percent",
                sync_bn=True,
            )
            for pct, epochs in ((1, 60), (10, 30))
        ),
    )
}

# The smoke variants: the built-in shapes (128 px), CPU, seconds per epoch.
_SMOKE = dict(crop=64, val_resize=73, workers=0, eval_batch_size=64, smoke=True, pool="adaptive")
_SMOKE_BY_KIND = {
    "linear": dict(epochs=3, batch_size=32),
    "multilayer": dict(epochs=3, batch_size=32, milestones=(2,)),
    "knn": dict(batch_size=64),
    "finetune": dict(epochs=3, batch_size=16),
}


def smoke(p: ClsProtocol) -> ClsProtocol:
    """The CPU variant of ``p``: small crops, few epochs, in-process loading, the lr of the
    full protocol's schedule shape (the milestones scaled to the epochs)."""
    changes = {**_SMOKE, **_SMOKE_BY_KIND[p.kind]}
    if p.schedule == "step" and "milestones" not in changes:
        changes["milestones"] = (2,)
    return dataclasses.replace(p, name=f"{p.name}_smoke", **changes)


_FIXED = {"name", "kind", "source", "smoke", "head"}
_CHOICES = {"schedule": SCHEDULES, "train_aug": TRAIN_AUGS, "pool": POOLS}


def resolve(name: str, smoke_variant: bool, overrides: list[str] | None = None) -> ClsProtocol:
    """The protocol ``name`` (its smoke variant when asked) with ``KEY VALUE`` overrides."""
    if name not in CLS_PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; choose from {', '.join(CLS_PROTOCOLS)}")
    p = CLS_PROTOCOLS[name]
    p = smoke(p) if smoke_variant else p
    return apply_overrides(p, overrides, _FIXED, _CHOICES)
