"""Detectron2's ``DefaultTrainer`` with the suite's evaluators, progress, and safe stops.

One process (or one detectron2 ``launch`` group) trains one seed of one protocol:
``train_seed(spec)``. It resumes from the seed folder's last checkpoint when there is one,
otherwise loads ``MODEL.WEIGHTS`` and checks that the backbone really received them.
SIGINT / SIGTERM save a checkpoint at the end of the current iteration and stop
(resumable); a NaN/inf loss stops the seed with detectron2's FloatingPointError.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm

from common.atomic import atomic_write_json
from transfer.d2engine import (
    OptimizerStateMixin,
    read_sessions,
    suite_hooks,
    suite_writers,
    train_recording_session,
    verify_backbone_loaded,
)
from transfer.d2logs import seed_setup
from transfer.detection.evaluation import SuiteCOCOEvaluator, VOCEvaluator
from transfer.environment import environment_record
from transfer.spec import SeedSpec

__all__ = ["SuiteTrainer", "train_seed", "verify_backbone_loaded"]


class SuiteTrainer(OptimizerStateMixin, DefaultTrainer):
    """``DefaultTrainer`` with the protocols' evaluators and the suite's hooks / writers."""

    def __init__(self, cfg, spec: SeedSpec | None = None):
        self.spec = spec  # before DefaultTrainer builds the writers
        super().__init__(cfg)

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

    def build_writers(self):
        return suite_writers(self)

    def build_hooks(self):
        return suite_hooks(self, super().build_hooks())


def _seed_trainer(spec: SeedSpec) -> SuiteTrainer:
    """The seed's config (written as config.yaml) and a trainer resumed or loaded from the
    weights, which are verified tensor by tensor on a fresh start."""
    import argparse

    from transfer.detection.config import build_config
    from transfer.detection.datasets import register_shapes

    if spec.dataset == "synthetic":
        register_shapes(spec.shapes_root)
    opts = list(spec.opts) + [
        "OUTPUT_DIR",
        spec.seed_dir,
        "SEED",
        str(spec.seed),
        "SOLVER.AMP.ENABLED",
        str(bool(spec.amp)),
    ]
    cfg = build_config(
        spec.protocol, smoke=spec.smoke, weights=spec.weights or "", opts=opts, device=spec.device
    )
    seed_setup(cfg, argparse.Namespace(**spec.to_json()))
    trainer = SuiteTrainer(cfg, spec)
    trainer.resume_or_load(resume=True)
    main = comm.is_main_process()
    if trainer.start_iter == 0 and spec.weights:
        n = verify_backbone_loaded(trainer.model, spec.weights)
        if main:
            print(f"backbone loaded and verified: {n} tensors equal {spec.weights}")
    elif trainer.start_iter > 0 and main:
        print(f"resuming seed {spec.seed_index} from iteration {trainer.start_iter}")
    return trainer


def train_seed(spec: SeedSpec) -> dict | None:
    """Train and evaluate one seed (inside a detectron2 ``launch`` worker).

    ``spec`` is planned by ``transfer.runner.plan``. Writes, on the main
    process: ``config.yaml``, ``log.txt``, ``train_metrics.jsonl``, ``environment.json``,
    ``sessions.json`` and finally ``metrics.json`` (written last: marks the seed finished).
    """
    out = Path(spec.seed_dir)
    trainer = _seed_trainer(spec)
    train_recording_session(trainer, out / "sessions.json")
    if not comm.is_main_process():
        return None
    # DefaultTrainer.train() returns results only with TEST.EXPECTED_RESULTS; the final
    # evaluation's are kept by its EvalHook here:
    results = getattr(trainer, "_last_eval_results", None)
    if not results:
        raise RuntimeError(f"training ended without evaluation results (see {out}/log.txt)")
    sessions = read_sessions(out / "sessions.json")
    cfg = trainer.cfg
    metrics = {
        "protocol": spec.protocol_name,
        "base_protocol": spec.protocol,
        "variant": "smoke" if spec.smoke else "full",
        "dataset": spec.dataset,
        "weights": spec.weights_info,
        "seed_index": spec.seed_index,
        "seed": spec.seed,
        "iterations": cfg.SOLVER.MAX_ITER,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "world_size": comm.get_world_size(),
        "amp": bool(spec.amp),
        "wall_time_s": round(sum(s["wall_time_s"] for s in sessions), 2),
        "sessions": len(sessions),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **{task: dict(vals) for task, vals in results.items()},
    }
    from transfer.detection.checks import skipped_images

    skipped = skipped_images(out)
    if skipped:
        files = sorted(set(skipped))
        metrics["skipped_images"] = {"count": len(skipped), "files": files[:20]}
        print(
            f"seed {spec.seed_index}: skipped {len(skipped)} unreadable training image(s) "
            f"({', '.join(files[:3])}; all in {out / 'skipped_images.txt'})"
        )
    atomic_write_json(out / "environment.json", environment_record())
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
