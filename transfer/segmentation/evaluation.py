"""detectron2's ``SemSegEvaluator`` with the toolkit's mIoU beside its own.

detectron2 (``mIoU``) averages the IoU over the classes present in the ground truth or the
prediction; the toolkit (``eval.py``: ``intersectionAndUnion`` summed over the dataset, then
``iou.mean()``) over all 150 classes, a class absent from both counting 0. On ADE20K's
validation set every class occurs, so the two are equal; on a subset or the synthetic twin
``mIoU_toolkit`` is the comparable figure. Pixel accuracy (``pACC``: correct / labelled
pixels) is the toolkit's ``Accuracy``. All x100.

With ``save_first`` N, the predictions (class indices, 8-bit PNGs) of the first N validation
images in file-name order are written to ``<output_dir>/predictions/`` for the figure
(``tables.segfigure``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

from common.atomic import atomic_write_json


def toolkit_miou(conf: np.ndarray) -> float:
    """The toolkit's mIoU x100 from detectron2's confusion matrix ((C+1) x (C+1), rows =
    prediction, columns = ground truth, the last row / column the ignored pixels)."""
    c = conf[:-1, :-1].astype(np.float64)
    inter = np.diag(c)
    union = c.sum(0) + c.sum(1) - inter
    return float(100 * np.mean(inter / (union + 1e-10)))


class ToolkitSemSegEvaluator(SemSegEvaluator):
    """``SemSegEvaluator`` whose results also hold ``mIoU_toolkit``."""

    def __init__(self, dataset_name: str, output_dir: str | None = None, save_first: int = 0):
        super().__init__(dataset_name, distributed=True, output_dir=None)
        self._pred_dir = Path(output_dir) / "predictions" if output_dir and save_first else None
        self._save = set(sorted(self.input_file_to_gt_file)[:save_first])

    def process(self, inputs, outputs):
        super().process(inputs, outputs)
        if self._pred_dir is None:
            return
        for x, out in zip(inputs, outputs):
            if x["file_name"] in self._save:
                self._pred_dir.mkdir(parents=True, exist_ok=True)
                pred = out["sem_seg"].argmax(dim=0).to(torch.uint8).cpu().numpy()
                Image.fromarray(pred).save(self._pred_dir / f"{Path(x['file_name']).stem}.png")

    def evaluate(self):
        results = super().evaluate()
        if results and "sem_seg" in results:  # the main process (after gathering)
            results["sem_seg"]["mIoU_toolkit"] = toolkit_miou(self._conf_matrix)
            if self._pred_dir is not None:  # which image / label each prediction shows
                pairs = self.input_file_to_gt_file.items()
                index = {Path(f).stem: {"file_name": f, "sem_seg_file_name": g}
                         for f, g in pairs if f in self._save}  # fmt: skip
                atomic_write_json(self._pred_dir / "index.json", index)
        return results
