"""Detectron2 as installed by `make install`: imports, clear errors, training, evaluators."""

from __future__ import annotations

import os
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


# --- what later detectron2 releases fixed, patched into the rebuild (docs/detectron2.md) -----


class _Linear(torch.nn.Module):
    """A detectron2-style model: list of dicts in, a loss dict out (training)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 1)

    def forward(self, batched_inputs):
        x = torch.stack([d["x"] for d in batched_inputs])
        return {"loss": self.fc(x).pow(2).mean()}


def _stepping_trainer(folder: Path, max_iter: int):
    """SimpleTrainer + StepLR(step 3, gamma 0.1) through hooks.LRScheduler + a checkpointer
    every iteration: the set-up of detectron2's own test_checkpoint_resume."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import SimpleTrainer, hooks

    torch.manual_seed(0)
    model = _Linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 3)
    data = iter(lambda: [{"x": torch.ones(3)}], None)
    trainer = SimpleTrainer(model, data, opt)
    ckpt = DetectionCheckpointer(model, str(folder), trainer=trainer)
    trainer.register_hooks([hooks.LRScheduler(scheduler=scheduler),
                            hooks.PeriodicCheckpointer(ckpt, 1, max_iter=max_iter)])  # fmt: skip
    return trainer, ckpt, scheduler


def test_a_torch_scheduler_resumes_where_it_stopped(tmp_path):
    """hooks.LRScheduler checkpoints a plain torch >= 2 scheduler (StepLR derives from
    LRScheduler, not _LRScheduler): resumed after 5 iterations, its step count is 5 and the
    lr 0.1 x 0.1 (one decay at 3); v0.6 restarted it at 0 (lr 0.1)."""
    trainer, _, _ = _stepping_trainer(tmp_path, 5)
    trainer.train(0, 5)
    resumed, ckpt, scheduler = _stepping_trainer(tmp_path, 5)
    ckpt.resume_or_load(str(tmp_path / "model_final.pth"), resume=True)
    assert scheduler.last_epoch == 5
    assert scheduler.get_last_lr() == pytest.approx([0.01])


def test_detectron2_projects_are_installed():
    """upstream setup.py installs PointRend and DeepLab as detectron2.projects.*."""
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config
    from detectron2.projects.point_rend import add_pointrend_config

    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_pointrend_config(cfg)
    assert cfg.MODEL.POINT_HEAD.NUM_FC == 3 and cfg.SOLVER.POLY_LR_POWER == 0.9


def test_export_and_flop_counts_import_without_caffe2():
    """detectron2.export (TorchScript, tracing) and detectron2.utils.analysis import without
    caffe2; a 3x3 convolution 3 -> 8 over 16 x 16 counts 8 * 16 * 16 * 3 * 9 = 55296
    multiply-adds (fvcore: one flop each), reported in GFLOPs."""
    from detectron2.export import TracingAdapter, scripting_with_instances  # noqa: F401
    from detectron2.utils.analysis import flop_count_operators

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)

        def forward(self, batched_inputs):
            return self.conv(torch.stack([d["image"] for d in batched_inputs]))

    model = Conv().eval()
    counts = flop_count_operators(model, [{"image": torch.rand(3, 16, 16)}])
    assert counts["conv"] == pytest.approx(55296 / 1e9)
    x = [{"image": torch.rand(3, 16, 16)}]
    adapter = TracingAdapter(model, x)
    out = torch.jit.trace(adapter, adapter.flattened_inputs)(x[0]["image"])
    assert torch.allclose(out[0] if isinstance(out, tuple) else out, model(x))


# test_engine.py's other tests need COCO's files; test_export_torchscript.py the model zoo's
UPSTREAM_TESTS = ("test_engine.py::TestTrainer::test_checkpoint_resume", "test_packaging.py",
                  "test_model_analysis.py")  # fmt: skip


@pytest.mark.extended
@pytest.mark.skipif(
    not os.environ.get("DETECTRON2_TESTS"),
    reason="set DETECTRON2_TESTS to a detectron2 v0.6 checkout's tests/ folder",
)
def test_detectron2s_own_tests_of_the_patched_parts_pass():
    """detectron2 v0.6's own test files for the three patched parts, run on this build."""
    import subprocess
    import sys

    folder = Path(os.environ["DETECTRON2_TESTS"])
    files = [str(folder / f) for f in UPSTREAM_TESTS]
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *files], cwd=folder.parent, capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:]
