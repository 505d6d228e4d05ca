"""The one training loop of every method: data, schedules, AMP, DDP, checkpoints, probes.

Run through ``python -m pretrain`` (one process) or ``torchrun --nproc_per_node=G -m
pretrain`` (DDP; SyncBN on CUDA). Only rank 0 writes. Outputs under ``--output``:
``checkpoint.pth`` (latest, resumable), ``metrics.jsonl``, ``config.json``, ``curves.png``,
and the final ``--out`` checkpoint that ``transfer.convert`` reads.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from common.atomic import atomic_torch_save
from pretrain.data import BadImageCounter, ResumableSampler, ViewsDataset, views_for
from pretrain.device_aug import DeviceAugment, DevicePrefetcher, decode_images
from pretrain.knn import knn_accuracy
from pretrain.maskco import MaskedPair
from pretrain.methods import METHODS, HeadConfig, build_method
from pretrain.schedules import lr_at, momentum_at

SUITE_FORMAT = "care-suite/pretrain"  # read by transfer.convert
INTERRUPTED_EXIT_CODE = 130
# config keys that may change between a run and its resumption
RESUME_FREE_KEYS = {"workers", "batch_aug", "knn_every", "save_every", "log_every", "out", "output",
                    "resume", "max_bad_frac", "knn_limit_per_class", "stop_after_steps"}


class NonFiniteLoss(RuntimeError):
    """A NaN/inf loss: the run stops; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """SIGINT / SIGTERM: a resumable checkpoint was written."""


@dataclass
class PretrainConfig:
    """Every setting of a run. ``None`` = the method's paper default
    (``Method.train_defaults`` / ``head_defaults``), filled in on construction."""

    method: str = "care"
    arch: str = "resnet50"
    data: str | None = None  # ImageFolder root (train/, val/); None = synthetic shapes
    output: str = "runs/pretrain"
    out: str | None = None  # final checkpoint path (default: <output>/<method>_<arch>.pth)
    epochs: int = 100
    batch_size: int = 128  # per process (GPU)
    base_lr: float | None = None
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float | None = None
    start_lr: float = 1e-6
    base_tau: float | None = None
    tau_schedule: str | None = None  # cosine (BYOL / CARE) | constant (BYOL-GSG, MaskCo)
    image_size: int = 224
    crop_scale: tuple[float, float] | None = None
    aug: str | None = None  # byol | simsiam
    fix_pred_lr: bool | None = None  # SimSiam: the predictor's lr is not scheduled
    amp: str = "auto"  # auto | bf16 | fp16 | none
    batch_aug: str = "auto"  # decode + augment on the device: auto (= on CUDA) | on | off
    channels_last: bool = True
    workers: int = 8
    seed: int = 0
    save_every: int = 10
    knn_every: int = 10
    knn_k: tuple[int, ...] = (20, 200)
    knn_temperature: float = 0.07
    knn_limit_per_class: int = 0
    log_every: int = 10
    max_bad_frac: float = 0.01
    resume: str | None = None
    stop_after_steps: int = 0  # testing / debugging: stop (with checkpoint) after N steps
    synthetic_size: int = 96  # image side of the generated shapes when no --data
    synthetic_per_class: int = 48
    heads: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; available: {sorted(METHODS)}")
        cls = METHODS[self.method]
        for key, value in cls.train_defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.crop_scale = tuple(self.crop_scale)
        if self.tau_schedule not in ("cosine", "constant"):
            raise ValueError(f"tau_schedule {self.tau_schedule!r}: cosine or constant")
        self.heads = self.heads.with_defaults(cls.head_defaults)
        if self.batch_aug not in ("auto", "on", "off"):
            raise ValueError(f"batch_aug {self.batch_aug!r}: auto, on or off")
        if self.batch_aug == "on" and cls.needs_boxes:
            raise ValueError(f"--batch-aug on: {self.method}'s views carry boxes and are made "
                             "in the loader workers; use --batch-aug off (or auto)")
        if self.batch_size < cls.min_batch:
            raise ValueError(f"--method {self.method} needs --batch-size >= {cls.min_batch} "
                             "per process: it pairs or contrasts images within the batch")


