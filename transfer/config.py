"""The standard detection protocols as Detectron2 configs (``benchmarks/configs``).

A protocol name (``voc_c4_24k``, ``coco_c4_1x``, ``coco_c4_2x``, ``coco_fpn_1x``) is what
results and tables refer to; ``smoke=True`` picks its ``*_smoke.yaml`` variant (synthetic
shapes data, small images, a few iterations) that runs the same code paths on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import benchmarks

CONFIG_DIR = Path(benchmarks.__file__).resolve().parent / "configs"

PROTOCOLS: dict[str, str] = {
    "voc_c4_24k": "VOC07+12 Faster R-CNN R50-C4, 24k iterations",
    "coco_c4_1x": "COCO Mask R-CNN R50-C4, 1x (90k iterations)",
    "coco_c4_2x": "COCO Mask R-CNN R50-C4, 2x (180k iterations)",
    "coco_fpn_1x": "COCO Mask R-CNN R50-FPN, 1x (90k iterations), SyncBN, 4conv1fc",
}


def config_path(protocol: str, smoke: bool = False) -> Path:
    """Path of the protocol's YAML (or of its smoke variant)."""
    if protocol not in PROTOCOLS:
        raise KeyError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return CONFIG_DIR / f"{protocol}{'_smoke' if smoke else ''}.yaml"


def build_config(protocol: str, smoke: bool = False, weights: str = "",
                 opts: Sequence[str] = (), device: str | None = None, freeze: bool = True):
    """``get_cfg() -> merge_from_file -> merge_from_list(opts) -> freeze()``.

    Args:
        weights: a Detectron2 ``.pkl`` for MODEL.WEIGHTS ("" = random initialisation).
        opts: trailing ``KEY VALUE`` overrides, as detectron2's tools take them.
        device: "cpu" / "cuda"; default: cuda when available, else cpu.
    """
    import torch
    from detectron2.config import get_cfg

    import transfer.modeling  # noqa: F401  (registers Res5ROIHeadsExtraNorm)

    cfg = get_cfg()
    cfg.merge_from_file(str(config_path(protocol, smoke)))
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.merge_from_list(list(opts))
    if freeze:
        cfg.freeze()
    return cfg
