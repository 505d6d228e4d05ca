"""Detectron2's ``DefaultTrainer`` for the segmentation protocol: one seed per process.

``train_seed(spec)`` builds the config (``config.yaml``), resumes from the seed folder's last
checkpoint or loads the converted backbone and verifies it tensor by tensor, trains with the
toolkit's batches (``loader``), optimiser (detectron2's SGD param groups: weight decay on
conv / linear weights only) and poly schedule (fvcore's ``PolynomialDecayParamScheduler``
through detectron2's ``LRMultiplier``: lr = base (1 - it / max_iter)^0.9, set every
iteration), evaluates with the 5-scale test, and writes ``metrics.json`` last. SIGINT /
SIGTERM checkpoint and stop (resumable); a resumed run continues the same data stream.
"""

from __future__ import annotations

import os

from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler

from transfer.d2engine import (
    SeedTrainer,
    final_results,
    seed_metrics,
    start_seed,
    train_recording_session,
    write_seed_results,
)
from transfer.d2logs import releases_seed_logging
from transfer.segmentation.evaluation import ToolkitSemSegEvaluator
from transfer.spec import SeedSpec

FIGURE_IMAGES = 10  # predictions of the first validation images kept for the figure


def poly_scheduler(optimizer, max_iter: int, power: float) -> LRMultiplier:
    """The toolkit's per-iteration poly decay as detectron2 / fvcore schedule it."""
    return LRMultiplier(optimizer, PolynomialDecayParamScheduler(1.0, power), max_iter)


class SegTrainer(SeedTrainer):
    """The seed trainer with the toolkit's loader, schedule and evaluation."""

    @classmethod
    def build_train_loader(cls, cfg):
        from common.badimages import SKIPPED_FILE
        from transfer.segmentation.data import dataset_dicts
        from transfer.segmentation.loader import build_train_loader

        dicts = []
        for name in cfg.DATASETS.TRAIN:
            readable, bad = dataset_dicts(name, strict=False)
            dicts += readable
            if bad and comm.is_main_process():  # left out of training, listed with the skipped
                with open(os.path.join(cfg.OUTPUT_DIR, SKIPPED_FILE), "a") as f:
                    f.writelines(f"{d['file_name']}\t{type(e).__name__}: {e}\n" for d, e in bad)
        return build_train_loader(cfg, dicts, cfg.OUTPUT_DIR)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        from detectron2.data import build_detection_test_loader

        from transfer.segmentation.loader import TestMapper

        return build_detection_test_loader(
            cfg, dataset_name, mapper=TestMapper(cfg), num_workers=cfg.DATALOADER.NUM_WORKERS
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        out = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return ToolkitSemSegEvaluator(dataset_name, out, save_first=FIGURE_IMAGES)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        if cfg.SOLVER.LR_SCHEDULER_NAME != "PolyLR":
            return super().build_lr_scheduler(cfg, optimizer)
        return poly_scheduler(optimizer, cfg.SOLVER.MAX_ITER, cfg.SOLVER.POLY_LR_POWER)

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # the data stream continues where the interrupted session left it
        self.data_loader.dataset.sampler.start_batch = self.start_iter


@releases_seed_logging
def train_seed(spec: SeedSpec) -> dict | None:
    """Train and evaluate one seed (in each of its worker processes); the main process
    writes ``environment.json`` and, last, ``metrics.json``."""
    from transfer.segmentation.config import build_config
    from transfer.segmentation.data import register

    register(spec.shapes_root, synthetic=spec.dataset == "synthetic")  # the plan's data root
    trainer = start_seed(spec, build_config, SegTrainer)
    train_recording_session(trainer, spec.seed_dir)
    if not comm.is_main_process():
        return None
    sem = dict(final_results(trainer)["sem_seg"])
    metrics = seed_metrics(spec, trainer)
    metrics.update({
        "family": "segmentation",
        "batch_pad_label": trainer.cfg.MODEL.UPERNET.BATCH_PAD_LABEL,
        "headline": {"mIoU": sem["mIoU_toolkit"], "pixel_acc": sem["pACC"]},
        "sem_seg": sem,
    })  # fmt: skip
    return write_seed_results(spec, metrics)
