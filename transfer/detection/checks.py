"""Bad images and labels in a detection protocol's data, caught before or during training.

- ``check_datasets(cfg)`` (the runner's plan, before any seed starts): every VOC-style
  annotation names one of the protocol's classes (else one line naming the XML file and the
  class), and every evaluation image decodes (else one line naming the file): a seed would
  otherwise die at its final evaluation, hours in, and again on resume.
- ``SkippingMapper``: detectron2's ``DatasetMapper`` for training that skips an unreadable
  image (detectron2's ``MapDataset`` then draws another one), appends it to the seed's
  ``skipped_images.txt`` and stops the seed once more than ``SUITE.MAX_BAD_FRAC`` of the
  images a loader worker has seen (at least ``MIN_SEEN``) were unreadable.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from PIL import Image

from common.badimages import MIN_SEEN, UNREADABLE, SkippedLog, skipped_images
from common.cli import BadInput

__all__ = ["MIN_SEEN", "SkippingMapper", "check_datasets", "skipped_images", "unreadable"]


def _voc_foreign_class(name: str) -> tuple[Path, str] | None:
    """(annotation file, class) of the first object outside the dataset's classes."""
    meta = MetadataCatalog.get(name)
    classes = set(meta.thing_classes)
    root = Path(meta.dirname)
    ids = (root / "ImageSets" / "Main" / f"{meta.split}.txt").read_text().split()
    for file_id in ids:
        xml = root / "Annotations" / f"{file_id}.xml"
        for obj in ET.parse(xml).findall("object"):
            cls = obj.find("name").text
            if cls not in classes:
                return xml, cls
    return None


def _load(name: str) -> list[dict]:
    meta = MetadataCatalog.get(name)
    try:
        return DatasetCatalog.get(name)
    except ValueError:
        if getattr(meta, "evaluator_type", "") != "pascal_voc":
            raise
        found = _voc_foreign_class(name)
        if found is None:
            raise
        xml, cls = found
        raise BadInput(
            f"{xml}: object class {cls!r} is not one of the {len(meta.thing_classes)} classes "
            f"of {name}; fix the annotation or drop the image from ImageSets/Main/"
            f"{meta.split}.txt"
        ) from None


def unreadable(path: str) -> str | None:
    """The error of decoding ``path`` (JPEGs at 1/8 scale: the whole stream is still
    read), or None when it decodes."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except UNREADABLE as e:
        return f"{type(e).__name__}: {e}"
    return None


def check_datasets(cfg) -> None:
    """Raise ``BadInput`` (one line) for a foreign class in any split's annotations or an
    unreadable evaluation image."""
    for name in cfg.DATASETS.TRAIN:
        if getattr(MetadataCatalog.get(name), "evaluator_type", "") == "pascal_voc":
            _load(name)
    for name in cfg.DATASETS.TEST:
        for d in _load(name):
            err = unreadable(d["file_name"])
            if err:
                raise BadInput(
                    f"{d['file_name']}: unreadable evaluation image of {name} ({err}); "
                    "every test image is scored: replace or re-download the file"
                )


class SkippingMapper(DatasetMapper):
    """``DatasetMapper(cfg, is_train=True)`` that skips unreadable training images."""

    def __init__(self, cfg, log_dir: str, max_frac: float):
        super().__init__(cfg, is_train=True)
        self.skipped = SkippedLog(log_dir, max_frac)

    def __call__(self, dataset_dict):
        self.skipped.seen += 1
        try:
            return super().__call__(dataset_dict)
        except UNREADABLE as e:
            self.skipped.record(dataset_dict["file_name"], e)
            return None  # detectron2's MapDataset draws another image
