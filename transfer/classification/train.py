"""One seed of a classification protocol: train (or, for kNN, extract), evaluate, record.

``train_cls_seed(spec)`` runs in each process of the seed (one per GPU; detectron2's
``launch`` or torchrun started them). It writes into the seed folder, on the main process:
``config.yaml`` (the resolved protocol), ``log.txt``, ``train_metrics.jsonl`` (one line per
epoch), ``checkpoint.pth`` (after every epoch: what is trained, the optimiser, the history),
``environment.json`` and, last, ``metrics.json``. A re-run resumes after the last finished
epoch (every epoch's data order and augmentations derive from the seed and the epoch, so a
resumed run ends where an uninterrupted one does). SIGINT / SIGTERM stop at the next step
and keep the last epoch's checkpoint; a NaN / inf loss fails the seed.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from common.archs import get_arch
from common.atomic import atomic_torch_save, atomic_write_json
from common.badimages import SkipBad
from common.checkpoints import load_any
from common.cli import ConfigError, Interrupted
from common.distributed import any_rank
from common.sessions import recorded_session, session_totals
from common.signals import StopFlag
from common.syncnorm import synchronise_norms
from transfer.classification import data as D
from transfer.classification.knn import gather_rows, normalise, sharded_knn_scores, topk_correct
from transfer.classification.models import (
    LinearHead,
    MultiHead,
    load_backbone,
    synchronise_head_bn,
)
from transfer.classification.protocols import ClsProtocol, resolve
from transfer.environment import environment_record
from transfer.keep import prune_seed_checkpoints
from transfer.spec import SeedSpec

PAPER_STAGE = {"conv1": "conv1", "res2": "conv2", "res3": "conv3", "res4": "conv4", "res5": "conv5"}


class NonFiniteLoss(RuntimeError):
    """The loss became NaN / inf: the seed fails, the others go on."""


def lr_at(p: ClsProtocol, step: int, epoch: int, steps_per_epoch: int) -> float:
    """The lr of optimiser step ``step`` (0-based, global) in ``epoch`` (0-based).

    cosine: ``lr * 0.5 * (1 + cos(pi * step / total))`` per iteration (CARE's
    ``adjust_learning_rate_iter``: the first step uses the base lr); step: ``lr * 0.1 ** m``
    with m the milestones reached by ``epoch``."""
    if p.schedule == "cosine":
        total = max(p.epochs * steps_per_epoch, 1)
        return p.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    return p.lr * 0.1 ** sum(epoch >= m for m in p.milestones)


class SeedLog:
    """Lines to ``log.txt`` and, unless ``console=False`` (per-epoch detail), to stdout
    (main process)."""

    def __init__(self, seed_dir: Path, main: bool):
        self.path, self.main = seed_dir / "log.txt", main

    def __call__(self, msg: str, console: bool = True) -> None:
        if self.main:
            if console:
                print(msg, flush=True)
            with open(self.path, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")


class Run:
    """What one seed's processes share: protocol, data, model, device, rank."""

    def __init__(self, spec: SeedSpec):
        self.spec = spec
        self.p = resolve(spec.protocol, spec.smoke, spec.opts)
        self.dir = Path(spec.seed_dir)
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.main = self.rank == 0
        if spec.device == "cuda":
            local = int(os.environ.get("LOCAL_RANK", self.rank % max(torch.cuda.device_count(), 1)))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = SeedLog(self.dir, self.main)
        root = Path(spec.data)
        self.classes, self.train_samples, self.val_samples = D.check_layout(root)
        if self.p.kind == "finetune":
            subset = Path(spec.subset_file or root / f"{self.p.subset}.txt")
            self.train_samples = D.read_subset(subset, self.train_samples)
        arch = get_arch(spec.arch) if spec.arch else None
        self.backbone, n = load_backbone(spec.weights, arch, spec.allow_pickle)
        self.arch = self.backbone.arch
        self.backbone.to(self.device)
        if self.device.type == "cuda":  # NHWC convolutions, cuDNN's autotuned kernels
            self.backbone.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        if n:
            self.log(f"backbone loaded and verified: {n} tensors equal {spec.weights}")
        else:
            self.log(f"backbone: random initialisation ({self.arch.name})")
        self.amp = spec.amp and self.device.type == "cuda"

    def to_device(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) on the device; images channels-last on CUDA."""
        x, y = batch
        x = x.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp)

    def loader(self, samples, transform, batch: int, train: bool, epoch: int = 0):
        """A loader over this process's shard: the epoch's shuffled share when training,
        every world-th image otherwise (no padding, so each image counts once)."""
        ds = D.Images(samples, transform)
        g = torch.Generator().manual_seed(self.spec.seed * 100_003 + epoch)
        if train:
            sampler = DistributedSampler(ds, self.world, self.rank, True, self.spec.seed)
            sampler.set_epoch(epoch)
        else:
            sampler = None
            ds = Subset(ds, list(range(self.rank, len(ds), self.world)))
        return DataLoader(
            ds,
            batch_size=batch,
            sampler=sampler,
            shuffle=False,
            num_workers=self.p.workers,
            collate_fn=SkipBad(),
            drop_last=train and self.p.drop_last,
            generator=g,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def write_config(self) -> None:
        if not self.main:
            return
        cfg = {
            "protocol": self.p.to_json(),
            "data": str(Path(self.spec.data).resolve()),
            "subset_file": self.spec.subset_file,
            "classes": len(self.classes),
            "train_images": len(self.train_samples),
            "val_images": len(self.val_samples),
            "arch": self.arch.key,
            "world_size": self.world,
            "amp": self.amp,
            "MODEL": {"WEIGHTS": self.spec.weights},
            "SEED": self.spec.seed,
            "OUTPUT_DIR": str(self.dir),
        }
        (self.dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(run: Run, net: nn.Module) -> dict[str, float]:
    """Top-1 / top-5 (%) on the val split per head output, over all processes."""
    p = run.p
    net.eval()
    stages = p.stages
    counts = {s: [0.0, 0.0] for s in stages}
    total = 0
    bad = D.BadCounter(p.max_bad_frac, "the val split")
    loader = run.loader(
        run.val_samples, D.eval_transform(p.val_resize, p.crop), p.eval_batch_size, False
    )
    for item in loader:
        batch = bad.take(item)
        if batch is None:
            continue
        x, y = run.to_device(batch)
        with run.autocast():
            logits = net(x)
        for s in stages:
            c = topk_correct(logits[s].float(), y)
            counts[s][0] += c[1]
            counts[s][1] += c[5]
        total += y.shape[0]
    bad.check_end()
    flat = _reduce_sum([total] + [v for s in stages for v in counts[s]], run.device)
    total, rest = flat[0], flat[1:]
    out = {}
    for k, s in enumerate(stages):
        prefix = "" if p.kind != "multilayer" else f"{PAPER_STAGE[s]}_"
        out[f"{prefix}top1"] = 100.0 * rest[2 * k] / max(total, 1)
        out[f"{prefix}top5"] = 100.0 * rest[2 * k + 1] / max(total, 1)
    out["val_images"] = int(total)
    return out


def build_head(run: Run) -> nn.Module:
    p = run.p
    torch.manual_seed(run.spec.seed)  # the head's init depends on the seed alone
    classes = len(run.classes)
    if p.head == "multihead":
        return MultiHead(run.arch, p.stages, classes, p.pool, p.crop)
    return LinearHead(run.arch.feature_dim, classes, bn=p.head == "linear_bn")


class Probe(nn.Module):
    """Backbone + head as one module (what DDP wraps): (N, 3, H, W) -> {stage: logits}.

    A frozen backbone runs without gradients and stays in eval mode in ``train()``; only
    the head's parameters require gradients, so DDP all-reduces those alone."""

    def __init__(self, backbone: nn.Module, head: nn.Module, stages: tuple, frozen: bool):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.stages, self.frozen = stages, frozen
        if frozen:
            for prm in backbone.parameters():
                prm.requires_grad_(False)

    def train(self, mode: bool = True) -> Probe:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict:
        if self.frozen:
            with torch.no_grad():
                feats = self.backbone(x, self.stages)
        else:
            feats = self.backbone(x, self.stages)
        return self.head(feats)


