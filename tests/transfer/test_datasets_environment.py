"""Dataset registration and checks, the environment record, COCO evaluation backends."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from transfer.detection.datasets import SHAPES_SPLITS, check_real, register_shapes
from transfer.environment import describe_detectron2, environment_record


def test_missing_real_data_names_every_path(tmp_path):
    (tmp_path / "VOC2007" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as e:
        check_real(["voc_2007_trainval", "coco_2017_val"], tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "VOC2007" / "Annotations") in msg
    assert str(tmp_path / "coco" / "annotations" / "instances_val2017.json") in msg
    assert str(tmp_path / "VOC2007" / "JPEGImages") not in msg  # present: not listed
    assert "--dataset synthetic" in msg


def test_shapes_register_under_detectron2_names(shapes_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = register_shapes(shapes_root)
    assert names == list(SHAPES_SPLITS)
    voc = DatasetCatalog.get("shapes_voc_2007_test")
    assert voc and all(r["annotations"] for r in voc)
    assert MetadataCatalog.get("shapes_voc_2007_test").evaluator_type == "pascal_voc"
    coco = DatasetCatalog.get("shapes_coco_2017_val")
    assert coco and all("segmentation" in a for r in coco for a in r["annotations"])
    assert register_shapes(shapes_root) == names  # re-registering replaces, no error


def test_environment_record_is_json_and_names_detectron2():
    rec = environment_record()
    json.dumps(rec)
    assert rec["torch"] and rec["detectron2"]["version"].startswith("0.6")
    assert "pycocotools" in rec["packages"] and "faster-coco-eval" in rec["packages"]
    assert describe_detectron2().startswith("detectron2 0.6 (")


def _fake_results(coco_gt) -> list[dict]:
    """Each ground-truth object found once, jittered, plus one wrong-class detection."""
    rng = np.random.default_rng(0)
    out = []
    for a in coco_gt.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        for right in (True, False):
            j = rng.normal(0, 2, 4)
            out.append(
                {
                    "image_id": a["image_id"],
                    "score": float(rng.random()),
                    "category_id": a["category_id"] if right else 1 + a["category_id"] % 6,
                    "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])],
                    "segmentation": coco_gt.annToRLE(a),
                }
            )
    return out


def test_faster_coco_eval_gives_pycocotools_numbers(shapes_root):
    pytest.importorskip("faster_coco_eval")
    from pycocotools.coco import COCO

    from transfer.detection.evaluation import evaluate_on_coco

    gt = COCO(str(shapes_root / "coco" / "annotations" / "instances_val2017.json"))
    results = _fake_results(gt)
    for iou in ("bbox", "segm"):
        ref = evaluate_on_coco(gt, copy.deepcopy(results), iou, "pycocotools").stats
        fast = evaluate_on_coco(gt, copy.deepcopy(results), iou, "faster-coco-eval").stats
        assert 0.05 < ref[0] < 0.95, ref  # a non-trivial AP
        np.testing.assert_allclose(np.asarray(fast[:12]), ref[:12], atol=1e-9)
