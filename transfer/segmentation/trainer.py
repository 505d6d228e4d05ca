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

import argparse
import os
import time
from pathlib import Path

from detectron2.engine import DefaultTrainer
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler

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
from transfer.environment import environment_record
from transfer.segmentation.evaluation import ToolkitSemSegEvaluator
from transfer.spec import SeedSpec

FIGURE_IMAGES = 10  # predictions of the first validation images kept for the figure


def poly_scheduler(optimizer, max_iter: int, power: float) -> LRMultiplier:
    """The toolkit's per-iteration poly decay as detectron2 / fvcore schedule it."""
    return LRMultiplier(optimizer, PolynomialDecayParamScheduler(1.0, power), max_iter)


class SegTrainer(OptimizerStateMixin, DefaultTrainer):
    """``DefaultTrainer`` with the toolkit's loader, schedule and evaluation."""

    def __init__(self, cfg, spec: SeedSpec | None = None):
        self.spec = spec  # before DefaultTrainer builds the writers
        super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        from transfer.segmentation.data import dataset_dicts
        from transfer.segmentation.loader import SKIPPED_FILE, build_train_loader

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

    def build_writers(self):
        return suite_writers(self)

    def build_hooks(self):
        return suite_hooks(self, super().build_hooks())

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # the data stream continues where the interrupted session left it
        self.data_loader.dataset.sampler.start_batch = self.start_iter


def _seed_trainer(spec: SeedSpec) -> SegTrainer:
    from transfer.segmentation.config import build_config
    from transfer.segmentation.data import register

    register(spec.shapes_root, synthetic=spec.dataset == "synthetic")  # the plan's data root
    opts = list(spec.opts) + ["OUTPUT_DIR", spec.seed_dir, "SEED", str(spec.seed),
                              "SOLVER.AMP.ENABLED", str(bool(spec.amp))]  # fmt: skip
    cfg = build_config(
        spec.protocol, smoke=spec.smoke, weights=spec.weights or "", opts=opts, device=spec.device
    )
    seed_setup(cfg, argparse.Namespace(**spec.to_json()))
    trainer = SegTrainer(cfg, spec)
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
    """Train and evaluate one seed (inside a detectron2 ``launch`` worker); the main process
    writes ``environment.json`` and, last, ``metrics.json``."""
    out = Path(spec.seed_dir)
    trainer = _seed_trainer(spec)
    train_recording_session(trainer, out / "sessions.json")
    if not comm.is_main_process():
        return None
    results = getattr(trainer, "_last_eval_results", None)
    if not results or "sem_seg" not in results:
        raise RuntimeError(f"training ended without evaluation results (see {out}/log.txt)")
    sessions = read_sessions(out / "sessions.json")
    cfg = trainer.cfg
    sem = dict(results["sem_seg"])
    metrics = {
        "protocol": spec.protocol_name,
        "base_protocol": spec.protocol_name.removesuffix("_smoke"),  # a variant: _ignorepad
        "family": "segmentation",
        "variant": "smoke" if spec.smoke else "full",
        "dataset": spec.dataset,
        "weights": spec.weights_info,
        "seed_index": spec.seed_index,
        "seed": spec.seed,
        "iterations": cfg.SOLVER.MAX_ITER,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "batch_pad_label": cfg.MODEL.UPERNET.BATCH_PAD_LABEL,
        "world_size": comm.get_world_size(),
        "amp": bool(spec.amp),
        "wall_time_s": round(sum(s["wall_time_s"] for s in sessions), 2),
        "sessions": len(sessions),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "headline": {"mIoU": sem["mIoU_toolkit"], "pixel_acc": sem["pACC"]},
        "sem_seg": sem,
    }
    from transfer.segmentation.loader import SKIPPED_FILE

    skipped_path = out / SKIPPED_FILE
    if skipped_path.exists():
        files = sorted({ln.split("\t")[0] for ln in skipped_path.read_text().splitlines() if ln})
        metrics["skipped_images"] = {"count": len(files), "files": files[:20]}
        print(f"seed {spec.seed_index}: skipped {len(files)} unreadable training image(s) "
              f"(listed in {skipped_path})")  # fmt: skip
    atomic_write_json(out / "environment.json", environment_record())
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