def _checkpoint_state(run: Run, probe: Probe, optimizer, epoch: int, history: list) -> dict:
    state = {"epoch": epoch, "head": probe.head.state_dict(), "history": history}
    state["optimizer"] = optimizer.state_dict()
    if not probe.frozen:
        state["backbone"] = probe.backbone.state_dict()
    state["protocol"] = run.p.to_json()
    return state


def _resume(run: Run, probe: Probe, optimizer) -> tuple[int, list]:
    path = run.dir / "checkpoint.pth"
    if not path.exists():
        return 0, []
    state = load_any(path, allow_pickle=False)
    if state.get("protocol") != run.p.to_json():
        raise ConfigError(
            f"{path} was written with other protocol settings; delete the seed folder "
            f"{run.dir} to start it again"
        )
    probe.head.load_state_dict(state["head"])
    if "backbone" in state:
        probe.backbone.load_state_dict(state["backbone"])
    optimizer.load_state_dict(state["optimizer"])
    run.log(f"resuming seed {run.spec.seed_index} after epoch {state['epoch']}")
    return int(state["epoch"]), list(state["history"])


def _distributed(run: Run, probe: Probe) -> nn.Module:
    """The module the loop calls: DDP over the probe when several processes train."""
    if run.world == 1:
        return probe
    if run.p.head == "multihead":  # OpenSelfSup: the heads' BatchNorm over the global batch
        probe.head = synchronise_head_bn(probe.head, run.device.type == "cuda")
    if not probe.frozen and run.p.sync_bn:
        probe.backbone = synchronise_norms(probe.backbone, run.device.type == "cuda")
    ids = [run.device.index] if run.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(probe, device_ids=ids)


