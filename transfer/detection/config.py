"""The standard detection protocols as Detectron2 configs (``transfer/detection/configs``).

A protocol name is what results and tables refer to: MoCo's protocols as CARE uses them
(``voc_c4_24k``, ``coco_c4_1x``, ``coco_c4_2x``, ``coco_fpn_1x``; chained from
``Base-RCNN-SSL`` through the C4 / FPN bases) and the GSG paper's (``voc_fpn_144k``,
``coco_fpn_3x``; chained from detectron2's ``Base-RCNN-FPN``). ``smoke=True`` merges
``smoke.yaml`` after the protocol's file and swaps each dataset for its synthetic twin
(``shapes_<name>``): the same code paths on a CPU in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.cli import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SMOKE_OVERLAY = CONFIG_DIR / "smoke.yaml"
SYNTHETIC_PREFIX = "shapes_"  # transfer.detection.datasets.register_shapes registers these names

PROTOCOLS: dict[str, str] = {
    "voc_c4_24k": "VOC07+12 Faster R-CNN R50-C4, 24k iterations",
    "coco_c4_1x": "COCO Mask R-CNN R50-C4, 1x (90k iterations)",
    "coco_c4_2x": "COCO Mask R-CNN R50-C4, 2x (180k iterations)",
    "coco_fpn_1x": "COCO Mask R-CNN R50-FPN, 1x (90k iterations), SyncBN, 4conv1fc",
    "voc_fpn_144k": "VOC07+12 Faster R-CNN R50-FPN, 144k iterations at batch 2 (GSG, ssl-transfer)",
    "coco_fpn_3x": "COCO Mask R-CNN R50-FPN, 270k iterations (GSG; the detector is ours)",
}


def config_path(protocol: str) -> Path:
    """Path of the protocol's YAML."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return CONFIG_DIR / f"{protocol}.yaml"


def smoke_datasets(names: Sequence[str]) -> tuple[str, ...]:
    """The synthetic twins of real dataset names: ``voc_2007_test`` -> ``shapes_voc_2007_test``
    (what ``build_config(smoke=True)`` uses)."""
    return tuple(SYNTHETIC_PREFIX + n for n in names)


def build_config(
    protocol: str,
    smoke: bool = False,
    weights: str = "",
    opts: Sequence[str] = (),
    device: str | None = None,
    freeze: bool = True,
):
    """``get_cfg() -> merge_from_file [-> smoke overlay] -> merge_from_list(opts) -> freeze()``.

    Args:
        weights: a Detectron2 ``.pkl`` for MODEL.WEIGHTS ("" = random initialisation).
        opts: trailing ``KEY VALUE`` overrides, as detectron2's tools take them.
        device: "cpu" / "cuda"; default: cuda when available, else cpu.
    """
    import transfer.detection.modeling  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
    from transfer.d2engine import protocol_config

    files = [config_path(protocol)] + ([SMOKE_OVERLAY] if smoke else [])
    cfg = protocol_config(files, SYNTHETIC_PREFIX if smoke else None, weights, opts, device)
    if freeze:
        cfg.freeze()
    return cfg
