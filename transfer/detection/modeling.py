"""Detectron2 components of the transfer protocols that detectron2 itself lacks.

Importing this module registers them (idempotently) in detectron2's registries.
"""

from __future__ import annotations

from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """Res5ROIHeads with a norm layer after res5 (MoCo detection protocol, docs/protocols.md).

    Self-supervised backbones are fine-tuned with normalisation everywhere; the C4 head's
    res5 output (N, 2048, 7, 7) gets one more ``MODEL.RESNETS.NORM`` layer before pooling.
    """

    @classmethod
    def _build_res5_block(cls, cfg):
        seq, out_channels = super()._build_res5_block(cfg)
        seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return seq, out_channels


if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:
    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)