def _train_step(run: Run, net: nn.Module, optimizer, x, y, lr: float, where: str):
    """One SGD step at ``lr`` on the batch (x, y); returns (loss, logits per head).
    ``NonFiniteLoss`` (naming ``where`` and the lr) on every rank when any rank's is."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    with run.autocast():
        logits = net(x)
        loss = sum(F.cross_entropy(v.float(), y) for v in logits.values())
    if any_rank(not bool(torch.isfinite(loss)), run.device):
        raise NonFiniteLoss(
            f"loss is {loss.item()} at {where} (lr {lr:.4g}); the seed failed: check the "
            "weights, or lower lr_per_256"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def train_epoch(run: Run, net: nn.Module, optimizer, epoch: int, stop: StopFlag) -> dict:
    """One epoch; returns its training record (loss, top-1 of the first head, lr, img/s)."""
    from tqdm import tqdm

    p = run.p
    torch.manual_seed(run.spec.seed * 100_003 + epoch * 1_009 + run.rank)  # the augmentations
    per_rank = max(p.batch_size // run.world, 1)
    loader = run.loader(
        run.train_samples, D.train_transform(p.train_aug, p.crop), per_rank, True, epoch
    )
    steps = len(loader)
    net.train()
    bad = D.BadCounter(p.max_bad_frac, f"the train split (epoch {epoch + 1})")
    bar = tqdm(
        total=steps,
        desc=f"seed {run.spec.seed_index} epoch {epoch + 1}/{p.epochs}",
        unit="it",
        disable=not run.main,
        dynamic_ncols=True,
        leave=False,  # the epoch's line goes to log.txt; the runner prints the seed's
    )
    loss_sum = correct = seen = 0.0
    t0 = time.perf_counter()
    lr = lr_at(p, epoch * steps, epoch, steps)
    for i, item in enumerate(loader):
        batch = bad.take(item)
        if batch is None:
            bar.update(1)
            continue
        lr = lr_at(p, epoch * steps + i, epoch, steps)
        x, y = run.to_device(batch)
        loss, logits = _train_step(
            run, net, optimizer, x, y, lr, f"epoch {epoch + 1}, step {i + 1}"
        )
        first = logits[p.stages[-1]]
        correct += float((first.argmax(1) == y).sum())
        loss_sum += float(loss.detach()) * y.shape[0]
        seen += y.shape[0]
        dt = time.perf_counter() - t0
        bar.set_postfix(
            {
                "loss": f"{loss.item():.3f}",
                "lr": f"{lr:.3g}",
                "img/s": f"{seen * run.world / dt:.1f}",
            },
            refresh=False,
        )
        bar.update(1)
        if any_rank(stop.requested, run.device):
            bar.close()
            raise Interrupted(
                f"stopped by signal in epoch {epoch + 1}; the checkpoint of epoch {epoch} is "
                "kept: re-run the same command to resume"
            )
    bar.close()
    bad.check_end()
    tot = _reduce_sum([loss_sum, correct, seen], run.device)
    return _epoch_record(epoch, steps, tot, lr, time.perf_counter() - t0, bad.bad)


def _epoch_record(epoch: int, steps: int, tot: list, lr: float, secs: float, bad: int) -> dict:
    """An epoch's training record from the ranks' summed (loss x n, correct, n)."""
    return {
        "epoch": epoch + 1,
        "iteration": (epoch + 1) * steps,
        "loss": tot[0] / max(tot[2], 1),
        "train_top1": 100.0 * tot[1] / max(tot[2], 1),
        "lr": lr,
        "images": int(tot[2]),
        "img_per_s": tot[2] / max(secs, 1e-9),
        "seconds": round(secs, 2),
        "bad_images": bad,
    }


def epoch_scalars(rec: dict) -> dict:
    """An epoch's record under the suite's metric keys (``train/loss``, ``eval/top1``)."""
    out = {
        "train/loss": rec["loss"],
        "train/top1": rec["train_top1"],
        "lr": rec["lr"],
        "train/images": rec["images"],
        "train/img_per_s": rec["img_per_s"],
        "train/seconds": rec["seconds"],
        "data/bad_images": rec["bad_images"],
    }
    out.update({f"eval/{k}": v for k, v in rec.get("eval", {}).items()})
    return out


def fit(run: Run) -> dict:
    """Train the protocol's head (and, fine-tuning, the backbone); the final evaluation."""
    p = run.p
    probe = Probe(run.backbone, build_head(run), p.stages, frozen=p.kind != "finetune")
    probe.to(run.device)
    params = [prm for prm in probe.parameters() if prm.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov, weight_decay=p.weight_decay
    )
    start, history = _resume(run, probe, optimizer)
    net = _distributed(run, probe)
    log = None
    if run.main:  # the lines of finished epochs only (a partial epoch is redone)
        resume = history[-1].get("iteration", 0) if history else None
        log = run.spec.metrics_log(resume, str(run.dir))
    result = {}
    with StopFlag() as stop, contextlib.ExitStack() as closing:
        if log is not None:
            closing.callback(log.close)
        for epoch in range(start, p.epochs):
            rec = train_epoch(run, net, optimizer, epoch, stop)
            last = epoch + 1 == p.epochs
            if last or (p.eval_every and (epoch + 1) % p.eval_every == 0):
                result = evaluate(run, net)
                rec["eval"] = result
            history.append(rec)
            if run.main:
                state = _checkpoint_state(run, probe, optimizer, epoch + 1, history)
                atomic_torch_save(run.dir / "checkpoint.pth", state)
                log.write(epoch_scalars(rec), rec["iteration"], rec["epoch"])
            run.log(
                f"epoch {epoch + 1}/{p.epochs}: loss {rec['loss']:.4f} train top-1 "
                f"{rec['train_top1']:.2f} lr {rec['lr']:.4g} {rec['img_per_s']:.1f} img/s"
                + (f"; val {_fmt(result)}" if "eval" in rec else ""),
                console=False,
            )
    if not result:  # resumed after the last epoch's checkpoint but before metrics.json
        result = evaluate(run, net)
    evals = [h["eval"] for h in history if "eval" in h]
    key = "top1" if p.kind != "multilayer" else "conv5_top1"
    result = dict(result)
    result["best_top1"] = max([e[key] for e in evals] + [result[key]])
    return {"cls": result, "epochs": p.epochs, "history_epochs": len(history)}


