"""The recognition-transfer protocols as frozen configs, each citing where it comes from.

``REC_PROTOCOLS[name]`` is the full protocol; ``resolve(name, smoke, overrides)`` its CPU
variant on the synthetic twins when asked, with ``KEY VALUE`` overrides; the result is
recorded in each result folder's ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from common.cli import ConfigError
from transfer.overrides import apply_overrides

SOLVERS = ("sklearn", "torch")
CALTECH_SPLITS = ("dedup", "with_duplicates")


@dataclass(frozen=True)
class RecProtocol:
    """One recognition protocol (every field is recorded in the run's config.yaml)."""

    name: str
    kind: str  # manyshot_linear
    source: str
    image_size: int = 224  # Resize(image_size, bicubic) of the shorter side + CenterCrop
    normalise: bool = True  # ImageNet mean / std; false: none (ssl-transfer's --no-norm)
    batch_size: int = 64  # feature extraction
    workers: int = 4
    wd_lo: float = -6.0  # the weight decays: torch.logspace(wd_lo, wd_hi, wd_n), C = 1 / wd
    wd_hi: float = 5.0
    wd_n: int = 45
    max_iter: int = 100  # L-BFGS iterations per fit (scikit-learn's default)
    tol: float = 1e-4
    solver: str = "sklearn"  # sklearn (the reference) | torch (PyTorch L-BFGS, CPU or GPU)
    legacy_sklearn: bool = True  # reproduce the multinomial scikit-learn ssl-transfer ran
    absent_class_nan: bool = True  # mean per-class accuracy NaN when a class has no sample
    caltech101_split: str = "dedup"  # ssl-transfer's train.txt at HEAD | with_duplicates
    smoke: bool = False


MANYSHOT_SOURCE = (
    "ssl-transfer linear.py (HEAD 416913f): frozen ResNet-50 in eval mode, 2048-d pooled "
    "layer4, Resize(224, bicubic) + CenterCrop(224) + ImageNet normalisation, batch 64; "
    "LogisticRegression(lbfgs, multinomial, warm_start) over torch.logspace(-6, 5, 45) "
    "weight decays with C = 1/wd, strict improvement on val, refit on trainval, test metric"
)
REC_PROTOCOLS = {
    "manyshot_linear": RecProtocol("manyshot_linear", "manyshot_linear", MANYSHOT_SOURCE),
}
# The smoke variant: the synthetic twins, CPU. Their val splits have a few images per class,
# so a class can be missing from one, which ssl-transfer's per-class mean turns into NaN.
_SMOKE = dict(image_size=64, batch_size=32, workers=0, absent_class_nan=False, smoke=True)
_FIXED = {"name", "kind", "source", "smoke"}
_CHOICES = {"solver": SOLVERS, "caltech101_split": CALTECH_SPLITS}


def resolve(name: str, smoke: bool, overrides: list[str] | None = None) -> RecProtocol:
    """The protocol ``name`` (its smoke variant when asked) with ``KEY VALUE`` overrides."""
    if name not in REC_PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; choose from {', '.join(REC_PROTOCOLS)}")
    p = REC_PROTOCOLS[name]
    if smoke:
        p = dataclasses.replace(p, name=f"{p.name}_smoke", **_SMOKE)
    return apply_overrides(p, overrides, _FIXED, _CHOICES)
