"""The protocols' evaluators: VOC (2007 11-point AP, plus AP75 and per-class AP50) and COCO.

COCO evaluation uses the fastest COCOeval at hand, with the same numbers: detectron2's own
C++ one (a build with compiled ops), else faster-coco-eval (``pip install
faster-coco-eval``, a C++ COCOeval on PyPI), else pycocotools' reference implementation.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import OrderedDict, defaultdict

import numpy as np
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator, coco_evaluation
from detectron2.evaluation.pascal_voc_evaluation import voc_eval
from detectron2.utils import comm

from transfer.environment import detectron2_info

COCO_IMPLS = ("auto", "detectron2", "faster-coco-eval", "pycocotools")


def faster_cocoeval():
    """faster-coco-eval's COCOeval class, or None when it is not installed."""
    try:
        from faster_coco_eval import COCOeval_faster
    except ImportError:
        return None
    return COCOeval_faster


def coco_impl(wanted: str = "auto") -> str:
    """The COCOeval implementation to use: ``wanted``, or the fastest available for auto."""
    if wanted not in COCO_IMPLS:
        raise ValueError(f"COCO evaluation {wanted!r}: one of {', '.join(COCO_IMPLS)}")
    if wanted != "auto":
        return wanted
    if detectron2_info()["compiled_ops"]:
        return "detectron2"
    return "faster-coco-eval" if faster_cocoeval() is not None else "pycocotools"


@contextlib.contextmanager
def _cocoeval_class(impl: str):
    """detectron2's "fast" COCOeval slot pointed at ``impl``'s class while inside."""
    if impl != "faster-coco-eval":
        yield impl != "pycocotools"
        return
    saved = coco_evaluation.COCOeval_opt
    coco_evaluation.COCOeval_opt = faster_cocoeval()
    try:
        yield True
    finally:
        coco_evaluation.COCOeval_opt = saved


def evaluate_on_coco(coco_gt, results: list[dict], iou_type: str, impl: str = "auto"):
    """detectron2's COCO evaluation of ``results`` with the chosen COCOeval (its object)."""
    with _cocoeval_class(coco_impl(impl)) as fast:
        return coco_evaluation._evaluate_predictions_on_coco(
            coco_gt, results, iou_type, use_fast_impl=fast
        )


class SuiteCOCOEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator with the COCOeval of ``coco_impl``."""

    def __init__(self, dataset_name: str, output_dir: str | None = None, impl: str = "auto"):
        self.impl = coco_impl(impl)
        super().__init__(
            dataset_name, output_dir=output_dir, use_fast_impl=self.impl != "pycocotools"
        )

    def _eval_predictions(self, predictions, img_ids=None):
        """COCOeval prints its summary to stdout: it goes to the seed's log.txt instead
        (detectron2 logs the same APs as tables there too)."""
        out = io.StringIO()
        try:
            with _cocoeval_class(self.impl), contextlib.redirect_stdout(out):
                return super()._eval_predictions(predictions, img_ids)
        finally:
            if out.getvalue():
                logging.getLogger("detectron2.evaluation").info("COCOeval:\n" + out.getvalue())


class VOCEvaluator(PascalVOCDetectionEvaluator):
    """Detectron2's VOC evaluator (2007 11-point metric for VOC2007), plus per-class AP50.

    Returns ``{"bbox": {"AP", "AP50", "AP75", "AP50-<class>"...}}`` (percent).
    """

    def evaluate(self):
        all_predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        predictions = defaultdict(list)
        for per_rank in all_predictions:
            for cls_id, lines in per_rank.items():
                predictions[cls_id].extend(lines)
        aps = defaultdict(list)  # IoU threshold (percent) -> AP per class
        with tempfile.TemporaryDirectory(prefix="voc_eval_") as tmp:
            template = os.path.join(tmp, "{}.txt")
            for cls_id, name in enumerate(self._class_names):
                with open(template.format(name), "w") as f:
                    f.write("\n".join(predictions.get(cls_id, [""])))
                for thresh in range(50, 100, 5):
                    _, _, ap = voc_eval(
                        template,
                        self._anno_file_template,
                        self._image_set_path,
                        name,
                        ovthresh=thresh / 100.0,
                        use_07_metric=self._is_2007,
                    )
                    aps[thresh].append(ap * 100)
        m_ap = {iou: float(np.mean(v)) for iou, v in aps.items()}
        bbox = OrderedDict(AP=float(np.mean(list(m_ap.values()))), AP50=m_ap[50], AP75=m_ap[75])
        for name, ap in zip(self._class_names, aps[50]):
            bbox[f"AP50-{name}"] = float(ap)
        return OrderedDict(bbox=bbox)
