"""The one table of ResNet architectures: names, torchvision builders, block layouts.

Pretraining builds from it (``--arch``), the converter recognises a checkpoint's body by its
layout, and the detection runners derive Detectron2's depth / width from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.cli import ConfigError


@dataclass(frozen=True)
class Arch:
    """One ResNet variant.

    ``key`` is the ``--arch`` value (``resnet50``), ``name`` the display name recorded in
    conversions and tables (``ResNet-50``), ``torchvision`` the builder in
    ``torchvision.models``, ``blocks`` the residual blocks per stage (res2..res5).
    """

    key: str
    name: str
    torchvision: str
    depth: int
    blocks: tuple[int, int, int, int]
    bottleneck: bool
    width_per_group: int = 64

    @property
    def feature_dim(self) -> int:
        """Channels of res5 (the pooled feature): 2048 (x2: 2048 too) or 512 (basic)."""
        return 2048 if self.bottleneck else 512

    @property
    def res2_channels(self) -> int:
        return 256 if self.bottleneck else 64


ARCHS: dict[str, Arch] = {
    a.key: a
    for a in (
        Arch("resnet18", "ResNet-18", "resnet18", 18, (2, 2, 2, 2), False),
        Arch("resnet34", "ResNet-34", "resnet34", 34, (3, 4, 6, 3), False),
        Arch("resnet50", "ResNet-50", "resnet50", 50, (3, 4, 6, 3), True),
        Arch("resnet101", "ResNet-101", "resnet101", 101, (3, 4, 23, 3), True),
        Arch("resnet152", "ResNet-152", "resnet152", 152, (3, 8, 36, 3), True),
        Arch("resnet50x2", "ResNet-50 x2", "wide_resnet50_2", 50, (3, 4, 6, 3), True, 128),
    )
}


def get_arch(key: str) -> Arch:
    """The architecture of an ``--arch`` value; a clear error for an unknown one."""
    if key not in ARCHS:
        raise ConfigError(f"unknown arch {key!r}; choose from {', '.join(ARCHS)}")
    return ARCHS[key]


def arch_by_name(name: str) -> Arch:
    """The architecture of a display name (``ResNet-50 x2``), as conversions record it."""
    for a in ARCHS.values():
        if a.name == name:
            return a
    raise ConfigError(
        f"unknown architecture {name!r}; known: {', '.join(a.name for a in ARCHS.values())}"
    )


def arch_from_layout(blocks: tuple[int, ...], bottleneck: bool, width: int) -> Arch | None:
    """The architecture whose layout contains ``blocks`` with the fewest blocks to spare.

    A truncated body matches the smallest layout that contains it (so the completeness
    check can name what is missing); None when no layout fits.
    """
    fits = [
        (sum(a.blocks) - sum(blocks), a)
        for a in ARCHS.values()
        if a.bottleneck == bottleneck
        and a.width_per_group == (width if bottleneck else 64)
        and all(x <= y for x, y in zip(blocks, a.blocks))
    ]
    return min(fits, key=lambda t: t[0])[1] if fits else None
