"""Detectron2's ``DefaultTrainer`` with the suite's evaluators, progress, and safe stops.

One process (or one detectron2 ``launch`` group) trains one seed of one protocol:
``train_seed(spec)``. It resumes from the seed folder's last checkpoint when there is one,
otherwise loads ``MODEL.WEIGHTS`` and checks that the backbone really received them.
SIGINT / SIGTERM save a checkpoint at the end of the current iteration and stop
(resumable); a NaN/inf loss stops the seed with detectron2's FloatingPointError.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, HookBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import (
    CommonMetricPrinter,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
    get_event_storage,
)

from common.atomic import atomic_write_json
from common.cli import Interrupted
from common.distributed import any_rank
from common.metrics import remove_events, truncate_jsonl, wandb_run
from common.signals import StopFlag
from transfer.detection.evaluation import SuiteCOCOEvaluator, VOCEvaluator
from transfer.detection.logs import seed_setup
from transfer.environment import environment_record
from transfer.spec import SeedSpec


class TrainingInterrupted(Interrupted):
    """Raised after a signal once the resumable checkpoint has been written."""


class ProgressHook(HookBase):
    """A tqdm bar on the main process: iteration, total loss, lr, images/s and ETA."""

    def __init__(self, ims_per_batch: int):
        self._ims = ims_per_batch
        self._bar = None
        self._t = None

    def before_train(self):
        if comm.is_main_process():
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.trainer.max_iter,
                initial=self.trainer.start_iter,
                desc=f"seed {self.trainer.spec.seed_index} train"
                if hasattr(self.trainer, "spec")
                else "train",
                unit="it",
                leave=False,  # the runner prints the seed's line
                dynamic_ncols=True,
            )
        self._t = time.perf_counter()

    def after_step(self):
        if self._bar is None:
            return
        now = time.perf_counter()
        dt, self._t = now - self._t, now
        storage = self.trainer.storage
        post = {"img/s": f"{self._ims / max(dt, 1e-9):.1f}"}
        hist = storage.histories()
        if "total_loss" in hist:
            post["loss"] = f"{hist['total_loss'].latest():.3f}"
        if "lr" in hist:
            post["lr"] = f"{hist['lr'].latest():.2e}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(1)

    def after_train(self):
        if self._bar is not None:
            self._bar.close()


class InterruptHook(HookBase):
    """On SIGINT / SIGTERM, finish the iteration, save a checkpoint, then stop.

    Every rank sees the stop at the same iteration (the flag is all-reduced), so DDP
    collectives never deadlock; only the main process writes (the checkpointer's rule).
    """

    def __init__(self):
        self.stop = StopFlag()

    def before_train(self):
        self.stop.install()

    def after_step(self):
        device = comm.get_local_rank() if torch.cuda.is_available() else "cpu"
        if any_rank(self.stop.requested, device):
            it = self.trainer.iter
            self.trainer.checkpointer.save(f"model_{it:07d}", iteration=it)
            raise TrainingInterrupted(
                f"stopped by signal after iteration {it}; re-run the same command to resume"
            )

    def after_train(self):
        self.stop.restore()


class WandbWriter(EventWriter):
    """The storage's latest scalars (smoothed as detectron2's JSONWriter smooths them) to a
    W&B run at their iteration."""

    def __init__(self, run, window_size: int = 20):
        self._run = run
        self._window = window_size
        self._last = -1

    def write(self):
        storage = get_event_storage()
        by_iter: dict[int, dict] = {}
        for k, (v, it) in storage.latest_with_smoothing_hint(self._window).items():
            if it > self._last:
                by_iter.setdefault(it, {})[k] = v
        for it in sorted(by_iter):
            self._run.log(by_iter[it], step=it)
        if by_iter:
            self._last = max(by_iter)

    def close(self):
        self._run.finish()


class ResumeAwareWriters(EventWriter):
    """detectron2's JSONWriter (``train_metrics.jsonl``) and TensorboardXWriter (event files
    in the seed folder), plus W&B with ``--logger wandb``, opened at the first write.

    By then ``resume_or_load`` has set ``trainer.start_iter``: the JSON lines after the
    resumed iteration are dropped and TensorBoard purges the events from it on, so a resumed
    seed logs each iteration once (detectron2 alone appends, and its readers de-duplicate).
    """

    def __init__(self, trainer, out_dir: str, spec: SeedSpec | None):
        self._trainer, self._out, self._spec = trainer, Path(out_dir), spec
        self._logger = spec.logger if spec is not None else "tensorboard"
        self._writers: list[EventWriter] | None = None

    def _open(self) -> list[EventWriter]:
        start = int(self._trainer.start_iter)
        resume = start - 1 if start > 0 else None
        jsonl = self._out / "train_metrics.jsonl"
        truncate_jsonl(jsonl, resume)
        writers: list[EventWriter] = [JSONWriter(str(jsonl))]
        if self._logger in ("tensorboard", "wandb"):
            if resume is None:
                remove_events(self._out)
            writers.append(TensorboardXWriter(str(self._out), purge_step=start))
        if self._logger == "wandb":
            names = self._spec.wandb_names()
            run = wandb_run(self._out, names["group"], names["name"], self._spec.to_json())
            writers.append(WandbWriter(run))
        return writers

    def write(self):
        if self._writers is None:
            self._writers = self._open()
        for w in self._writers:
            w.write()

    def close(self):
        for w in self._writers or []:
            w.close()


class SuiteTrainer(DefaultTrainer):
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
        # detectron2's JSONWriter would write OUTPUT_DIR/metrics.json, the name the suite
        # keeps for final results; training scalars go to train_metrics.jsonl instead.
        # The writers open at their first write, when the resumed iteration is known.
        return [
            CommonMetricPrinter(self.max_iter),
            ResumeAwareWriters(self, self.cfg.OUTPUT_DIR, self.spec),
        ]

    def build_hooks(self):
        ret = super().build_hooks()
        for h in ret:
            if isinstance(h, hooks.PeriodicCheckpointer):
                h.max_to_keep = 2  # bounded disk use; model_final is kept as well
        ret.append(ProgressHook(self.cfg.SOLVER.IMS_PER_BATCH))
        ret.append(InterruptHook())
        return ret


def backbone_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The detector's backbone tensors under Detectron2 pickle names (stem, res2..res5).

    C4 keeps res5 in the ROI heads; FPN wraps the ResNet as ``backbone.bottom_up``.
    """
    model = getattr(model, "module", model)
    state = model.state_dict()
    out = {}
    for k, v in state.items():
        for prefix in ("backbone.bottom_up.", "backbone.", "roi_heads."):
            if k.startswith(prefix):
                name = k[len(prefix) :]
                if name.split(".")[0] in ("stem", "res2", "res3", "res4", "res5"):
                    out[name] = v
                break
    return out


