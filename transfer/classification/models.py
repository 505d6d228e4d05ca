"""Backbone and heads of the classification protocols.

The backbone is the shared ``transfer.backbone.FeatureResNet`` (``load_backbone`` fills it
from any checkpoint the converter accepts and proves every tensor arrived). Heads:

- ``LinearHead``: global average pool of res5 -> Linear (+ BatchNorm1d for CARE's protocol);
- ``MultiHead``: one (pool, BatchNorm2d without affine, Linear) per stage (OpenSelfSup's
  MultiClsHead with MultiPooling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.archs import Arch
from common.cli import ConfigError
from common.syncnorm import synchronise_norms
from transfer.backbone import (  # noqa: F401 - the family's names for the shared backbone
    STAGES,
    FeatureResNet,
    load_backbone,
    stage_channels,
    verify_loaded,
)

# OpenSelfSup openselfsup/models/utils/multi_pooling.py, for ResNet-50 at 224 px:
# AvgPool2d (kernel, stride, padding) per stage, and the adaptive output sizes.
POOL_PARAMS_R50 = {
    "conv1": (10, 10, 4),
    "res2": (16, 8, 0),
    "res3": (13, 5, 0),
    "res4": (8, 3, 0),
    "res5": (6, 1, 0),
}
POOL_SIZES_R50 = {"conv1": 12, "res2": 6, "res3": 4, "res4": 3, "res5": 2}


class LinearHead(nn.Module):
    """Pooled res5 (N, C) -> Linear(C, classes) [-> BatchNorm1d(classes)]; N(0, 0.01), 0."""

    def __init__(self, dim: int, classes: int, bn: bool):
        super().__init__()
        self.fc = nn.Linear(dim, classes)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)
        self.bn = nn.BatchNorm1d(classes) if bn else None

    def forward(self, feats: dict) -> dict:
        x = torch.flatten(F.adaptive_avg_pool2d(feats["res5"], 1), 1)
        x = self.fc(x)
        return {"res5": self.bn(x) if self.bn is not None else x}


class MultiHead(nn.Module):
    """Per stage: AvgPool2d (OpenSelfSup's params) or AdaptiveAvgPool2d (its sizes), then
    BatchNorm2d(C, affine=False, momentum=0.1), flatten, Linear(C * s * s, classes)."""

    def __init__(self, arch: Arch, stages: tuple[str, ...], classes: int, pool: str, crop: int):
        super().__init__()
        channels = stage_channels(arch)
        self.stages = stages
        self.pools, self.norms, self.fcs = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        for s in stages:
            if pool == "specified":
                k, st, pad = POOL_PARAMS_R50[s]
                self.pools[s] = nn.AvgPool2d(k, st, pad)
            else:
                self.pools[s] = nn.AdaptiveAvgPool2d(POOL_SIZES_R50[s])
            self.norms[s] = nn.BatchNorm2d(channels[s], affine=False, momentum=0.1)
            dim = channels[s] * pooled_side(s, pool, crop) ** 2
            self.fcs[s] = nn.Linear(dim, classes)
            nn.init.normal_(self.fcs[s].weight, 0.0, 0.01)
            nn.init.zeros_(self.fcs[s].bias)

    def forward(self, feats: dict) -> dict:
        return {
            s: self.fcs[s](torch.flatten(self.norms[s](self.pools[s](feats[s])), 1))
            for s in self.stages
        }


def stage_side(stage: str, crop: int) -> int:
    """Side of a stage's feature map for a ``crop``-pixel input (torchvision ResNet)."""
    side = (crop + 2 * 3 - 7) // 2 + 1  # conv1, stride 2
    if stage == "conv1":
        return side
    side = (side + 2 - 3) // 2 + 1  # max-pool, stride 2
    for _ in range(STAGES.index(stage) - 1):  # res3..res5 halve (3x3 conv, stride 2, pad 1)
        side = (side + 2 - 3) // 2 + 1
    return side


def pooled_side(stage: str, pool: str, crop: int) -> int:
    if pool == "adaptive":
        return POOL_SIZES_R50[stage]
    k, st, pad = POOL_PARAMS_R50[stage]
    side = (stage_side(stage, crop) + 2 * pad - k) // st + 1
    if side < 1:
        raise ConfigError(
            f"pool 'specified' needs crops near 224 px (stage {stage} is "
            f"{stage_side(stage, crop)} px at crop {crop}); use pool adaptive"
        )
    return side


def feature_dims(arch: Arch, stages: tuple[str, ...], pool: str, crop: int) -> dict[str, int]:
    """The flattened feature size per stage that each Linear of ``MultiHead`` receives."""
    ch = stage_channels(arch)
    return {s: ch[s] * pooled_side(s, pool, crop) ** 2 for s in stages}


def synchronise_head_bn(head: nn.Module, cuda: bool) -> nn.Module:
    """The head with every BatchNorm2d computing global-batch statistics under DDP:
    ``nn.SyncBatchNorm`` on CUDA, ``GlobalBatchNorm`` on CPU (state copied)."""
    return synchronise_norms(head, cuda)
