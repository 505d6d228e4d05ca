"""The one table of ResNet architectures: names, torchvision builders, block layouts, stems.

Pretraining builds from it (``--arch``), the converter recognises a checkpoint's body by its
layout (and its stem by conv1's kernel), and the detection runners derive Detectron2's depth /
width from it. ``build_resnet`` is the one place a ResNet body is constructed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torchvision
from torch import nn

from common.cli import ConfigError


@dataclass(frozen=True)
class Arch:
    """One ResNet variant.

    ``key`` is the ``--arch`` value (``resnet50``), ``name`` the display name recorded in
    conversions and tables (``ResNet-50``), ``torchvision`` the builder in
    ``torchvision.models``, ``blocks`` the residual blocks per stage (res2..res5).
    ``stem`` is ``"imagenet"`` (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool) or
    ``"cifar"`` (lightly's CIFAR ResNet: 3x3 stride-1 conv without bias, BN, no max-pool;
    its benchmark backbone also drops the stem ReLU: ``stem_relu`` False).
    """

    key: str
    name: str
    torchvision: str
    depth: int
    blocks: tuple[int, int, int, int]
    bottleneck: bool
    width_per_group: int = 64
    stem: str = "imagenet"

    @property
    def stem_relu(self) -> bool:
        """Whether the stem applies its ReLU by default (``--stem-relu`` overrides)."""
        return self.stem != "cifar"

    @property
    def stem_kernel(self) -> int:
        return 3 if self.stem == "cifar" else 7

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
        # lightly's ResNetGenerator("resnet-18") as its CIFAR benchmark uses it (GSG B.2)
        Arch(
            "resnet18_cifar", "ResNet-18 CIFAR", "resnet18", 18, (2, 2, 2, 2), False, stem="cifar"
        ),  # fmt: skip
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


def arch_from_layout(
    blocks: tuple[int, ...], bottleneck: bool, width: int, stem: str = "imagenet"
) -> Arch | None:
    """The architecture with ``stem`` whose layout contains ``blocks`` with the fewest blocks
    to spare.

    A truncated body matches the smallest layout that contains it (so the completeness
    check can name what is missing); None when no layout fits.
    """
    fits = [
        (sum(a.blocks) - sum(blocks), a)
        for a in ARCHS.values()
        if a.bottleneck == bottleneck
        and a.stem == stem
        and a.width_per_group == (width if bottleneck else 64)
        and all(x <= y for x, y in zip(blocks, a.blocks))
    ]
    return min(fits, key=lambda t: t[0])[1] if fits else None


def build_resnet(
    arch: Arch, zero_init_residual: bool = False, stem_relu: bool | None = None
) -> nn.Module:
    """A torchvision ResNet of ``arch`` (random init, classifier kept), its stem as the arch
    says: for the CIFAR stem conv1 is 3x3 stride 1 without bias, the max-pool an Identity,
    and the ReLU an Identity unless ``stem_relu`` (None: the arch's default). The CIFAR
    network keeps PyTorch's default init in every conv and BN (lightly's ResNet sets none),
    not torchvision's kaiming-normal (fan_out)."""
    net = getattr(torchvision.models, arch.torchvision)(
        weights=None, zero_init_residual=zero_init_residual
    )
    if arch.stem == "cifar":
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                m.reset_parameters()
        if zero_init_residual:  # after the reset: the SimSiam family's last BN gamma 0
            for m in net.modules():
                if isinstance(m, torchvision.models.resnet.BasicBlock):
                    nn.init.zeros_(m.bn2.weight)
    if not (arch.stem_relu if stem_relu is None else stem_relu):
        net.relu = nn.Identity()  # torchvision's blocks have ReLUs of their own
    return net
