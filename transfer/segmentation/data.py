"""ADE20K in its release layout, registered with detectron2's catalog.

Real data: ``$DETECTRON2_DATASETS/ADEChallengeData2016/{images,annotations}/{training,
validation}``, under detectron2's own names ``ade20k_sem_seg_train`` / ``ade20k_sem_seg_val``
(images and ``annotations_detectron2``: label - 1, unlabelled 0 -> 255). ``prepare`` writes
``annotations_detectron2`` from the release's annotations when it is missing (what
detectron2's ``datasets/prepare_ade20k_sem_seg.py`` writes; into a ``.partial`` folder,
renamed when complete). The synthetic twin (``synthetic.ade20k``) is registered the same
way as ``synthetic_ade20k_sem_seg_{train,val}``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from common.badimages import UNREADABLE
from common.cli import BadInput, InputNotFound
from common.locks import waiting_lock

RELEASE = "ADEChallengeData2016"
SPLITS = {"train": "training", "val": "validation"}  # detectron2's name -> release folder
IGNORE = 255


def dataset_name(split: str, synthetic: bool = False) -> str:
    return f"{'synthetic_' if synthetic else ''}ade20k_sem_seg_{split}"


def datasets_root() -> Path:
    """``$DETECTRON2_DATASETS`` (detectron2's own default: ./datasets)."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def check_layout(root: str | Path) -> Path:
    """The release folder under ``root``, or ``InputNotFound`` naming the expected layout."""
    release = Path(root) / RELEASE
    need = [release / "images" / f for f in SPLITS.values()]
    need += [
        release / "annotations" / f
        for f in SPLITS.values()
        if not (release / "annotations_detectron2" / f).is_dir()
    ]
    missing = [str(p) for p in need if not p.is_dir()]
    if missing:
        raise InputNotFound(
            f"ADE20K not found: missing {', '.join(missing)}; expected {RELEASE}/images/"
            "{training,validation} and annotations/{training,validation} (the release zip) "
            "under DETECTRON2_DATASETS, or run on the built-in twin with --dataset synthetic"
        )
    return release


def convert_label(raw: np.ndarray) -> np.ndarray:
    """Release label (0 unlabelled, 1..150) -> detectron2's (0..149, 255 unlabelled)."""
    out = raw.astype(np.int16) - 1
    out[raw == 0] = IGNORE
    return out.astype(np.uint8)


def _convert_one(src: Path, dst: Path) -> None:
    try:
        with Image.open(src) as im:
            raw = np.asarray(im)
    except UNREADABLE as e:
        raise BadInput(
            f"{src}: this ADE20K label cannot be read ({type(e).__name__}: {e}); restore it "
            "from the release (ADEChallengeData2016.zip) and re-run (the labels already "
            "written are kept)"
        ) from None
    if raw.ndim != 2:
        raise BadInput(f"{src}: an ADE20K label must be a single-channel PNG, got {raw.shape}")
    Image.fromarray(convert_label(raw)).save(dst)


def prepare(root: str | Path, workers: int = 8) -> list[Path]:
    """Write ``annotations_detectron2/{training,validation}`` where missing; returns the
    folders written. A second launcher waits for the first (a lock beside the release)."""
    release = check_layout(root)
    written = []
    with waiting_lock(release.parent / f".{RELEASE}.prepare.lock"):
        for folder in SPLITS.values():
            final = release / "annotations_detectron2" / folder
            if final.is_dir():
                continue
            partial = final.with_name(f"{folder}.partial")
            partial.mkdir(parents=True, exist_ok=True)
            srcs = sorted((release / "annotations" / folder).glob("*.png"))
            if not srcs:
                raise InputNotFound(f"{release / 'annotations' / folder}: no PNG labels")
            todo = [s for s in srcs if not (partial / s.name).exists()]
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(_convert_one, todo, [partial / s.name for s in todo]))
            partial.rename(final)
            written.append(final)
    return written


def register(root: str | Path, synthetic: bool = False) -> list[str]:
    """Register the train / val splits under ``root`` (replacing earlier registrations of
    the names) with ADE20K's 150 classes; returns the names."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import load_sem_seg
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    release = Path(root) / RELEASE
    names = []
    for split, folder in SPLITS.items():
        name = dataset_name(split, synthetic)
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        images = str(release / "images" / folder)
        labels = str(release / "annotations_detectron2" / folder)
        DatasetCatalog.register(name, lambda x=images, y=labels: load_sem_seg(y, x, "png", "jpg"))
        MetadataCatalog.get(name).set(
            stuff_classes=ADE20K_SEM_SEG_CATEGORIES[:],
            image_root=images,
            sem_seg_root=labels,
            evaluator_type="sem_seg",
            ignore_label=IGNORE,
        )
        names.append(name)
    return names


def _size(d: dict) -> tuple[int, int] | Exception:
    """(height, width) of a record's image from its header (no decoding), or the error."""
    from common.badimages import UNREADABLE

    try:
        with Image.open(d["file_name"]) as im:
            return im.height, im.width
    except UNREADABLE as e:
        return e


def with_sizes(dicts: list[dict], workers: int = 16) -> tuple[list[dict], list[tuple]]:
    """(the records with "height" / "width" read from the image headers (the toolkit's odgt
    lists carry them; detectron2's ``load_sem_seg`` does not), [(record, error)] of those
    whose header cannot be read)."""
    todo = [d for d in dicts if "height" not in d or "width" not in d]
    bad = []
    with ThreadPoolExecutor(workers) as pool:
        for d, size in zip(todo, pool.map(_size, todo)):
            if isinstance(size, Exception):
                bad.append((d, size))
            else:
                d["height"], d["width"] = size
    broken = {id(d) for d, _ in bad}
    return [d for d in dicts if id(d) not in broken], bad


def dataset_dicts(name: str, strict: bool = True) -> tuple[list[dict], list[tuple]]:
    """detectron2's records of ``name`` with image sizes, and [(record, error)] of the
    unreadable ones: ``strict`` (evaluation: every image is scored) raises ``BadInput``
    naming the first; ``BadInput`` too when no readable pair is left."""
    from detectron2.data import DatasetCatalog

    dicts, bad = with_sizes([dict(d) for d in DatasetCatalog.get(name)])
    if bad and strict:
        d, e = bad[0]
        raise BadInput(
            f"{d['file_name']}: unreadable image of {name} ({type(e).__name__}: {e}); "
            "every validation image is scored: replace the file"
        )
    if not dicts:
        raise BadInput(f"dataset {name}: no readable image / label pairs found")
    return dicts, bad