def verify_backbone_loaded(model: torch.nn.Module, weights: str) -> int:
    """Fail unless every backbone tensor of the detector equals the converted file's.

    Guards against the classic silent failure (names not matched, weights not loaded).
    Returns the number of tensors compared.
    """
    with open(weights, "rb") as f:
        src = pickle.load(f)["model"]
    got = backbone_tensors(model)
    expected = {k for k in src if not k.endswith("num_batches_tracked")}
    missing = sorted(expected - set(got))
    wrong = sorted(
        k for k in expected & set(got) if not np.array_equal(got[k].detach().cpu().numpy(), src[k])
    )
    if missing or wrong:
        raise RuntimeError(
            f"the backbone was not loaded from {weights}: {len(missing)} tensors absent in the "
            f"detector {missing[:5]}, {len(wrong)} differ {wrong[:5]}"
        )
    return len(expected)


def _sessions(path: Path) -> list[dict]:
    return json.loads(path.read_text())["sessions"] if path.exists() else []


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


def _train_recording_session(trainer: SuiteTrainer, sessions_path: Path) -> None:
    """``trainer.train()``; every session (finished, interrupted, failed) is appended to
    ``sessions.json`` by the main process."""
    t0, start_iter, status = time.time(), trainer.start_iter, "failed"
    try:
        trainer.train()
        status = "finished"
    except (TrainingInterrupted, KeyboardInterrupt):
        status = "interrupted"
        raise
    finally:
        if comm.is_main_process():
            sessions = _sessions(sessions_path) + [
                {
                    "start_iter": start_iter,
                    "end_iter": min(trainer.iter, trainer.max_iter),
                    "status": status,
                    "wall_time_s": round(time.time() - t0, 2),
                }
            ]
            atomic_write_json(sessions_path, {"sessions": sessions})


def train_seed(spec: SeedSpec) -> dict | None:
    """Train and evaluate one seed (inside a detectron2 ``launch`` worker).

    ``spec`` is planned by ``transfer.runner.plan``. Writes, on the main
    process: ``config.yaml``, ``log.txt``, ``train_metrics.jsonl``, ``environment.json``,
    ``sessions.json`` and finally ``metrics.json`` (written last: marks the seed finished).
    """
    out = Path(spec.seed_dir)
    trainer = _seed_trainer(spec)
    _train_recording_session(trainer, out / "sessions.json")
    if not comm.is_main_process():
        return None
    # DefaultTrainer.train() returns results only with TEST.EXPECTED_RESULTS; the final
    # evaluation's are kept by its EvalHook here:
    results = getattr(trainer, "_last_eval_results", None)
    if not results:
        raise RuntimeError(f"training ended without evaluation results (see {out}/log.txt)")
    sessions = _sessions(out / "sessions.json")
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