def _dist_setup() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun's environment; initialises the group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if world > 1 else 0
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_data(cfg: PretrainConfig) -> tuple[Path, Path | None]:
    """(train folder, val folder or None). Without --data, writes the synthetic shapes."""
    if cfg.data is None:
        from synthetic import ShapesSpec, generate

        spec = ShapesSpec(seed=cfg.seed, size=cfg.synthetic_size,
                          imagefolder={"train": cfg.synthetic_per_class,
                                       "val": max(4, cfg.synthetic_per_class // 3)},
                          voc2007={"trainval": 1, "test": 1}, voc2012={"trainval": 1},
                          coco={"train2017": 1, "val2017": 1})
        root = generate(Path(cfg.output) / "shapes", spec) / "imagefolder"
    else:
        root = Path(cfg.data)
    train_dir = root / "train"
    if not train_dir.is_dir():
        from pretrain.data import LAYOUT_HELP

        raise FileNotFoundError(f"{train_dir} not found; {LAYOUT_HELP}")
    val = root / "val"
    return train_dir, (val if val.is_dir() else None)


def _amp_dtype(cfg: PretrainConfig, device: str) -> torch.dtype | None:
    if cfg.amp == "none" or (cfg.amp == "auto" and device != "cuda"):
        return None
    if cfg.amp in ("auto", "bf16"):
        return torch.bfloat16
    if cfg.amp == "fp16":
        return torch.float16
    raise ValueError(f"--amp {cfg.amp!r}: auto, bf16, fp16 or none")


def final_checkpoint(model, cfg: PretrainConfig, epoch: int, images_seen: int,
                     history: list[dict]) -> dict:
    """The documented format: online backbone (torchvision names) + metadata."""
    knn = [h for h in history if h.get("type") == "epoch" and "knn_top1_k20" in h]
    return {
        "format": SUITE_FORMAT,
        "backbone": model.backbone.torchvision_state_dict(),
        "meta": {"method": model.name.upper(),
                 "method_key": model.name, "arch": cfg.arch, "epochs": epoch,
                 "images_seen": images_seen, "hparams": _jsonable(asdict(cfg)),
                 "knn": knn[-1] if knn else None},
    }


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


class Trainer:
    """State of one run; ``fit()`` trains to ``cfg.epochs`` from wherever the state is."""

    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        self.rank, self.world, local_rank = _dist_setup()
        self.main = self.rank == 0
        self.device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda"):
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)
        self.out = Path(cfg.output)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.train_dir, self.val_dir = resolve_data(cfg) if self.main else (None, None)
        if self.world > 1:  # rank 0 may have generated the data
            dist.barrier()
            self.train_dir, self.val_dir = resolve_data(cfg)
        needs_boxes = METHODS[cfg.method].needs_boxes
        pair = MaskedPair(cfg.heads) if needs_boxes else None
        views = views_for(cfg.aug, cfg.image_size, cfg.crop_scale)
        # --batch-aug: workers read bytes and draw; decoding and augmentation run batched
        # on the device (device_aug). auto: on CUDA, for the methods without boxes.
        self.batch_aug = cfg.batch_aug == "on" or (
            cfg.batch_aug == "auto" and self.device.startswith("cuda") and not needs_boxes)
        self.augment = DeviceAugment(views) if self.batch_aug else None
        self.dataset = ViewsDataset(self.train_dir, views, cfg.seed, pair, raw=self.batch_aug)
        self.global_batch = cfg.batch_size * self.world
        self.steps_per_epoch = len(self.dataset) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.dataset)} images in {self.train_dir} < one global "
                             f"batch of {self.global_batch}: lower --batch-size")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.lr = cfg.base_lr * self.global_batch / 256

        model = build_method(cfg.method, cfg.arch, cfg.heads).to(self.device)
        cuda = self.device.startswith("cuda")
        self.memory_format = torch.channels_last if (cuda and cfg.channels_last) \
            else torch.contiguous_format  # of the model and its input views
        if self.memory_format == torch.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.world > 1 and cuda:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if cuda else None) if self.world > 1 else model
        self.optimizer = torch.optim.SGD(model.param_groups(cfg.fix_pred_lr), lr=self.lr,
                                         momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                         foreach=True)
        self.amp_dtype = _amp_dtype(cfg, "cuda" if cuda else "cpu")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch, self.step_in_epoch, self.global_step, self.images_seen = 0, 0, 0, 0
        self.bad_images = 0
        self.history: list[dict] = []
        self._stop = False

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "images_seen": self.images_seen, "bad_images": self.bad_images,
                "rng": _rng_state(), "history": self.history,
                "config": _jsonable(asdict(self.cfg))}

    def save(self, path: Path | None = None) -> Path | None:
        if not self.main:
            return None
        path = path or self.out / "checkpoint.pth"
        ckpt = final_checkpoint(self.model, self.cfg, self.epoch, self.images_seen, self.history)
        ckpt["state"] = self.state_dict()
        atomic_torch_save(path, ckpt)
        return path

    def load(self, path: str | Path) -> None:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != SUITE_FORMAT or "state" not in ckpt:
            raise ValueError(f"{path} is not a resumable pretraining checkpoint of this suite")
        st = ckpt["state"]
        mine = _jsonable(asdict(self.cfg))
        for key in sorted(set(mine) | set(st["config"])):
            if key not in RESUME_FREE_KEYS and mine.get(key) != st["config"].get(key):
                raise ValueError(
                    f"cannot resume {path}: it was run with {key}={st['config'].get(key)!r}, "
                    f"this run has {key}={mine.get(key)!r}. Use the same flags, or another "
                    "--output for a new run.")
        self.model.load_state_dict(st["model"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scaler.load_state_dict(st["scaler"])
        self.epoch, self.step_in_epoch = st["epoch"], st["step_in_epoch"]
        self.global_step, self.images_seen = st["global_step"], st["images_seen"]
        self.bad_images, self.history = st["bad_images"], st["history"]
        _set_rng_state(st["rng"])

    # -- logging -----------------------------------------------------------------------
    def log(self, record: dict) -> None:
        self.history.append(record)
        if self.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # -- the loop ----------------------------------------------------------------------
    def _handle_signal(self, signum, frame):  # noqa: ARG002
        self._stop = True

    def _should_stop(self) -> bool:
        stop = self._stop or (self.cfg.stop_after_steps
                              and self.global_step >= self.cfg.stop_after_steps)
        if self.world > 1:
            t = torch.tensor([float(bool(stop))], device=self.device)
            dist.all_reduce(t)
            stop = t.item() > 0
        return bool(stop)

    def train_step(self, views: list[torch.Tensor], *extra: torch.Tensor) -> dict[str, float]:
        """One SGD step on a batch: views (N, 3, S, S) each; ``extra`` = MaskCo's boxes."""
        cfg = self.cfg
        lr = lr_at(self.global_step, self.total_steps, self.warmup_steps, self.lr, cfg.start_lr)
        tau = (momentum_at(self.global_step, self.total_steps, cfg.base_tau)
               if cfg.tau_schedule == "cosine" else cfg.base_tau)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr if g.get("fixed_lr") else lr
        views = [v.to(self.device, non_blocking=True, memory_format=self.memory_format)
                 for v in views]
        extra = [e.to(self.device, non_blocking=True) for e in extra]
        with torch.autocast(device_type=self.device.split(":")[0], dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None):
            losses = self.ddp(views, *extra)
        loss = losses["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.model.update_target(tau)
        # one host sync per step, after the update is queued (a check before the update
        # would stall the GPU between forward and backward): a non-finite loss stops the
        # run here, and the update it made is never saved
        values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()])
                          .tolist()))
        if not all(math.isfinite(v) for v in values.values()):
            raise NonFiniteLoss(
                f"loss is {values['loss']} at epoch {self.epoch}, step {self.global_step} "
                f"({values}); stopped, and this step's update is not saved. "
                f"The last good checkpoint is kept: {self.out / 'checkpoint.pth'}. Lower "
                "--base-lr, use --amp bf16 / none, or check the data.")
        self.global_step += 1
        self.images_seen += views[0].shape[0] * self.world
        return {"lr": lr, "tau": tau, **values}

    def knn(self) -> dict[str, float]:
        if self.val_dir is None or not self.main:
            return {}
        return knn_accuracy(self.model.backbone, self.train_dir, self.val_dir,
                            self.cfg.image_size, self.device, self.cfg.knn_k,
                            self.cfg.knn_temperature, workers=min(self.cfg.workers, 4),
                            limit_per_class=self.cfg.knn_limit_per_class)

    def fit(self) -> Path | None:
        """Train until ``cfg.epochs``; returns the final checkpoint path (rank 0)."""
        from tqdm import tqdm

        cfg = self.cfg
        previous = {s: signal.signal(s, self._handle_signal)
                    for s in (signal.SIGINT, signal.SIGTERM)}
        sampler = self._sampler()
        try:
            if self.global_step == 0 and self.main and cfg.knn_every:
                self.log({"type": "epoch", "epoch": 0, **self.knn()})
            while self.epoch < cfg.epochs:
                self.dataset.set_epoch(self.epoch)
                sampler.set_epoch(self.epoch, start=self.step_in_epoch * cfg.batch_size)
                counter = BadImageCounter(raw=self.batch_aug)
                # own generator: starting a loader must not draw from the global RNG, which
                # the methods use (GSG pairing, MaskCo boxes) and resume restores
                loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=sampler,
                                    num_workers=cfg.workers, collate_fn=counter, drop_last=True,
                                    pin_memory=self.device.startswith("cuda"),
                                    generator=torch.Generator().manual_seed(cfg.seed))
                bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch,
                           desc=f"{cfg.method} epoch {self.epoch + 1}/{cfg.epochs}",
                           disable=not self.main, dynamic_ncols=True)
                sums: dict[str, float] = {}
                t0 = time.perf_counter()
                # on CUDA the next batch is decoded / augmented / copied on a side stream
                # while this step runs (DevicePrefetcher); closed on any exit. Not with
                # --workers 0: the dataset would then draw views in that thread, from the
                # global RNG that the methods draw from in this one (GSG, MaskCo)
                batches = contextlib.closing(iter(DevicePrefetcher(
                    loader, lambda item, c=counter: self.device_batch(item, c), self.device,
                    threaded=self.device.startswith("cuda") and cfg.workers > 0)))
                with batches as it:
                    for batch in it:
                        views, extra = batch[0], batch[3:]
                        stats = self.train_step(views, *extra)
                        self.step_in_epoch += 1
                        for k, v in stats.items():
                            sums[k] = sums.get(k, 0.0) + v
                        ips = views[0].shape[0] * self.world / (time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items()
                                         if k.startswith("loss")} | {"lr": f"{stats['lr']:.2e}",
                                                                      "img/s": f"{ips:.1f}"},
                                        refresh=False)
                        bar.update(1)
                        if self.global_step % cfg.log_every == 0:
                            self.log({"type": "step", "epoch": self.epoch, "step": self.global_step,
                                      "images_seen": self.images_seen, "img_per_s": ips, **stats})
                        if self._should_stop():
                            bar.close()
                            self.save()
                            raise Interrupted(f"stopped at epoch {self.epoch}, step "
                                              f"{self.global_step}; resumable checkpoint "
                                              f"{self.out / 'checkpoint.pth'}")
                bar.close()
                self._check_bad_images(counter)
                n = max(1, self.step_in_epoch)
                self.epoch += 1
                self.step_in_epoch = 0
                record = {"type": "epoch", "epoch": self.epoch,
                          **{k: v / n for k, v in sums.items()}, "bad_images": self.bad_images}
                if cfg.knn_every and (self.epoch % cfg.knn_every == 0 or self.epoch == cfg.epochs):
                    record.update(self.knn())
                self.log(record)
                if self.main:
                    knn = {k: round(v, 2) for k, v in record.items() if k.startswith("knn")}
                    print(f"epoch {self.epoch}: loss {record.get('loss', math.nan):.4f} {knn}",
                          flush=True)
                if self.epoch % cfg.save_every == 0 or self.epoch == cfg.epochs:
                    self.save()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        return self.finish()

    @torch.no_grad()
    def device_batch(self, item, counter: BadImageCounter):
        """A loader item -> ``(views, labels, indices, *extra)`` on the device, or None
        (nothing readable). With ``--batch-aug`` the views are decoded and made here;
        otherwise the workers' views are copied over (channels_last on CUDA)."""
        batch = counter.take(item)
        if batch is None:
            return None
        if self.batch_aug:
            batch = self.device_views(batch, counter)
            if batch is None:
                return None
        views = [v.to(self.device, non_blocking=True, memory_format=self.memory_format)
                 for v in batch[0]]
        return (views, *batch[1:3], *[e.to(self.device, non_blocking=True) for e in batch[3:]])

    @torch.no_grad()
    def device_views(self, batch, counter: BadImageCounter):
        """A raw batch ``(payloads, params, labels, indices)`` -> ``(views, labels,
        indices)`` made on the device; images that do not decode are dropped and counted."""
        payloads, params, labels, indices = batch
        images = decode_images(payloads, self.device)
        ok = [i for i, im in enumerate(images) if im is not None]
        counter.bad += len(images) - len(ok)
        if len(ok) < METHODS[self.cfg.method].min_batch:
            return None
        if len(ok) < len(images):
            keep = torch.tensor(ok)
            images = [images[i] for i in ok]
            params = [{k: v[keep] for k, v in p.items()} for p in params]
            labels, indices = labels[keep], indices[keep]
        return self.augment(images, params), labels, indices

    def _sampler(self) -> ResumableSampler:
        return ResumableSampler(len(self.dataset), self.cfg.seed, self.rank, self.world)

    def _check_bad_images(self, counter: BadImageCounter) -> None:
        self.bad_images += counter.bad
        if counter.seen and counter.bad / counter.seen > self.cfg.max_bad_frac:
            raise RuntimeError(
                f"{counter.bad} of {counter.seen} images in epoch {self.epoch} could not be "
                f"read (> --max-bad-frac {self.cfg.max_bad_frac}); check {self.train_dir}")
        if counter.bad and self.main:
            print(f"skipped {counter.bad} unreadable image(s) this epoch "
                  f"({self.bad_images} in all)")

    def finish(self) -> Path | None:
        if not self.main:
            return None
        out = Path(self.cfg.out or self.out / f"{self.cfg.method}_{self.cfg.arch}.pth")
        atomic_torch_save(out, final_checkpoint(self.model, self.cfg, self.epoch,
                                                self.images_seen, self.history))
        try:
            plot_curves(self.history, self.out / "curves.png")
        except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run
            print(f"(curves.png not written: {e})")
        print(f"wrote {out}")
        return out


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss per logged step and kNN accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h for h in history if h["type"] == "step"]
    epochs = [h for h in history if h["type"] == "epoch" and "knn_top1_k20" in h]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in sorted({k for h in steps for k in h if k.startswith("loss")}):
        a.plot([h["step"] for h in steps], [h[key] for h in steps], label=key)
    a.set_xlabel("step")
    losses = [v for h in steps for k, v in h.items() if k.startswith("loss")]
    if losses and min(losses) > 0:  # SimSiam's negative cosine is negative
        a.set_yscale("log")
    if steps:
        a.legend(fontsize=7)
    for key in sorted({k for h in epochs for k in h if k.startswith("knn")}):
        b.plot([h["epoch"] for h in epochs], [h[key] for h in epochs], marker="o", label=key)
    b.set_xlabel("epoch")
    b.set_ylabel("kNN top-1 (%)")
    if epochs:
        b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg: PretrainConfig) -> Path | None:
    """Build, resume if asked or if ``<output>/checkpoint.pth`` exists, and train."""
    trainer = Trainer(cfg)
    resume = cfg.resume or (trainer.out / "checkpoint.pth")
    if Path(resume).exists():
        trainer.load(resume)
        if trainer.main:
            print(f"resumed from {resume}: epoch {trainer.epoch}, step {trainer.global_step}")
    elif cfg.resume:
        raise FileNotFoundError(f"--resume {cfg.resume}: no such checkpoint")
    if trainer.main:
        (trainer.out / "config.json").write_text(json.dumps(_jsonable(asdict(cfg)), indent=1))
    try:
        return trainer.fit()
    finally:
        if trainer.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
