"""The one training loop of every method: data, schedules, AMP, DDP, checkpoints, probes.

Run through ``python -m pretrain`` (one process), ``torchrun --nproc_per_node=G -m pretrain``
(DDP; SyncBN on CUDA) or ``--launcher slurm``. Only rank 0 writes. Outputs under
``--output``: ``checkpoint.pth`` (latest, resumable), ``metrics.jsonl``, ``config.json``,
``curves.png``, and the final ``--out`` checkpoint (``pretrain.checkpoint``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from common.badimages import BadCount, SkipBad
from common.cli import ConfigError, InputNotFound, Interrupted, UserError
from common.distributed import any_rank, every_rank
from common.metrics import MetricsLog
from common.signals import StopFlag
from common.syncnorm import synchronise_norms
from pretrain import checkpoint
from pretrain.amp import AmpStep
from pretrain.config import RESUME_FREE_KEYS, PretrainConfig, amp_dtype, resolve_data
from pretrain.data import ResumableSampler, ViewsDataset, collate_raw, views_for
from pretrain.device_aug import DeviceAugment, DevicePrefetcher, decode_images
from pretrain.graphed import GraphedForwardBackward, graph_unsupported
from pretrain.knn import knn_accuracy, knn_summary
from pretrain.methods import build_method, method_class
from pretrain.plotting import plot_curves
from pretrain.probe import OnlineProbe, probe_summary
from pretrain.results import write_knn_seed
from pretrain.schedules import lr_at, momentum_at


class NonFiniteLoss(UserError):
    """A NaN/inf loss: the run stops; the last good checkpoint is kept."""


def sync_batchnorm(model: torch.nn.Module, keep_local: tuple[str, ...] = (),
                   cuda: bool = True) -> torch.nn.Module:  # fmt: skip
    """Global-batch BatchNorm everywhere (``nn.SyncBatchNorm`` on CUDA, ``GlobalBatchNorm``
    on CPU processes) except in the submodules named in ``keep_local`` (dotted paths, e.g.
    ``"target.tstream"``), whose BatchNorms keep per-process statistics."""
    return synchronise_norms(model, cuda, keep_local)


def dist_setup() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun's environment; initialises the group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


class Trainer:
    """State of one run; ``fit()`` trains to ``cfg.epochs`` from wherever the state is."""

    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        self.rank, self.world, local_rank = dist_setup()
        self.main = self.rank == 0
        self.device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self.cuda = self.device.startswith("cuda")
        if self.cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)
        self.out = Path(cfg.output)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.method_cls = method_class(cfg.method)
        self._build_data()
        self._build_model(local_rank)
        self.probe = None
        if cfg.online_probe:
            self.probe = OnlineProbe(self.model.backbone.dim, len(self.dataset.classes),
                                     self.device, self.probe_lr(self.lr), seed=cfg.seed,
                                     views=cfg.probe_views)  # fmt: skip
            self.probe.attach(self.model.backbone)
        self.graphed = self._build_graph()
        self.epoch, self.step_in_epoch, self.global_step, self.images_seen = 0, 0, 0, 0
        self.bad_images, self.skipped_steps = 0, 0
        self.history: list[dict] = []
        self.metrics: MetricsLog | None = None
        self.stop = StopFlag()

    def _build_data(self) -> None:
        cfg = self.cfg
        self.data = resolve_data(cfg) if self.main else None
        if self.world > 1:  # rank 0 may have generated the data
            dist.barrier()
            self.data = resolve_data(cfg)
        if self.main and self.data.note and cfg.knn_every:
            print(self.data.note, flush=True)
        if cfg.online_probe and not self.data.train.labelled:
            raise ConfigError(
                f"--online-probe trains on the labels of the training images, and "
                f"{self.data.train.where} has none: drop --online-probe (the kNN probe can "
                "use --knn-data)"
            )
        self.train_dir = self.data.train.where  # named in messages
        views = views_for(
            cfg.aug,
            cfg.image_size,
            cfg.crop_scale,
            self.method_cls.views_needed(cfg.options),
            cfg.crop_interpolation,
        )
        hook = self.method_cls.data_hook(cfg.options)
        # --batch-aug: workers read bytes and draw; decoding and augmentation run batched on
        # the device (device_aug). auto: on CUDA, for methods whose views need no data hook
        self.batch_aug = cfg.batch_aug == "on" or (
            cfg.batch_aug == "auto" and self.cuda and hook is None
        )
        self.augment = DeviceAugment(views) if self.batch_aug else None
        self.dataset = ViewsDataset(self.data.train, views, cfg.seed, hook, raw=self.batch_aug)
        self.global_batch = cfg.batch_size * self.world
        self.steps_per_epoch = len(self.dataset) // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(self.dataset)} images in {self.train_dir} < one global batch "
                f"of {self.global_batch}: lower --batch-size"
            )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.lr = cfg.base_lr * (self.global_batch / cfg.lr_batch_ref if cfg.lr_batch_ref else 1)

    def _build_model(self, local_rank: int) -> None:
        cfg = self.cfg
        model = build_method(cfg.method, cfg.arch, cfg.options).to(self.device)
        self.memory_format = (
            torch.channels_last if (self.cuda and cfg.channels_last) else torch.contiguous_format
        )  # of the model and its input views
        model = model.to(memory_format=self.memory_format)
        if self.world > 1:  # the global batch's statistics, on GPUs and CPU processes alike
            model = sync_batchnorm(model, model.local_bn_modules(), self.cuda)
        self.model = model
        self.ddp = (
            torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[local_rank] if self.cuda else None
            )
            if self.world > 1
            else model
        )
        self.optimizer = torch.optim.SGD(
            model.param_groups(cfg.fix_pred_lr),
            lr=self.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            foreach=True,
        )
        self.amp = AmpStep(
            self.optimizer,
            amp_dtype(cfg.amp, "cuda" if self.cuda else "cpu"),
            "cuda" if self.cuda else "cpu",
        )

    def _build_graph(self) -> GraphedForwardBackward | None:
        """The CUDA-graph forward / backward of ``--cuda-graph`` (pretrain/graphed.py)."""
        cfg = self.cfg
        why = graph_unsupported(self.method_cls, self.cuda, self.world, self.probe is not None)
        if cfg.cuda_graph == "on" and why:
            raise ConfigError(f"--cuda-graph on: {why}; use --cuda-graph off (or auto)")
        if cfg.cuda_graph == "off" or why:
            return None
        return GraphedForwardBackward(self.model, self.amp)

    # -- checkpoints -------------------------------------------------------------------
    COUNTERS = (
        "epoch",
        "step_in_epoch",
        "global_step",
        "images_seen",
        "bad_images",
        "skipped_steps",
    )

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.amp.scaler.state_dict(),
            "rng": checkpoint.rng_state(),
            "history": self.history,
            "config": self.cfg.to_json(),
            **({"probe": self.probe.state_dict()} if self.probe else {}),
            **{k: getattr(self, k) for k in self.COUNTERS},
        }

    def exported(self) -> dict:
        return checkpoint.exported(
            self.model.backbone.torchvision_state_dict(),
            self.model.name,
            self.cfg.to_json(),
            self.epoch,
            self.images_seen,
            self.history,
        )

    def save(self, path: Path | None = None) -> Path | None:
        if not self.main:
            return None
        path = path or self.out / "checkpoint.pth"
        checkpoint.save(path, {**self.exported(), "state": self.state_dict()})
        return path

    def finished_state(self) -> dict:
        """The state ``--keep-checkpoints final`` keeps of a finished run, beside the exported
        backbone: no model, target or optimiser state; the counters, history and config."""
        return {
            "finished": True,
            "history": self.history,
            "config": self.cfg.to_json(),
            **{k: getattr(self, k) for k in self.COUNTERS},
        }

    def load(self, path: str | Path) -> None:
        st = checkpoint.load_state(path, self.cfg.to_json())
        if st.get("finished"):  # a finished run's slim checkpoint: re-export, no training
            self.model.backbone.load_state_dict(checkpoint.load_any(path)["backbone"])
            for k in self.COUNTERS:
                setattr(self, k, st.get(k, 0))
            self.history = st["history"]
            return
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.amp.scaler.load_state_dict(st["scaler"])
        for k in self.COUNTERS:
            setattr(self, k, st.get(k, 0))
        self.history = st["history"]
        if self.probe is not None and "probe" in st:  # else: a probe switched on at resume
            self.probe.load_state_dict(st["probe"])
        checkpoint.set_rng_state(st["rng"])

    def open_metrics(self, resumed: bool) -> None:
        """``metrics.jsonl`` and the TensorBoard events (rank 0), truncated to the resumed
        step: no point is logged twice."""
        if self.main:
            self.metrics = MetricsLog(
                self.out,
                "metrics.jsonl",
                resume=self.global_step if resumed else None,
                logger=self.cfg.logger,
                group=self.out.name,
                name=f"pretrain/{self.cfg.method}",
                config=self.cfg.to_json(),
            )

    def log(self, kind: str, values: dict) -> None:
        """One record (``kind`` step | epoch) at the current step and epoch."""
        record = {"type": kind, "iteration": self.global_step, "epoch": self.epoch, **values}
        self.history.append(record)
        if self.metrics is not None:
            self.metrics.write({"type": kind, **values}, self.global_step, self.epoch)

    def probe_lr(self, lr: float) -> float:
        """The online probe's lr at a step whose main lr is ``lr``: ``--probe-lr`` x global
        batch / 256, times the main schedule's factor ``lr / base lr`` unless
        ``--probe-schedule constant``."""
        cfg = self.cfg
        base = cfg.probe_lr * self.global_batch / 256
        return base * lr / self.lr if cfg.probe_schedule == "main" and self.lr else base

    # -- one step ----------------------------------------------------------------------
    def schedule(self) -> tuple[float, float]:
        """(lr, EMA momentum) of the current step k.

        The lr follows the cosine every step (CARE / BYOL) or is set at the start of each
        epoch (the SimSiam family's ``adjust_learning_rate``). The EMA update runs right
        after step k, absorbing the network of k + 1 steps: the official code absorbs that
        network at the start of iteration k + 1 with m(k + 1), so m(k + 1) it is.
        """
        cfg = self.cfg
        k = self.global_step
        at = k - k % self.steps_per_epoch if cfg.lr_schedule == "epoch" else k
        lr = lr_at(at, self.total_steps, self.warmup_steps, self.lr, cfg.start_lr)
        tau = (
            momentum_at(k + 1, self.total_steps, cfg.base_tau)
            if cfg.tau_schedule == "cosine"
            else cfg.base_tau
        )
        return lr, tau

    def train_step(self, views: list[torch.Tensor], *extra: torch.Tensor) -> dict[str, float]:
        """One SGD step on a batch: views (N, 3, S, S) each; ``extra`` = MaskCo's boxes."""
        lr, tau = self.schedule()
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr if g.get("fixed_lr") else lr
        views = [
            v.to(self.device, non_blocking=True, memory_format=self.memory_format) for v in views
        ]
        extra = [e.to(self.device, non_blocking=True) for e in extra]
        losses = self.graphed(views, *extra) if self.graphed is not None else None
        if losses is not None:  # forward + backward replayed (--cuda-graph)
            self.amp.apply()
        else:
            with self.amp.autocast():
                losses = self.ddp(views, *extra)
            self.amp.step(losses["loss"])
        self.model.update_target(tau)
        # one host sync per step, after the update is queued (a check before the update
        # would stall the GPU between forward and backward): a non-finite loss stops the
        # run here, and the update it made is never saved
        values = dict(
            zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist())
        )
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteLoss(
                f"loss is {values['loss']} at epoch {self.epoch}, step {self.global_step} "
                f"({values}); stopped, and this step's update is not saved. "
                f"The last good checkpoint is kept: {self.out / 'checkpoint.pth'}. Lower "
                "--base-lr, use --amp bf16 / none, or check the data."
            )
        self.global_step += 1
        self.images_seen += views[0].shape[0] * self.world
        return {"lr": lr, "tau": tau, **values}

    # -- batches -----------------------------------------------------------------------
    @torch.no_grad()
    def device_batch(self, item, counter: BadCount):
        """A loader item -> ``(views, labels, indices, *extra)`` on the device, or None
        (fewer readable images than the method needs). With ``--batch-aug`` the views are
        decoded and made here; otherwise the workers' views are copied over."""
        batch = counter.take(item)
        if batch is not None and self.batch_aug:
            batch = self.device_views(batch, counter)
        if batch is None or len(batch[1]) < self.method_cls.min_batch:
            return None
        views = [
            v.to(self.device, non_blocking=True, memory_format=self.memory_format) for v in batch[0]
        ]
        return (views, *batch[1:3], *[e.to(self.device, non_blocking=True) for e in batch[3:]])

    @torch.no_grad()
    def device_views(self, batch, counter: BadCount):
        """A raw batch ``(payloads, params, labels, indices)`` -> ``(views, labels,
        indices)`` made on the device; images that do not decode are dropped and counted."""
        payloads, params, labels, indices = batch
        images = decode_images(payloads, self.device)
        ok = [i for i, im in enumerate(images) if im is not None]
        counter.bad += len(images) - len(ok)
        if not ok:
            return None
        if len(ok) < len(images):
            keep = torch.tensor(ok)
            images = [images[i] for i in ok]
            params = [{k: v[keep] for k, v in p.items()} for p in params]
            labels, indices = labels[keep], indices[keep]
        return self.augment(images, params), labels, indices

    def batches(self, counter: BadCount):
        """This epoch's batches (None where a rank has no usable batch), prefetched on CUDA.

        On CUDA the next batch is decoded / augmented / copied on a side stream while this
        step runs. Not with --workers 0: the dataset would then draw views in that thread,
        from the global RNG that the methods draw from in this one (GSG, MaskCo).
        """
        cfg = self.cfg
        sampler = ResumableSampler(len(self.dataset), cfg.seed, self.rank, self.world)
        sampler.set_epoch(self.epoch, start=self.step_in_epoch * cfg.batch_size)
        # own generator: starting a loader must not draw from the global RNG, which the
        # methods use (GSG pairing, MaskCo boxes) and resume restores
        loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            collate_fn=SkipBad(collate_raw if self.batch_aug else None),
            drop_last=True,
            pin_memory=self.cuda,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        return contextlib.closing(
            iter(
                DevicePrefetcher(
                    loader,
                    lambda item: self.device_batch(item, counter),
                    self.device,
                    threaded=self.cuda and cfg.workers > 0,
                    skip_none=False,
                )
            )
        )

    # -- epochs ------------------------------------------------------------------------
    def fit(self) -> Path | None:
        """Train until ``cfg.epochs``; returns the final checkpoint path (rank 0)."""
        if self.metrics is None:
            self.open_metrics(resumed=self.global_step > 0)
        try:
            with self.stop:
                if self.global_step == 0 and self.main and self.cfg.knn_every:
                    self.log("epoch", self.knn())
                while self.epoch < self.cfg.epochs:
                    self.dataset.set_epoch(self.epoch)
                    sums = self.run_epoch()
                    self.end_epoch(sums)
            return self.finish()
        finally:
            if self.metrics is not None:
                self.metrics.close()
                self.metrics = None

    def run_epoch(self) -> dict[str, float]:
        """The remaining steps of this epoch; returns the sums of the logged values."""
        from tqdm import tqdm

        cfg = self.cfg
        counter = BadCount()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.step_in_epoch,
            desc=f"{cfg.method} epoch {self.epoch + 1}/{cfg.epochs}",
            disable=not self.main,
            dynamic_ncols=True,
            leave=False,  # one line per finished epoch follows (end_epoch)
        )
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        with bar, self.batches(counter) as it:
            for batch in it:
                self.step_in_epoch += 1
                # every rank takes the same decision: a rank without a usable batch (all its
                # images unreadable) makes every rank skip this step, so none waits forever
                if not every_rank(batch is not None, self.device):
                    self.skipped_steps += 1
                    bar.update(1)
                    continue
                stats = self.train_step(batch[0], *batch[3:])
                if self.probe is not None:
                    self.probe.step(batch[1], self.probe_lr(stats["lr"]))
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                ips = batch[0][0].shape[0] * self.world / (time.perf_counter() - t0)
                t0 = time.perf_counter()
                self.progress(bar, stats, ips)
                if any_rank(
                    self.stop.requested
                    or (cfg.stop_after_steps and self.global_step >= cfg.stop_after_steps),
                    self.device,
                ):
                    self.save()
                    raise Interrupted(
                        f"stopped at epoch {self.epoch}, step {self.global_step}; "
                        f"resumable checkpoint {self.out / 'checkpoint.pth'}"
                    )
        self.check_bad_images(counter)
        return sums

    def progress(self, bar, stats: dict[str, float], ips: float) -> None:
        post = {k: f"{v:.3f}" for k, v in stats.items() if k.startswith("loss")}
        bar.set_postfix(post | {"lr": f"{stats['lr']:.2e}", "img/s": f"{ips:.1f}"}, refresh=False)
        bar.update(1)
        if self.global_step % self.cfg.log_every == 0:
            self.log(
                "step",
                {
                    **{f"train/{k}": v for k, v in stats.items() if k.startswith("loss")},
                    "lr": stats["lr"],
                    "train/ema_momentum": stats["tau"],
                    "train/images_seen": self.images_seen,
                    "train/img_per_s": ips,
                },
            )

    def end_epoch(self, sums: dict[str, float]) -> None:
        cfg = self.cfg
        n = max(1, self.step_in_epoch)
        self.epoch += 1
        self.step_in_epoch = 0
        record = {
            **{f"train/epoch_{k}": v / n for k, v in sums.items() if k.startswith("loss")},
            "data/bad_images": self.bad_images,
            "data/skipped_steps": self.skipped_steps,
        }
        probe_due = self.epoch == cfg.epochs or (cfg.knn_every and self.epoch % cfg.knn_every == 0)
        if cfg.knn_every and probe_due:
            record.update(self.knn())
        if self.probe is not None:
            record.update(self.probe.train_top1())
            if probe_due and self.main and self.data.query is not None:
                record.update(self.probe.evaluate(self.model.backbone, self.data.query,
                                                  cfg.image_size, self.device,
                                                  resize=cfg.eval_resize))  # fmt: skip
        self.log("epoch", record)
        if self.main:
            knn = {k: round(v, 2) for k, v in record.items() if k.startswith(("knn/", "probe/"))}
            loss = record.get("train/epoch_loss", math.nan)
            probes = " ".join(f"{k} {v:.2f}" for k, v in knn.items())
            print(f"epoch {self.epoch}/{cfg.epochs}: loss {loss:.4f} {probes}".rstrip(), flush=True)
        if self.epoch % cfg.save_every == 0 or self.epoch == cfg.epochs:
            self.save()

    def knn(self) -> dict[str, float]:
        if self.data.query is None or not self.main:
            return {}
        return knn_accuracy(
            self.model.backbone,
            self.data.bank,
            self.data.query,
            self.cfg.image_size,
            self.device,
            self.cfg.knn_k,
            self.cfg.knn_temperature,
            workers=min(self.cfg.workers, 4),
            limit_per_class=self.cfg.knn_limit_per_class,
            resize=self.cfg.eval_resize,
        )

    def check_bad_images(self, counter: BadCount) -> None:
        self.bad_images += counter.bad
        counter.check(
            self.cfg.max_bad_frac,
            f"in epoch {self.epoch}",
            f"check {self.train_dir}, or allow more with --max-bad-frac",
        )
        if counter.bad and self.main:
            print(
                f"skipped {counter.bad} unreadable image(s) this epoch ({self.bad_images} in all)"
            )

    def finish(self) -> Path | None:
        if not self.main:
            return None
        out = Path(self.cfg.out or self.out / f"{self.cfg.method}_{self.cfg.arch}.pth")
        exported = self.exported()
        checkpoint.save(out, exported)
        if self.cfg.keep_checkpoints == "final":  # the optimiser and targets are not needed
            checkpoint.save(self.out / "checkpoint.pth",
                            {**exported, "state": self.finished_state()})  # fmt: skip
        try:
            plot_curves(self.history, self.out / "curves.png")
        except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run
            print(f"(curves.png not written: {e})")
        print(f"wrote {out}")
        if self.cfg.results:
            summary = knn_summary(self.history)
            probe = probe_summary(self.history) if self.probe is not None else {}
            if probe:
                c = self.cfg
                probe.update(lr=c.probe_lr, views=c.probe_views, schedule=c.probe_schedule)
            seed_dir = write_knn_seed(self.cfg.results, self.cfg.to_json(), summary, out,
                                      self.global_batch, RESUME_FREE_KEYS, probe)  # fmt: skip
            if seed_dir is not None:
                best = {k: round(v, 2) for k, v in summary.items() if "best" in k}
                if probe:
                    best["probe/top1"] = round(probe["top1"], 2)
                print(f"kNN monitor {best} -> {seed_dir}", flush=True)
        return out