@torch.no_grad()
def run_knn(run: Run) -> dict:
    """Features of both splits once (sharded over processes), then kNN for every k."""
    from tqdm import tqdm

    p = run.p
    model = run.backbone.eval()
    tf = D.eval_transform(p.val_resize, p.crop, square=p.square_resize)
    per_rank = max(p.batch_size // run.world, 1)
    feats = {}
    t0 = time.perf_counter()
    for split, samples in (("train", run.train_samples), ("val", run.val_samples)):
        bad = D.BadCounter(p.max_bad_frac, f"the {split} split")
        fs, ys = [], []
        loader = run.loader(samples, tf, per_rank, False)  # image rank, rank + world, ...
        for item in tqdm(loader, desc=f"features {split}", disable=not run.main, leave=False):
            batch = bad.take(item)
            if batch is None:
                continue
            x, y = run.to_device(batch)
            with run.autocast():
                f = model(x)["res5"]
            fs.append(normalise(f))
            ys.append(y)
        bad.check_end()
        f_all = torch.cat(fs) if fs else torch.zeros(0, run.arch.feature_dim, device=run.device)
        y_all = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.long, device=run.device)
        feats[split] = (f_all, y_all)
    secs = time.perf_counter() - t0
    (bank, bank_y), (query, query_y) = feats["train"], feats["val"]
    # each process keeps its shard of the bank; the (smaller) val split goes to every process
    query, query_y = gather_rows(query), gather_rows(query_y)
    n_bank = int(_reduce_sum([bank.shape[0]], run.device)[0])
    out = {}
    for k in p.knn_ks:
        scores = sharded_knn_scores(query, bank, bank_y, len(run.classes), k, p.knn_temperature)
        c = topk_correct(scores, query_y)
        out[f"k{k}_top1"] = 100.0 * c[1] / max(query.shape[0], 1)
        out[f"k{k}_top5"] = 100.0 * c[5] / max(query.shape[0], 1)
    out["bank_images"], out["val_images"] = n_bank, int(query.shape[0])
    n_img = n_bank + query.shape[0]  # both splits, all processes
    run.log(f"kNN: {_fmt(out)} ({n_img / max(secs, 1e-9):.1f} img/s feature extraction)")
    return {"cls": out, "epochs": 0}


def _fmt(m: dict) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in m.items() if isinstance(v, float))


def train_cls_seed(spec: SeedSpec) -> dict | None:
    """Run one seed in this process (one of ``world`` when distributed)."""
    run = Run(spec)
    run.write_config()
    with recorded_session(run.dir, run.main):
        res = run_knn(run) if run.p.kind == "knn" else fit(run)
    if not run.main:
        return None
    metrics = {
        "protocol": spec.protocol_name,
        "base_protocol": spec.protocol,
        "family": "classification",
        "variant": "smoke" if spec.smoke else "full",
        "dataset": spec.dataset,
        "weights": spec.weights_info,
        "arch": run.arch.name,
        "seed_index": spec.seed_index,
        "seed": spec.seed,
        "world_size": run.world,
        "amp": run.amp,
        **session_totals(run.dir),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **res,
    }
    atomic_write_json(run.dir / "environment.json", environment_record())
    atomic_write_json(run.dir / "metrics.json", metrics)
    prune_seed_checkpoints(run.dir, run.spec.keep_checkpoints)
    return metrics
