"""The recognition-transfer protocols as frozen configs, each citing where it comes from.

``REC_PROTOCOLS[name]`` (``manyshot_linear``, ``manyshot_finetune``, ``fewshot``) is the
full protocol; ``resolve(name, smoke, overrides)`` its CPU variant on the synthetic twins
when asked, with ``KEY VALUE`` overrides; the result is recorded in each result folder's
``config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common.cli import ConfigError
from transfer.overrides import apply_overrides

SOLVERS = ("sklearn", "torch")
FEATURE_DTYPES = ("float64", "float32")
CALTECH_SPLITS = ("dedup", "with_duplicates")


@dataclass(frozen=True)
class RecProtocol:
    """One recognition protocol (every field is recorded in the run's config.yaml)."""

    name: str
    kind: str  # manyshot_linear | manyshot_finetune | fewshot
    source: str
    image_size: int = 224  # Resize(image_size, bicubic) of the shorter side + CenterCrop
    normalise: bool = True  # ImageNet mean / std; false: none (ssl-transfer's --no-norm)
    batch_size: int = 64  # feature extraction; fine-tuning's training batch
    workers: int = 4
    # many-shot linear
    wd_lo: float = -6.0  # the weight decays: torch.logspace(wd_lo, wd_hi, wd_n), C = 1 / wd
    wd_hi: float = 5.0
    wd_n: int = 45
    max_iter: int = 100  # L-BFGS iterations per fit (scikit-learn's default)
    tol: float = 1e-4
    solver: str = "sklearn"  # sklearn (the reference) | torch (PyTorch L-BFGS, CPU or GPU)
    legacy_sklearn: bool = True  # reproduce the multinomial scikit-learn ssl-transfer ran
    # the dtype the classifier is fit in: float64 as scikit-learn 0.24's L-BFGS (ssl-transfer);
    # float32: the features as extracted (today's scikit-learn keeps them), both solvers
    features_dtype: str = "float64"
    absent_class_nan: bool = True  # mean per-class accuracy NaN when a class has no sample
    caltech101_split: str = "dedup"  # ssl-transfer's train.txt at HEAD | with_duplicates
    # many-shot fine-tuning: lr in logspace(lr_lo, lr_hi, grid_size) (largest first) x
    # w in [0] + logspace(w_lo, w_hi, grid_size), weight_decay = w / lr
    grid_size: int = 4
    lr_lo: float = -4.0
    lr_hi: float = -1.0
    w_lo: float = -6.0
    w_hi: float = -3.0
    steps: int = 5000  # SGD steps per run (cosine over them, stepped every step)
    momentum: float = 0.9  # Nesterov
    augment: bool = True  # RandomResizedCrop(bicubic) + flip for training (--no-da: false)
    checkpoint_every: int = 500  # steps between resumable checkpoints of a run
    log_every: int = 20  # steps between a run's training points (train_runs/<run>/; ours)
    # few-shot
    n_way: int = 5
    shots: tuple[int, ...] = (5, 20, 50)
    n_query: int = 15
    episodes: int = 600
    smoke: bool = False


MANYSHOT_SOURCE = (
    "ssl-transfer linear.py (HEAD 416913f): frozen ResNet-50 in eval mode, 2048-d pooled "
    "layer4, Resize(224, bicubic) + CenterCrop(224) + ImageNet normalisation, batch 64; "
    "LogisticRegression(lbfgs, multinomial, warm_start) over torch.logspace(-6, 5, 45) "
    "weight decays with C = 1/wd, strict improvement on val, refit on trainval, test metric"
)
FINETUNE_SOURCE = (
    "ssl-transfer finetune.py (HEAD 416913f): ResNet-50 (BatchNorm in train mode) + "
    "Linear(2048, K), SGD Nesterov momentum 0.9, CosineAnnealingLR over 5000 steps of batch "
    "64, RandomResizedCrop(224, bicubic) + flip; 20 runs lr {0.1, 0.01, 0.001, 0.0001} x "
    "w {0, 1e-6, 1e-5, 1e-4, 1e-3}, weight_decay = w / lr, train -> val (strict "
    "improvement), the best retrained on trainval -> test; BCE for VOC2007"
)
FEWSHOT_SOURCE = (
    "ssl-transfer few_shot.py (HEAD 416913f): ProtoNet on the frozen ResNet-50 in eval mode "
    "(pooled layer4), Resize((257, 257)) + CenterCrop(224) + ImageNet normalisation; all "
    "splits pooled; 5-way, 5 / 20 / 50 shots, 15 queries, 600 episodes; mean accuracy "
    "+- 1.96 std / sqrt(600)"
)
REC_PROTOCOLS = {
    "manyshot_linear": RecProtocol("manyshot_linear", "manyshot_linear", MANYSHOT_SOURCE),
    "manyshot_finetune": RecProtocol("manyshot_finetune", "manyshot_finetune", FINETUNE_SOURCE),
    "fewshot": RecProtocol("fewshot", "fewshot", FEWSHOT_SOURCE),
}
# The smoke variants: the synthetic twins, CPU. Their val splits have a few images per
# class, so a class can be missing from one, which ssl-transfer's per-class mean turns into
# NaN; they have 4 classes and 10-15 images per class (4-way, 1 / 5 shots, 5 queries).
_SMOKE_COMMON = dict(image_size=64, batch_size=32, workers=0, absent_class_nan=False,
                     smoke=True)  # fmt: skip
_SMOKE = {
    "manyshot_linear": {},
    "manyshot_finetune": dict(batch_size=8, grid_size=2, steps=3, checkpoint_every=2),
    "fewshot": dict(n_way=4, shots=(1, 5), n_query=5),
}
_FIXED = {"name", "kind", "source", "smoke"}
_CHOICES = {
    "solver": SOLVERS,
    "caltech101_split": CALTECH_SPLITS,
    "features_dtype": FEATURE_DTYPES,
}


def resolve(name: str, smoke: bool, overrides: list[str] | None = None) -> RecProtocol:
    """The protocol ``name`` (its smoke variant when asked) with ``KEY VALUE`` overrides."""
    if name not in REC_PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; choose from {', '.join(REC_PROTOCOLS)}")
    p = REC_PROTOCOLS[name]
    if smoke:
        p = dataclasses.replace(p, name=f"{p.name}_smoke", **{**_SMOKE_COMMON, **_SMOKE[p.kind]})
    p = apply_overrides(p, overrides, _FIXED, _CHOICES)
    if p.kind == "fewshot" and (p.n_way < 2 or min(p.shots) < 1 or p.n_query < 1):
        raise ConfigError(f"{p.name}: n_way >= 2, shots >= 1 and n_query >= 1 are needed")
    return p


def finetune_grid(p: RecProtocol) -> list[tuple[float, float]]:
    """ssl-transfer's (lr, weight_decay) runs in its order: lr from the largest, then
    w = 0, 1e-6 .. 1e-3, with weight_decay = w / lr (computed in float32, as torch)."""
    import torch

    lrs = torch.logspace(p.lr_lo, p.lr_hi, p.grid_size).flip(dims=(0,))
    ws = torch.cat([torch.zeros(1), torch.logspace(p.w_lo, p.w_hi, p.grid_size)])
    return [(lr.item(), (w / lr).item()) for lr in lrs for w in ws]
