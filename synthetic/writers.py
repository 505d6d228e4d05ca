"""Write synthetic scenes in the real on-disk layouts: ImageFolder, Pascal VOC, COCO.

Each image has its own random stream, ``np.random.default_rng([seed, split, index])``, so
generating twice with the same seed gives byte-identical files, and any subset is stable.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry import box

from common.atomic import atomic_write_text
from synthetic.render import CLASSES, Scene, place_shape, render_scene

JPEG_QUALITY = 92
# VOC's `difficult` flag: objects that are small or mostly hidden (as annotators marked them).
DIFFICULT_MIN_SIDE = 10
DIFFICULT_MIN_VISIBLE = 0.7

_SPLIT_CODES = {
    "train": 1,
    "val": 2,
    "trainval": 3,
    "test": 4,
    "train2017": 5,
    "val2017": 6,
    "voc2012_trainval": 7,
}


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


def _size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """(width, height): each side uniform in [0.75 size, size], so aspect ratios vary."""
    w, h = rng.integers(int(0.75 * size), size + 1, size=2)
    return int(w), int(h)


def _detection_scene(rng: np.random.Generator, size: int, max_objects: int) -> Scene:
    w, h = _size(rng, size)
    n = int(rng.integers(1, max_objects + 1))
    cats = [int(c) for c in rng.integers(len(CLASSES), size=n)]
    return render_scene(rng, w, h, cats, scale=(0.2, 0.5))


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=JPEG_QUALITY)


def write_imagefolder(
    root: Path, seed: int, size: int, per_class: dict[str, int], distractors: int = 2
) -> None:
    """``root/{train,val}/<class>/<class>_<i>.jpg``: one large object of the class, drawn
    first, and up to ``distractors`` smaller objects of other classes partly in front of it.

    Args:
        per_class: images per class for each split, e.g. {"train": 20, "val": 10}.
    """
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            for i in range(n):
                rng = _rng(seed, split, c * 100_000 + i)
                n_other = rng.integers(0, distractors + 1)
                others = [int(k) for k in rng.integers(len(CLASSES), size=n_other)]
                others = [k for k in others if k != c]
                w, h = _size(rng, size)
                scene = render_scene(
                    rng, w, h, [c] + others, scale=[(0.45, 0.8)] + [(0.15, 0.3)] * len(others)
                )
                image = scene.image
                _save_jpeg(image, root / split / name / f"{name}_{i:05d}.jpg")


def write_silhouettes(root: Path, seed: int, size: int, per_class: dict[str, int]) -> None:
    """``root/{train,val}/<class>/<class>_<i>.jpg``: one upright light shape on a dark
    background, of random position, size and stretch, with mild pixel noise.

    Grey levels and orientation are the same in every image, so what tells two images
    apart after random crops is the shape alone: data on which a self-supervised method's
    kNN accuracy should rise above random initialisation within a few hundred steps
    (the learning-signal tests). Each side is ``size`` pixels.
    """
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            for i in range(n):
                rng = _rng(seed, split, c * 100_000 + i)
                _save_jpeg(silhouette(rng, c, size), root / split / name / f"{name}_{i:05d}.jpg")


def silhouette(rng: np.random.Generator, c: int, size: int) -> np.ndarray:
    """(size, size, 3) uint8: shape ``c`` of ``CLASSES``, light on dark, with pixel noise."""
    while True:  # keep at least 85% of the shape inside the frame
        poly = place_shape(rng, c, size, size, (0.5, 0.85), (0.2, 0.8), rotate=False)
        if poly.intersection(box(0, 0, size, size)).area > 0.85 * poly.area:
            break
    canvas = Image.new("L", (size, size), 26)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in poly.exterior.coords], fill=230)
    noisy = np.asarray(canvas, np.float32) + rng.normal(0, 6, (size, size))
    grey = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


# The synthetic stand-ins of SimCLR's subset files: the same names and format, fractions
# large enough to train on a few images per class.
LABEL_SUBSETS = {"1percent": 0.25, "10percent": 0.5}


def write_label_subsets(root: Path, fractions: dict[str, float] | None = None) -> list[Path]:
    """``root/<name>.txt`` for each subset (SimCLR's format: one train image file name per
    line), the first ``fraction`` of each class's sorted images (at least one); existing
    files are kept. ``root`` is an ImageFolder root holding ``train/<class>/``."""
    written = []
    for name, frac in (fractions or LABEL_SUBSETS).items():
        path = root / f"{name}.txt"
        written.append(path)
        if path.exists():
            continue
        lines = []
        for folder in sorted(p for p in (root / "train").iterdir() if p.is_dir()):
            files = sorted(f.name for f in folder.iterdir() if f.is_file())
            lines += files[: max(1, round(frac * len(files)))]
        atomic_write_text(path, "\n".join(lines) + "\n")  # a second launcher may read it
    return written


def _voc_xml(file_id: str, folder: str, scene: Scene) -> ET.Element:
    h, w = scene.image.shape[:2]
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = folder
    ET.SubElement(ann, "filename").text = f"{file_id}.jpg"
    src = ET.SubElement(ann, "source")
    ET.SubElement(src, "database").text = "synthetic shapes"
    size = ET.SubElement(ann, "size")
    for tag, val in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(val)
    ET.SubElement(ann, "segmented").text = "0"
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box_xyxy()
        difficult = (
            min(x1 - x0, y1 - y0) < DIFFICULT_MIN_SIDE
            or obj.visible_fraction < DIFFICULT_MIN_VISIBLE
        )
        o = ET.SubElement(ann, "object")
        ET.SubElement(o, "name").text = obj.name
        ET.SubElement(o, "pose").text = "Unspecified"
        ET.SubElement(o, "truncated").text = str(int(obj.truncated))
        ET.SubElement(o, "difficult").text = str(int(difficult))
        bb = ET.SubElement(o, "bndbox")
        # VOC boxes are 1-based inclusive pixels; detectron2 subtracts 1 from xmin/ymin.
        for tag, val in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, tag).text = str(val)
    ET.indent(ann)
    return ann


def write_voc(
    root: Path, year: int, seed: int, size: int, splits: dict[str, int], max_objects: int = 4
) -> None:
    """``root/VOC<year>/{JPEGImages,Annotations,ImageSets/Main}`` as in the VOC devkit.

    Args:
        splits: images per split, e.g. {"trainval": 24, "test": 16} (ids are disjoint).
    """
    base = root / f"VOC{year}"
    (base / "Annotations").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    offset = 0
    for split, n in splits.items():
        ids, present = [], {name: [] for name in CLASSES}
        code = split if year == 2007 else "voc2012_trainval"
        for i in range(n):
            file_id = f"{offset + i + 1:06d}" if year == 2007 else f"{year}_{offset + i + 1:06d}"
            scene = _detection_scene(_rng(seed + year, code, i), size, max_objects)
            _save_jpeg(scene.image, base / "JPEGImages" / f"{file_id}.jpg")
            xml = _voc_xml(file_id, f"VOC{year}", scene)
            ET.ElementTree(xml).write(base / "Annotations" / f"{file_id}.xml")
            ids.append(file_id)
            names = {o.name for o in scene.objects}
            for name in CLASSES:
                present[name].append((file_id, 1 if name in names else -1))
        offset += n
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for name, rows in present.items():
            text = "".join(f"{fid} {flag:2d}\n" for fid, flag in rows)
            (base / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text(text)


def write_coco(
    root: Path, seed: int, size: int, splits: dict[str, int], max_objects: int = 4
) -> None:
    """``root/coco/{train2017,val2017}/*.jpg`` and ``annotations/instances_<split>.json``
    with polygon segmentations (the visible region), exact area, bbox and iscrowd.

    Args:
        splits: images per split, e.g. {"train2017": 32, "val2017": 16}.
    """
    base = root / "coco"
    categories = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASSES)]
    ann_id = 1
    for split, n in splits.items():
        images, annotations = [], []
        for i in range(n):
            scene = _detection_scene(_rng(seed, split, i), size, max_objects)
            h, w = scene.image.shape[:2]
            image_id = i + 1
            file_name = f"{image_id:012d}.jpg"
            _save_jpeg(scene.image, base / split / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            for obj in scene.objects:
                x0, y0, x1, y1 = obj.visible.bounds
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": obj.category + 1,
                        "segmentation": obj.polygons(),
                        "area": round(float(obj.visible.area), 2),
                        "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                        "iscrowd": 0,
                    }
                )
                ann_id += 1
        doc = {
            "info": {"description": "synthetic shapes, COCO layout", "version": "1.0"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        out = base / "annotations" / f"instances_{split}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc))
