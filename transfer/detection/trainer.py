"""Detectron2's ``DefaultTrainer`` with the suite's evaluators, progress, and safe stops.

One process (or one group of worker processes, ``common.processes``) trains one seed of
one protocol: ``train_seed(spec)``. It resumes from the seed folder's last checkpoint when
there is one, otherwise loads ``MODEL.WEIGHTS`` and checks that the backbone really
received them.
SIGINT / SIGTERM save a checkpoint at the end of the current iteration and stop
(resumable); a NaN/inf loss stops the seed with detectron2's FloatingPointError.
"""

from __future__ import annotations

import os

from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from transfer.d2engine import (
    SeedTrainer,
    final_results,
    seed_metrics,
    start_seed,
    train_recording_session,
    verify_backbone_loaded,
    write_seed_results,
)
from transfer.d2logs import releases_seed_logging
from transfer.detection.evaluation import SuiteCOCOEvaluator, VOCEvaluator
from transfer.spec import SeedSpec

__all__ = ["SuiteTrainer", "train_seed", "verify_backbone_loaded"]


class SuiteTrainer(SeedTrainer):
    """The seed trainer with the detection protocols' loader and evaluators."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        kind = MetadataCatalog.get(dataset_name).evaluator_type
        if kind == "pascal_voc":
            return VOCEvaluator(dataset_name)
        if kind == "coco":
            out = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
            return SuiteCOCOEvaluator(dataset_name, output_dir=out)
        raise ValueError(f"no evaluator for dataset {dataset_name!r} of type {kind!r}")

    @classmethod
    def build_train_loader(cls, cfg):
        from detectron2.data import build_detection_train_loader

        from transfer.detection.checks import SkippingMapper

        mapper = SkippingMapper(cfg, cfg.OUTPUT_DIR, cfg.SUITE.MAX_BAD_FRAC)
        return build_detection_train_loader(cfg, mapper=mapper)


@releases_seed_logging
def train_seed(spec: SeedSpec) -> dict | None:
    """Train and evaluate one seed (in each of its worker processes).

    ``spec`` is planned by ``transfer.runner.plan``. Writes, on the main
    process: ``config.yaml``, ``log.txt``, ``train_metrics.jsonl``, ``environment.json``,
    ``sessions.json`` and finally ``metrics.json`` (written last: marks the seed finished).
    """
    from transfer.detection.config import build_config
    from transfer.detection.datasets import register_shapes

    if spec.dataset == "synthetic":
        register_shapes(spec.shapes_root)
    trainer = start_seed(spec, build_config, SuiteTrainer)
    train_recording_session(trainer, spec.seed_dir)
    if not comm.is_main_process():
        return None
    results = final_results(trainer)
    metrics = seed_metrics(spec, trainer)
    metrics.update({task: dict(vals) for task, vals in results.items()})
    return write_seed_results(spec, metrics)
