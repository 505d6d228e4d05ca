"""Dataset registration: real VOC / COCO under ``$DETECTRON2_DATASETS``, or synthetic shapes.

Real data uses the names detectron2 registers itself (``voc_2007_trainval``,
``coco_2017_train``...), read from ``$DETECTRON2_DATASETS/{VOC2007,VOC2012,coco}``. The
synthetic shapes tree (``synthetic.generate``) is registered through detectron2's own
``register_pascal_voc`` / ``register_coco_instances`` as ``shapes_voc_2007_trainval``,
``shapes_coco_2017_train``..., with its six classes.
"""

from __future__ import annotations

import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.pascal_voc import register_pascal_voc

from common.cli import InputNotFound
from synthetic import CLASSES

# name -> (kind, path parts under the root, VOC split / COCO annotation file)
SHAPES_SPLITS: dict[str, tuple[str, str, str]] = {
    "shapes_voc_2007_trainval": ("voc", "VOC2007", "trainval"),
    "shapes_voc_2012_trainval": ("voc", "VOC2012", "trainval"),
    "shapes_voc_2007_test": ("voc", "VOC2007", "test"),
    "shapes_coco_2017_train": (
        "coco",
        "coco/train2017",
        "coco/annotations/instances_train2017.json",
    ),
    "shapes_coco_2017_val": ("coco", "coco/val2017", "coco/annotations/instances_val2017.json"),
}

# Files that must exist for each real dataset name the protocols use.
REAL_REQUIREMENTS: dict[str, list[str]] = {
    "voc_2007_trainval": [
        "VOC2007/JPEGImages",
        "VOC2007/Annotations",
        "VOC2007/ImageSets/Main/trainval.txt",
    ],
    "voc_2012_trainval": [
        "VOC2012/JPEGImages",
        "VOC2012/Annotations",
        "VOC2012/ImageSets/Main/trainval.txt",
    ],
    "voc_2007_test": [
        "VOC2007/JPEGImages",
        "VOC2007/Annotations",
        "VOC2007/ImageSets/Main/test.txt",
    ],
    "coco_2017_train": ["coco/train2017", "coco/annotations/instances_train2017.json"],
    "coco_2017_val": ["coco/val2017", "coco/annotations/instances_val2017.json"],
}


def datasets_root() -> Path:
    """``$DETECTRON2_DATASETS`` (detectron2's own default: ./datasets)."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def register_shapes(root: str | Path) -> list[str]:
    """Register the synthetic splits found under ``root``; re-registering replaces them."""
    root = Path(root)
    names = []
    for name, (kind, where, split) in SHAPES_SPLITS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        if kind == "voc":
            year = int(where[-4:])
            register_pascal_voc(name, str(root / where), split, year, class_names=list(CLASSES))
            MetadataCatalog.get(name).evaluator_type = "pascal_voc"
        else:
            register_coco_instances(name, {}, str(root / split), str(root / where))
        names.append(name)
    return names


def check_real(names: list[str], root: str | Path | None = None) -> None:
    """Raise ``InputNotFound`` naming every missing path (and the synthetic alternative)."""
    root = Path(root) if root is not None else datasets_root()
    missing = [
        str(root / rel)
        for n in names
        for rel in REAL_REQUIREMENTS.get(n, [])
        if not (root / rel).exists()
    ]
    if missing:
        lines = "\n  ".join(dict.fromkeys(missing))
        raise InputNotFound(
            f"real dataset(s) {', '.join(names)} not found under DETECTRON2_DATASETS={root}. "
            f"Missing:\n  {lines}\nSet DETECTRON2_DATASETS to the folder holding VOC2007/, "
            "VOC2012/ and coco/, or run on the built-in data with --dataset synthetic."
        )
