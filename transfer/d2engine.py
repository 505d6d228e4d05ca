"""What every detectron2-based family's trainer shares (detection, segmentation).

- ``ProgressHook`` (a tqdm bar: iteration, loss, lr, images/s, ETA) and ``InterruptHook``
  (SIGINT / SIGTERM: checkpoint at the end of the iteration, then stop, resumable);
- ``ResumeAwareWriters``: ``train_metrics.jsonl`` + TensorBoard (+ W&B) that log each
  iteration once across resumed sessions;
- ``suite_writers`` / ``suite_hooks``: what a ``DefaultTrainer`` subclass returns from its
  ``build_writers`` / ``build_hooks``;
- ``verify_backbone_loaded``: every backbone tensor of the model equals the converted file's;
- ``arch_opts``: the config overrides that build detectron2's ResNet as the weights' one;
- ``train_recording_session``: each session recorded in ``sessions.json``
  (``common.sessions``: a killed one too);
- ``OptimizerStateMixin``: the optimiser (momentum buffers, current lr) and AMP's grad
  scaler in the checkpoint, which detectron2 0.6's ``DefaultTrainer`` leaves out (a resumed
  run would restart SGD's momentum at zero and run its first iteration at the base lr);
- ``protocol_config``: a protocol's detectron2 config from its YAML files, with the smoke
  twins' dataset names, the weights, the device and the user's overrides;
- ``SeedTrainer``: the ``DefaultTrainer`` a family subclasses (all of the above; on CPU
  processes its SyncBN is ``common.syncnorm.GlobalBatchNorm`` and DDP runs on gloo);
  ``start_seed`` builds a seed's config and trainer (resumed, or loaded and verified);
  ``seed_metrics`` / ``write_seed_results`` write what every seed's ``metrics.json`` holds.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import time
from pathlib import Path

import numpy as np
import torch
from detectron2.engine import DefaultTrainer, HookBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import (
    CommonMetricPrinter,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
    get_event_storage,
)

from common.archs import arch_by_name
from common.atomic import atomic_write_json
from common.cli import ConfigError, Interrupted
from common.distributed import any_rank
from common.metrics import remove_events, truncate_jsonl, wandb_run
from common.sessions import recorded_session, session_totals
from common.signals import StopFlag
from common.syncnorm import cpu_sync_norms
from transfer.keep import prune_seed_checkpoints
from transfer.spec import SeedSpec


class TrainingInterrupted(Interrupted):
    """Raised after a signal once the resumable checkpoint has been written."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite: the seed failed (named with its lr, no evaluation)."""


def _not_reported_by_the_suite(record: logging.LogRecord) -> bool:
    """detectron2's trainer logs every exception leaving ``train()`` with its traceback
    ("Exception during training:"); an intended stop (a signal, then a checkpoint) is no
    error, and a divergence is reported in one line by the seed (``Diverged``)."""
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, TrainingInterrupted | FloatingPointError)


logging.getLogger("detectron2.engine.train_loop").addFilter(_not_reported_by_the_suite)


class FinishedEvalHook(hooks.EvalHook):
    """detectron2's EvalHook, whose final evaluation runs only after a training that
    finished: v0.6's also ran when the last iteration raised (a diverged model scored)."""

    def after_train(self):
        if self.trainer.iter >= self.trainer.max_iter:  # train() ends the loop with iter += 1
            super().after_train()


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


def train_recording_session(trainer, seed_dir: str | Path) -> None:
    """``trainer.train()`` as one session of ``seed_dir/sessions.json`` (``common.sessions``:
    written at its start by the main process, closed at its end; a killed one closed by the
    next)."""
    with recorded_session(seed_dir, comm.is_main_process(),
                          start_iter=trainer.start_iter) as entry:  # fmt: skip
        try:
            trainer.train()
        finally:
            entry["end_iter"] = min(trainer.iter, trainer.max_iter)


class MetricPrinter(CommonMetricPrinter):
    """detectron2's console / log.txt printer; v0.6's ETA divides by the iterations since
    its last write, which are 0 when a run stops right after a write (a record every
    iteration, then SIGTERM): no ETA then, instead of a ZeroDivisionError."""

    def _get_eta(self, storage):
        try:
            return super()._get_eta(storage)
        except ZeroDivisionError:
            return None


def suite_writers(trainer) -> list[EventWriter]:
    """A trainer's writers: detectron2's console printer and ``ResumeAwareWriters``.

    detectron2's JSONWriter would write OUTPUT_DIR/metrics.json, the name the suite keeps for
    final results; training scalars go to train_metrics.jsonl instead. The writers open at
    their first write, when the resumed iteration is known."""
    return [
        MetricPrinter(trainer.max_iter),
        ResumeAwareWriters(trainer, trainer.cfg.OUTPUT_DIR, getattr(trainer, "spec", None)),
    ]


