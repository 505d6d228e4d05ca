"""The synthetic shapes trees: deterministic, and read unchanged by the real loaders."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from synthetic import CLASSES, ShapesSpec, generate
from synthetic.writers import DIFFICULT_MIN_SIDE, DIFFICULT_MIN_VISIBLE, _detection_scene, _rng

TINY = ShapesSpec(
    seed=3,
    size=96,
    imagefolder={"train": 2, "val": 1},
    voc2007={"trainval": 3, "test": 2},
    voc2012={"trainval": 2},
    coco={"train2017": 3, "val2017": 2},
)


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_identical_files(tmp_path):
    a = generate(tmp_path / "a", TINY)
    b = generate(tmp_path / "b", TINY)
    files = _files(a)
    assert files == _files(b) and len(files) > 40
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert mismatch == [] and errors == []
    c = generate(tmp_path / "c", ShapesSpec(**{**TINY.__dict__, "seed": 4}))
    jpg = "VOC2007/JPEGImages/000001.jpg"
    assert (a / jpg).read_bytes() != (c / jpg).read_bytes()


def test_generate_reuses_and_refuses_foreign_folder(tmp_path):
    root = generate(tmp_path / "s", TINY)
    stamp_time = (root / "shapes.json").stat().st_mtime_ns
    generate(root, TINY)  # same spec: reused, nothing rewritten
    assert (root / "shapes.json").stat().st_mtime_ns == stamp_time
    foreign = tmp_path / "real"
    foreign.mkdir()
    (foreign / "VOC2007").mkdir()
    with pytest.raises(FileExistsError, match="not empty"):
        generate(foreign, TINY)


def test_imagefolder_reads_with_torchvision(shapes_root):
    from torchvision.datasets import ImageFolder

    spec = ShapesSpec()
    for split, n in spec.imagefolder.items():
        ds = ImageFolder(str(shapes_root / "imagefolder" / split))
        assert ds.classes == sorted(CLASSES)
        assert len(ds) == n * len(CLASSES)
        img, label = ds[0]
        assert img.mode == "RGB" and max(img.size) <= spec.size and label == 0


def test_voc_boxes_and_difficult_round_trip(registered_shapes):
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation.pascal_voc_evaluation import parse_rec

    spec = ShapesSpec()
    records = DatasetCatalog.get("shapes_voc_2007_test")
    assert len(records) == spec.voc2007["test"]
    n_difficult = 0
    for i, rec in enumerate(records):
        # test ids follow the trainval ones in VOC2007
        assert rec["image_id"] == f"{spec.voc2007['trainval'] + i + 1:06d}"
        scene = _detection_scene(_rng(spec.seed + 2007, "test", i), spec.size, spec.max_objects)
        assert (rec["height"], rec["width"]) == scene.image.shape[:2]
        got = [(a["category_id"], tuple(a["bbox"])) for a in rec["annotations"]]
        want = [(o.category, tuple(float(v) for v in o.box_xyxy())) for o in scene.objects]
        assert got == want
        # the boxes enclose the object's pixels in the drawn instance map (to 1 px)
        for k, obj in enumerate(scene.objects, start=1):
            ys, xs = np.nonzero(scene.instance_map == k)
            x0, y0, x1, y1 = obj.box_xyxy()
            assert abs(xs.min() - x0) <= 1 and abs(ys.min() - y0) <= 1
            assert abs(xs.max() + 1 - x1) <= 1 and abs(ys.max() + 1 - y1) <= 1
        # difficult flags, as detectron2's VOC evaluator reads them from the XML
        xml = registered_shapes / "VOC2007" / "Annotations" / f"{rec['image_id']}.xml"
        flags = [r["difficult"] for r in parse_rec(str(xml))]
        want_flags = [
            int(
                min(o.box_xyxy()[2] - o.box_xyxy()[0], o.box_xyxy()[3] - o.box_xyxy()[1])
                < DIFFICULT_MIN_SIDE
                or o.visible_fraction < DIFFICULT_MIN_VISIBLE
            )
            for o in scene.objects
        ]
        assert flags == want_flags
        n_difficult += sum(flags)
    assert n_difficult > 0, "the test split should exercise the difficult flag"


def test_voc_imagesets_match_annotations(shapes_root):
    main = shapes_root / "VOC2012" / "ImageSets" / "Main"
    ids = (main / "trainval.txt").read_text().split()
    assert ids[0] == "2012_000001" and len(ids) == ShapesSpec().voc2012["trainval"]
    for name in CLASSES:
        for line in (main / f"{name}_trainval.txt").read_text().splitlines():
            fid, flag = line.split()
            xml = (shapes_root / "VOC2012" / "Annotations" / f"{fid}.xml").read_text()
            assert (f"<name>{name}</name>" in xml) == (flag == "1")


def test_coco_masks_decode_to_drawn_shapes(shapes_root):
    from pycocotools.coco import COCO

    spec = ShapesSpec()
    coco = COCO(str(shapes_root / "coco" / "annotations" / "instances_val2017.json"))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(CLASSES)
    ious = []
    for i, image_id in enumerate(sorted(coco.getImgIds())):
        scene = _detection_scene(_rng(spec.seed, "val2017", i), spec.size, spec.max_objects)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(scene.objects)
        for k, (ann, obj) in enumerate(zip(anns, scene.objects), start=1):
            assert ann["category_id"] == obj.category + 1 and ann["iscrowd"] == 0
            mask = coco.annToMask(ann).astype(bool)
            drawn = scene.instance_map == k
            ious.append((mask & drawn).sum() / (mask | drawn).sum())
            assert abs(mask.sum() - ann["area"]) <= 0.1 * ann["area"] + 20
    assert min(ious) > 0.8 and np.mean(ious) > 0.9, ious


def test_coco_json_loads_in_detectron2(registered_shapes):
    from detectron2.data import DatasetCatalog

    records = DatasetCatalog.get("shapes_coco_2017_train")
    doc = json.loads((registered_shapes / "coco/annotations/instances_train2017.json").read_text())
    assert len(records) == len(doc["images"])
    n = sum(len(r["annotations"]) for r in records)
    assert n == len(doc["annotations"])
    assert all(len(p) >= 6 for r in records for a in r["annotations"] for p in a["segmentation"])


def test_silhouettes_layout_grey_levels_and_shape_masks(tmp_path):
    from PIL import Image

    from synthetic import write_silhouettes

    write_silhouettes(tmp_path / "a", 1, 48, {"train": 3, "val": 2})
    write_silhouettes(tmp_path / "b", 1, 48, {"train": 3, "val": 2})
    files = _files(tmp_path / "a")
    assert len(files) == len(CLASSES) * 5 and files == _files(tmp_path / "b")
    assert all(
        (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files
    )
    fills = {}
    for f in files:
        img = np.asarray(Image.open(tmp_path / "a" / f))
        assert img.shape == (48, 48, 3)
        assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() <= 3  # grey (JPEG chroma)
        shape = img[..., 0] > 128
        # background ~26 and shape ~230, whatever the image: only the shape varies
        assert abs(img[..., 0][~shape].mean() - 26) < 6 and abs(img[..., 0][shape].mean() - 230) < 6
        fills.setdefault(f.parts[1], []).append(shape.mean())
    # a cross covers less of its circumcircle than a circle: the class shows in the masks
    assert np.mean(fills["cross"]) < np.mean(fills["circle"])