def run_lock_path(output: str | Path) -> Path:
    """The lock a launcher holds while the run in ``output`` trains (beside the folder)."""
    output = Path(output).resolve()
    return output.with_name(f"{output.name}.lock")


@contextlib.contextmanager
def held_run(output: str | Path, if_locked: str = "skip"):
    """Rank 0 holds the run's lock (``if_locked``: skip at once, or wait for the holder);
    every rank learns whether the run is theirs: yields True, or False (skip it)."""
    from common.locks import held_or_none

    rank, _, local_rank = dist_setup()
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if rank != 0:
        yield every_rank(True, device)
        return
    with held_or_none(run_lock_path(output), wait=if_locked == "wait") as lock:
        yield every_rank(lock is not None, device)


def run(cfg: PretrainConfig, if_locked: str = "skip") -> Path | None:
    """Build, resume if asked or if ``<output>/checkpoint.pth`` exists, and train, while
    holding the run's lock; a run another launcher holds is skipped (or waited for)."""
    with held_run(cfg.output, if_locked) as ours:
        if not ours:
            print(f"the run in {cfg.output} is training in another launcher "
                  f"({run_lock_path(cfg.output)} is held): skipped; --if-locked wait waits "
                  "for it, then resumes or re-exports it", flush=True)  # fmt: skip
            return None
        return _run(cfg)


def _run(cfg: PretrainConfig) -> Path | None:
    trainer = Trainer(cfg)
    resume = cfg.resume or (trainer.out / "checkpoint.pth")
    if Path(resume).exists():
        trainer.load(resume)
        if trainer.main:
            print(f"resumed from {resume}: epoch {trainer.epoch}, step {trainer.global_step}")
    elif cfg.resume:
        raise InputNotFound(f"--resume {cfg.resume}: no such checkpoint")
    if trainer.main:
        (trainer.out / "config.json").write_text(json.dumps(cfg.to_json(), indent=1))
    try:
        return trainer.fit()
    finally:
        if trainer.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