def suite_hooks(trainer, default_hooks: list) -> list:
    """detectron2's default hooks (at most two periodic checkpoints kept, besides
    model_final), then the progress bar and the signal handler."""
    for i, h in enumerate(default_hooks):
        if isinstance(h, hooks.PeriodicWriter):
            h._period = trainer.cfg.SUITE.LOG_PERIOD
        if isinstance(h, hooks.PeriodicCheckpointer):
            h.max_to_keep = 2  # bounded disk use
        if type(h) is hooks.EvalHook:
            default_hooks[i] = FinishedEvalHook(h._period, h._func)
    return default_hooks + [ProgressHook(trainer.cfg.SOLVER.IMS_PER_BATCH), InterruptHook()]


def arch_opts(arch: str | None, use: str = "run_linear.py or run_recognition.py") -> list[str]:
    """Config overrides that build detectron2's ResNet as the weights' ResNet
    (``arch``: the display name a conversion records, e.g. ``ResNet-101``)."""
    if arch is None:  # random init or a .pkl without metadata: the protocol's ResNet-50
        return []
    a = arch_by_name(arch)
    if a.stem != "imagenet":
        raise ConfigError(
            f"the weights are a {arch} ({a.stem} stem: 3x3 stride-1, no max-pool), which "
            f"Detectron2's ResNet stem cannot hold; use them with {use}"
        )
    if not a.bottleneck:
        raise ConfigError(
            f"the weights are a {arch}; the detection and segmentation protocols need a "
            "bottleneck ResNet (ResNet-50 / 101 / 152 / 50 x2): Detectron2's C4 "
            "head is a bottleneck res5"
        )
    opts = []
    if a.depth != 50:
        opts += ["MODEL.RESNETS.DEPTH", str(a.depth)]
    if a.width_per_group != 64:
        opts += ["MODEL.RESNETS.WIDTH_PER_GROUP", str(a.width_per_group)]
    return opts


class OptimizerStateMixin:
    """For a ``DefaultTrainer`` subclass (listed before it): checkpoints carry the inner
    trainer's state (the optimiser, AMP's grad scaler) under ``_trainer``, as later
    detectron2 releases do; checkpoints without it still load (the optimiser starts fresh)."""

    def state_dict(self):
        ret = super().state_dict()
        ret.setdefault("_trainer", self._trainer.state_dict())
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])


class SeedTrainer(OptimizerStateMixin, DefaultTrainer):
    """``DefaultTrainer`` for one seed: the suite's writers and hooks, the optimiser's state
    in its checkpoints; a family adds its loaders and evaluators."""

    def __init__(self, cfg, spec: SeedSpec | None = None):
        self.spec = spec  # before DefaultTrainer builds the writers
        with ddp_without_device_ids(cfg.MODEL.DEVICE == "cpu"):
            super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model; on several CPU processes its ``nn.SyncBatchNorm`` (CUDA only)
        becomes ``GlobalBatchNorm``: the same global-batch statistics over gloo."""
        model = super().build_model(cfg)
        if cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
            model, n = cpu_sync_norms(model)
            if n:
                logging.getLogger(__name__).info(f"SyncBN on CPU: {n} norms over gloo")
        return model

    def build_writers(self):
        return suite_writers(self)

    def build_hooks(self):
        return suite_hooks(self, super().build_hooks())

    def train(self):
        try:
            return super().train()
        except FloatingPointError:
            lr = self.optimizer.param_groups[0]["lr"]
            raise Diverged(
                f"the loss became NaN or infinite at iteration {self.iter + 1} of {self.max_iter} "
                f"(lr {lr:.4g}, SOLVER.BASE_LR {self.cfg.SOLVER.BASE_LR:g}); the model was not "
                "evaluated: lower SOLVER.BASE_LR, or check the weights"
            ) from None


@contextlib.contextmanager
def ddp_without_device_ids(cpu: bool):
    """While ``DefaultTrainer`` wraps its model: detectron2's ``create_ddp_model`` gives DDP
    the local rank as a GPU id; a CPU model (gloo) takes none."""
    from detectron2.engine import defaults

    create = defaults.create_ddp_model
    if cpu:
        defaults.create_ddp_model = lambda model, **kw: create(model, **{"device_ids": None, **kw})
    try:
        yield
    finally:
        defaults.create_ddp_model = create


def start_seed(spec: SeedSpec, build_config, trainer_cls: type[SeedTrainer]) -> SeedTrainer:
    """The seed's config (``build_config(protocol, smoke=, weights=, opts=, device=)``, with
    its folder, seed and AMP; written as config.yaml) and its trainer, resumed from the
    folder's last checkpoint or loaded from the weights and verified tensor by tensor."""
    import argparse

    from transfer.d2logs import seed_setup

    opts = list(spec.opts) + ["OUTPUT_DIR", spec.seed_dir, "SEED", str(spec.seed),
                              "SOLVER.AMP.ENABLED", str(bool(spec.amp))]  # fmt: skip
    cfg = build_config(
        spec.protocol, smoke=spec.smoke, weights=spec.weights or "", opts=opts, device=spec.device
    )
    seed_setup(cfg, argparse.Namespace(**spec.to_json()))
    trainer = trainer_cls(cfg, spec)
    trainer.resume_or_load(resume=True)
    main = comm.is_main_process()
    if trainer.start_iter == 0 and spec.weights:
        n = verify_backbone_loaded(trainer.model, spec.weights)
        if main:
            print(f"backbone loaded and verified: {n} tensors equal {spec.weights}")
    elif trainer.start_iter > 0 and main:
        print(f"resuming seed {spec.seed_index} from iteration {trainer.start_iter}")
    return trainer


