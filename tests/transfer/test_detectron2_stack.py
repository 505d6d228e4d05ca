"""Detectron2 as installed by `make install`: imports, clear errors, training, evaluators."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from transfer.environment import detectron2_info, environment_record

INFO = detectron2_info()
no_compiled_ops = pytest.mark.skipif(INFO["compiled_ops"], reason="this build has compiled ops")


def test_core_modules_import():
    import detectron2.evaluation
    import detectron2.layers
    import detectron2.modeling  # noqa: F401
    import PIL

    assert int(PIL.__version__.split(".")[0]) >= 10  # what the rebuild is patched for
    record = environment_record()
    assert record["detectron2"]["version"] == INFO["version"]
    assert record["packages"]["numpy"] == np.__version__


@pytest.mark.skipif(INFO["source"] != "PyPI rebuild", reason="a user's own detectron2 build")
def test_rebuild_has_no_removed_numpy_or_pillow_names():
    pkg = Path(INFO["path"])
    bad = re.compile(r"\bnp\.(bool|int|float|str|object)\b(?![_\w])|Image\.LINEAR|pkg_resources")
    offenders = [
        f"{p.relative_to(pkg)}:{i}"
        for p in pkg.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if bad.search(line)
    ]
    assert offenders == []


@no_compiled_ops
def test_compiled_op_raises_clear_error():
    from detectron2 import _C
    from detectron2.layers import nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[10.0, 10.0, 4.0, 4.0, 0.0]])
    with pytest.raises(RuntimeError, match=r"_C\.box_iou_rotated is a compiled op.*make install"):
        pairwise_iou_rotated(boxes, boxes)
    with pytest.raises(RuntimeError, match=r"_C\.nms_rotated is a compiled op"):
        nms_rotated(boxes, torch.ones(1), 0.5)
    assert isinstance(_C.deform_conv_forward, type(lambda: 0))  # importable, fails on call only


@no_compiled_ops
def test_coco_evaluator_falls_back_to_pycocotools(registered_shapes, tmp_path):
    from detectron2.evaluation import COCOEvaluator

    ev = COCOEvaluator("shapes_coco_2017_val", output_dir=str(tmp_path))
    assert ev._use_fast_impl is False


@pytest.mark.parametrize("protocol", ["voc_c4_24k", "coco_c4_1x", "coco_fpn_1x"])
def test_one_train_step_on_cpu(protocol, registered_shapes):
    from detectron2.data import build_detection_train_loader
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    from transfer.detection.config import build_config

    cfg = build_config(protocol, smoke=True, device="cpu")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    if "_c4_" in protocol:
        assert type(model.roi_heads).__name__ == "Res5ROIHeadsExtraNorm"
        assert "NaiveSyncBatchNorm" in type(model.roi_heads.res5.norm).__name__
    optimizer = build_optimizer(cfg, model)
    batch = next(iter(build_detection_train_loader(cfg)))
    resnet = getattr(model.backbone, "bottom_up", model.backbone)  # FPN wraps the ResNet
    before = resnet.stem.conv1.weight.detach().clone()
    with EventStorage(0):
        losses = model(batch)
    expected = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    if cfg.MODEL.MASK_ON:
        expected.add("loss_mask")
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    assert not torch.equal(before, resnet.stem.conv1.weight.detach()), "FREEZE_AT 0: stem trains"


def _gt_instances(record: dict, keep_class=True):
    """Ground truth of one detectron2 record as perfect predictions (score 1)."""
    from detectron2.structures import Boxes, BoxMode, Instances, PolygonMasks

    h, w = record["height"], record["width"]
    anns = record["annotations"]
    inst = Instances((h, w))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.ones(len(anns))
    cls = torch.tensor([a["category_id"] for a in anns])
    inst.pred_classes = cls if keep_class else (cls + 1) % 6
    if anns and "segmentation" in anns[0]:
        masks = PolygonMasks([a["segmentation"] for a in anns])
        from detectron2.structures.masks import polygons_to_bitmask

        inst.pred_masks = torch.stack(
            [torch.from_numpy(polygons_to_bitmask(p, h, w)) for p in masks.polygons]
        )
    return inst


def _evaluate(evaluator, dataset: str, keep_class=True) -> dict:
    from detectron2.data import DatasetCatalog

    evaluator.reset()
    for rec in DatasetCatalog.get(dataset):
        evaluator.process(
            [
                {
                    "image_id": rec["image_id"],
                    "height": rec["height"],
                    "width": rec["width"],
                    "file_name": rec["file_name"],
                }
            ],
            [{"instances": _gt_instances(rec, keep_class)}],
        )
    return evaluator.evaluate()


def test_pascal_voc_evaluator_on_synthetic(registered_shapes):
    from detectron2.evaluation import PascalVOCDetectionEvaluator

    ev = PascalVOCDetectionEvaluator("shapes_voc_2007_test")
    perfect = _evaluate(ev, "shapes_voc_2007_test")["bbox"]
    assert perfect["AP50"] == pytest.approx(100.0) and perfect["AP75"] == pytest.approx(100.0)
    wrong = _evaluate(ev, "shapes_voc_2007_test", keep_class=False)["bbox"]
    assert wrong["AP50"] < 20.0


def test_coco_evaluator_on_synthetic(registered_shapes, tmp_path):
    from detectron2.evaluation import COCOEvaluator

    ev = COCOEvaluator("shapes_coco_2017_val", output_dir=str(tmp_path), use_fast_impl=False)
    res = _evaluate(ev, "shapes_coco_2017_val")
    for task in ("bbox", "segm"):
        assert res[task]["AP"] == pytest.approx(100.0, abs=1e-6), (task, res[task])
    wrong = _evaluate(ev, "shapes_coco_2017_val", keep_class=False)
    assert wrong["bbox"]["AP"] < 5.0