def final_results(trainer: SeedTrainer) -> dict:
    """The final evaluation's results (kept by detectron2's EvalHook; ``train()`` returns
    them only with TEST.EXPECTED_RESULTS)."""
    results = getattr(trainer, "_last_eval_results", None)
    if not results:
        out = trainer.cfg.OUTPUT_DIR
        raise RuntimeError(f"training ended without evaluation results (see {out}/log.txt)")
    return results


def seed_metrics(spec: SeedSpec, trainer: SeedTrainer) -> dict:
    """What every seed's ``metrics.json`` holds before its family's results: the protocol,
    weights, seed, schedule, world size, wall time over its sessions, skipped images."""
    from common.badimages import SKIPPED_FILE, skipped_images

    out = Path(spec.seed_dir)
    cfg = trainer.cfg
    metrics = {
        "protocol": spec.protocol_name,
        "base_protocol": spec.protocol_name.removesuffix("_smoke"),  # a variant's own name
        "variant": "smoke" if spec.smoke else "full",
        "dataset": spec.dataset,
        "weights": spec.weights_info,
        "seed_index": spec.seed_index,
        "seed": spec.seed,
        "iterations": cfg.SOLVER.MAX_ITER,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "world_size": comm.get_world_size(),
        "amp": bool(spec.amp),
        **session_totals(out),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    skipped = skipped_images(out)
    if skipped:
        files = sorted(set(skipped))
        metrics["skipped_images"] = {"count": len(skipped), "files": files[:20]}
        print(
            f"seed {spec.seed_index}: skipped {len(skipped)} unreadable training image(s) "
            f"({', '.join(files[:3])}; all in {out / SKIPPED_FILE})"
        )
    return metrics


def write_seed_results(spec: SeedSpec, metrics: dict) -> dict:
    """``environment.json``, then ``metrics.json`` (last: it marks the seed finished)."""
    from transfer.environment import environment_record

    out = Path(spec.seed_dir)
    atomic_write_json(out / "environment.json", environment_record())
    atomic_write_json(out / "metrics.json", metrics)
    prune_seed_checkpoints(out, spec.keep_checkpoints)
    return metrics


def protocol_config(files, twin_prefix: str | None, weights: str, opts, device: str | None,
                    extend=None):  # fmt: skip
    """``get_cfg()`` (+ ``SUITE.MAX_BAD_FRAC`` / ``LOG_PERIOD``, + ``extend(cfg)``: a
    family's own keys) -> each of ``files`` merged in turn -> with ``twin_prefix`` (smoke
    runs) every dataset name prefixed -> MODEL.WEIGHTS and MODEL.DEVICE (default: cuda when
    available) -> ``opts`` (trailing KEY VALUE overrides; a bad one is a ``ConfigError``).
    Not frozen."""
    from detectron2.config import CfgNode, get_cfg

    cfg = get_cfg()
    cfg.SUITE = CfgNode()
    cfg.SUITE.MAX_BAD_FRAC = 0.01  # unreadable training images allowed (then skipped)
    # iterations between training records (train_metrics.jsonl, TensorBoard, the console's
    # detail line), and the last one: detectron2's period; the smoke runs record each
    cfg.SUITE.LOG_PERIOD = 20
    if extend is not None:
        extend(cfg)
    for f in files:
        cfg.merge_from_file(str(f))
    if twin_prefix:
        cfg.DATASETS.TRAIN = tuple(twin_prefix + n for n in cfg.DATASETS.TRAIN)
        cfg.DATASETS.TEST = tuple(twin_prefix + n for n in cfg.DATASETS.TEST)
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"config overrides {list(opts)}: {e}") from e
    return cfg
