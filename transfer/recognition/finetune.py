"""ssl-transfer's many-shot fine-tuning (``finetune.py``): the whole ResNet plus a linear
head trained per (lr, weight decay) of its 20-run grid on train, scored on val; the best
retrained from the checkpoint on trainval and scored on test.

Every run: ``FinetuneNet`` (the backbone, BatchNorm in train mode, average pool, a fresh
``Linear(C, K)``) with SGD (Nesterov, momentum 0.9, weight decay on every parameter) and
``CosineAnnealingLR(T_max=steps)`` stepped after every step; ``steps`` batches drawn epoch
after epoch from a shuffled loader (the last batch of an epoch is short, as a DataLoader
without ``drop_last`` gives it); cross-entropy, or BCE-with-logits for multi-label VOC2007.
Evaluation in eval mode with ssl-transfer's metrics on the logits.

Determinism and resumption: each run's head initialisation, batch order and every image's
augmentation are drawn from seeds derived from (seed, run, epoch, position), so a run is the
same in any number of loader workers, and a run stopped at step k (SIGTERM, or a crash
between the checkpoints written every ``checkpoint_every`` steps) resumes at step k and
ends with the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from common.atomic import atomic_torch_save, atomic_write_json
from common.badimages import open_rgb
from common.cli import BadInput, Interrupted
from common.distributed import world
from common.metrics import MetricsLog
from common.signals import StopFlag
from transfer.backbone import load_backbone, stage_channels
from transfer.recognition import datasets as D
from transfer.recognition.features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SplitImages,
    eval_transform,
)
from transfer.recognition.metrics import METRIC_NAMES, accuracy, mean_ap11, mean_per_class_accuracy
from transfer.recognition.protocols import RecProtocol, finetune_grid


def train_transform(size: int, normalise: bool, augment: bool) -> T.Compose:
    """RandomResizedCrop(size, bicubic) + horizontal flip (``augment``), else the eval
    transform; ToTensor, Normalize."""
    if not augment:
        return eval_transform(size, normalise)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalise else ((0.0,) * 3, (1.0,) * 3)
    return T.Compose([
        T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])  # fmt: skip


class FinetuneNet(nn.Module):
    """backbone -> average-pooled res5 (N, C) -> Linear(C, classes) logits (N, classes)."""

    def __init__(self, backbone: nn.Module, classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(stage_channels(backbone.arch)["res5"], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x, stages=("res5",))["res5"]
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1))


def mix(*ints: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence)."""
    return int(np.random.SeedSequence(list(ints)).generate_state(2, np.uint32).view(np.uint64)[0]
               >> np.uint64(1))  # fmt: skip


def step_batches(n: int, batch: int, steps: int, seed: int) -> list[list[tuple[int, int]]]:
    """``steps`` batches of (position, augmentation seed): epoch e is a permutation of
    range(n) from seed (seed, e), cut into batches of ``batch`` (the last one short)."""
    out: list[list[tuple[int, int]]] = []
    epoch = 0
    while len(out) < steps:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix(seed, epoch)))
        for k in range(0, n, batch):
            out.append([(int(i), mix(seed, epoch, int(i))) for i in perm[k : k + batch]])
            if len(out) == steps:
                break
        epoch += 1
    return out


class AugmentedImages(Dataset):
    """Items (position, seed) -> (augmented image, label): the augmentation draws from torch's
    RNG seeded with ``seed``, wherever (and in whichever worker) it runs."""

    def __init__(self, samples: D.Samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]):
        from PIL import Image

        i, seed = item
        s = self.samples
        if s.arrays is not None:
            img = Image.fromarray(s.arrays[i])
        else:
            img = open_rgb(s.paths[i])
            if img is None:
                raise BadInput(f"{s.paths[i]}: unreadable image; replace or re-download it")
        torch.manual_seed(seed)
        return self.transform(img), torch.as_tensor(s.labels[i])


def _score(logits: torch.Tensor, labels: np.ndarray, metric: str, absent_class_nan: bool):
    if metric == "map11":  # a diverged run's NaN scores have no AP (ssl-transfer: a crash)
        return mean_ap11(labels, logits.numpy()) if torch.isfinite(logits).all() else math.nan
    pred = logits.argmax(1).numpy()
    if metric == "mean_per_class":
        return mean_per_class_accuracy(labels, pred, absent_class_nan)
    return accuracy(labels, pred)


@torch.no_grad()
def evaluate(net: FinetuneNet, samples: D.Samples, p: RecProtocol, metric: str,
             device: torch.device) -> float:  # fmt: skip
    """The metric of ``net`` (eval mode) on ``samples`` under the evaluation transform."""
    net.eval()
    loader = DataLoader(SplitImages(samples, eval_transform(p.image_size, p.normalise)),
                        batch_size=p.batch_size, num_workers=p.workers)  # fmt: skip
    logits = torch.cat([net(x.to(device)).float().cpu() for x, _ in loader])
    net.train()
    return _score(logits, samples.labels, metric, p.absent_class_nan)


def _optimiser(net: FinetuneNet, p: RecProtocol, lr: float, wd: float, ckpt: Path):
    """ssl-transfer's SGD (Nesterov) and per-step cosine over ``p.steps``; restored from
    ``ckpt`` (weights too) when it exists. Returns (optimiser, scheduler, first step)."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=p.momentum, nesterov=True,
                          weight_decay=wd)  # fmt: skip
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=p.steps)
    if not ckpt.is_file():
        return opt, sched, 0
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return opt, sched, state["step"]


def _diverge(opt, loss: torch.Tensor, step: int, desc: str, lr: float, wd: float) -> int:
    """A NaN / inf loss: ssl-transfer's finetune.py takes the step (its weights become NaN,
    and stay NaN for the rest of the run) and scores the run as it ends; the same step
    here, and the run stops (its remaining steps could not change the weights)."""
    loss.backward()
    opt.step()
    print(f"{desc}: the loss became {loss.item()} at step {step} (lr {lr:g}, weight decay "
          f"{wd:g}): the run diverged; scored as it is, as ssl-transfer does",
          flush=True)  # fmt: skip
    return step


def train_run(net: FinetuneNet, samples: D.Samples, p: RecProtocol, lr: float, wd: float,
              seed: int, ckpt: Path, stop: StopFlag, device: torch.device, desc: str,
              multilabel: bool, metrics: Callable[[int | None], MetricsLog] | None = None,
              ) -> int | None:  # fmt: skip
    """``p.steps`` SGD steps of ``net`` on ``samples``, resuming from ``ckpt`` when it is
    there; a stop request checkpoints and raises Interrupted. ``metrics(resume)`` opens the
    run's own metrics log (truncated to the resumed step), which gets ``train/loss``, ``lr``
    (the step's) and ``train/img_per_s`` every ``p.log_every`` steps and at the last.
    Returns None, or the step whose loss was not finite (the run diverged: ``_diverge``)."""
    from tqdm import tqdm

    opt, sched, start = _optimiser(net, p, lr, wd, ckpt)

    def save(step: int) -> None:
        atomic_torch_save(ckpt, {"model": net.state_dict(), "optimizer": opt.state_dict(),
                                 "scheduler": sched.state_dict(), "step": step})  # fmt: skip

    batches = step_batches(len(samples), p.batch_size, p.steps, seed)[start:]
    loader = DataLoader(AugmentedImages(samples, train_transform(p.image_size, p.normalise,
                                                                 p.augment)),
                        batch_sampler=batches, num_workers=p.workers)  # fmt: skip
    criterion = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    net.train()
    t0, step = time.perf_counter(), start
    mlog = metrics(start or None) if metrics is not None else nullcontext()
    # one bar on the console: the main process's (the others' runs log their scores)
    bar = tqdm(total=p.steps, initial=start, desc=desc, unit="step", dynamic_ncols=True,
               leave=False, disable=world()[0] != 0)  # fmt: skip
    with mlog, bar:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            out = net(x)
            loss = criterion(out, y.float() if multilabel else y)
            if not torch.isfinite(loss):
                return _diverge(opt, loss, step + 1, desc, lr, wd)
            loss.backward()
            step_lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            rate = (step - start) * p.batch_size / (time.perf_counter() - t0)
            value = loss.item()
            bar.set_postfix_str(f"loss {value:.3f} lr {opt.param_groups[0]['lr']:.2g} "
                                f"{rate:.1f} img/s")  # fmt: skip
            if metrics is not None and (step % max(p.log_every, 1) == 0 or step == p.steps):
                mlog.write({"train/loss": value, "lr": step_lr, "train/img_per_s": rate}, step)
            if stop.requested and step < p.steps:
                save(step)
                raise Interrupted(f"{desc}: stopped at step {step} of {p.steps}; re-run the "
                                  "same command to resume")  # fmt: skip
            if p.checkpoint_every and step % p.checkpoint_every == 0 and step < p.steps:
                save(step)


def _fresh_net(spec, classes: int, seed: int, device: torch.device) -> FinetuneNet:
    from common.archs import get_arch

    backbone, _ = load_backbone(spec.weights, get_arch(spec.arch) if spec.arch else None,
                                spec.allow_pickle)  # fmt: skip
    torch.manual_seed(seed)  # the head's initialisation
    return FinetuneNet(backbone, classes).to(device)


def run_metrics(spec, folder: Path, part: str) -> Callable[[int | None], MetricsLog]:
    """The metrics log of one training of the seed (grid run ``run<k>`` or ``final``):
    ``train_runs/<part>/`` in the seed folder, one TensorBoard run each."""
    return lambda resume: spec.metrics_log(resume, str(folder / "train_runs" / part), part)


def _fit_sets(spec, p: RecProtocol) -> tuple[dict, bool, int]:
    """The train / val / trainval / test samples, whether the task is multi-label, and the
    head's class count: the dataset's (ssl-transfer's table), or in the smoke variant the
    synthetic twin's (fewer classes)."""
    info = D.INFO[spec.task]
    parts = {s: D.read_split(spec.task, spec.data, s, caltech101_split=p.caltech101_split)
             for s in D.source_splits(spec.task)}  # fmt: skip
    sets = D.fit_samples(spec.task, parts)
    multilabel = info.metric == "map11"
    classes = info.classes
    if p.smoke and not multilabel:
        classes = int(sets["trainval"].labels.max()) + 1
    return sets, multilabel, classes


def _grid_run(spec, p: RecProtocol, folder: Path, k: int, sets: dict, fit: tuple, stop,
              log) -> dict:  # fmt: skip
    """Grid run ``k`` on train, scored on val; its record also in ``finetune_runs``."""
    info = D.INFO[spec.task]
    grid, multilabel, classes, device = fit
    lr, wd = grid[k]
    net = _fresh_net(spec, classes, mix(spec.seed, k, 0), device)
    ckpt = folder / f"run{k}.pt"
    diverged = train_run(net, sets["train"], p, lr, wd, mix(spec.seed, k, 1), ckpt, stop, device,
                         f"{spec.task} run {k + 1}/{len(grid)}", multilabel,
                         metrics=run_metrics(spec, folder, f"run{k}"))  # fmt: skip
    val = evaluate(net, sets["val"], p, info.metric, device)
    record = {"run": k, "lr": lr, "wd": wd, "val": val,
              **({"diverged_at": diverged} if diverged else {})}  # fmt: skip
    atomic_write_json(folder / "finetune_runs" / f"run{k}.json", record)
    ckpt.unlink(missing_ok=True)
    log(f"run {k + 1}/{len(grid)} lr {lr:.4g} wd {wd:.4g}: val {val:.2f}")
    return record


def finished_runs(folder: Path) -> dict[int, dict]:
    """The grid runs finished in ``folder`` (one record file each; an older seed's
    ``finetune_state.json`` list too)."""
    state = folder / "finetune_state.json"
    runs = {r["run"]: r for r in json.loads(state.read_text())["runs"]} if state.is_file() else {}
    for f in sorted((folder / "finetune_runs").glob("run*.json")):
        r = json.loads(f.read_text())
        runs[r["run"]] = r
    return runs


def grid_records(spec, p: RecProtocol, folder: Path, fit: tuple, sets: dict, stop, log,
                 mlog) -> list[dict]:  # fmt: skip
    """Every grid run's record, in grid order. The runs still to train are shared out over
    the processes (the i-th of them on process i mod world), each run seeded by its index
    alone: the same runs and scores as one process. The main process writes the grid's
    metrics (one line per run, in order) and ``finetune_state.json``."""
    rank, size = world()
    grid = fit[0]
    done = finished_runs(folder)
    todo = [k for k in range(len(grid)) if k not in done]
    if done and rank == 0:
        log(f"resuming the grid: {len(done)} of {len(grid)} runs finished")
    written = [todo[0] if todo else len(grid)]  # the metrics' lines: the finished prefix

    def record_prefix() -> None:  # the main process's lines of the contiguous finished runs
        while rank == 0 and written[0] < len(grid) and written[0] in done:
            r = done[written[0]]
            mlog.write({"lr": r["lr"], "train/weight_decay": r["wd"], "val/score": r["val"]},
                       written[0] + 1)  # fmt: skip
            written[0] += 1
            atomic_write_json(folder / "finetune_state.json",
                              {"runs": [done[k] for k in sorted(done)]})  # fmt: skip

    for k in todo[rank::size]:
        done[k] = _grid_run(spec, p, folder, k, sets, fit, stop, log)
        record_prefix()
    if size > 1:
        import torch.distributed as dist

        everyone = [None] * size
        dist.all_gather_object(everyone, done)
        for d in everyone:
            done.update(d)
        record_prefix()
    return [done[k] for k in range(len(grid))]


def manyshot_finetune(spec, p: RecProtocol, folder: Path, log) -> dict | None:
    """The grid on train -> val (each run's score saved as it ends: a rerun skips finished
    runs and resumes the ones in progress; several processes share the runs out), then on
    the main process the best (lr, wd) on trainval -> test (the other processes return
    None)."""
    info = D.INFO[spec.task]
    device = torch.device("cuda" if spec.device == "cuda" else "cpu")
    sets, multilabel, classes = _fit_sets(spec, p)
    grid = finetune_grid(p)
    fit = (grid, multilabel, classes, device)
    main = world()[0] == 0
    finished = finished_runs(folder)
    resume = next((k for k in range(len(grid)) if k not in finished), len(grid)) or None
    best, best_score = None, 0.0  # ssl-transfer starts from 0 and keeps strict improvements
    with StopFlag() as stop, (spec.metrics_log(resume, str(folder)) if main
                              else nullcontext()) as mlog:  # fmt: skip
        done = grid_records(spec, p, folder, fit, sets, stop, log, mlog)
        if not main:
            return None
        for r in done:
            if not math.isnan(r["val"]) and r["val"] > best_score:
                best, best_score = (r["lr"], r["wd"]), r["val"]
        if best is None:
            raise BadInput(f"{spec.task}: no run of the grid scored above 0 on val; see "
                           f"{folder / 'train_metrics.jsonl'}")  # fmt: skip
        lr, wd = best
        log(f"best lr {lr:.4g} wd {wd:.4g} (val {best_score:.2f}); retraining on trainval")
        net = _fresh_net(spec, classes, mix(spec.seed, len(grid), 0), device)
        ckpt = folder / "final.pt"
        final_diverged = train_run(net, sets["trainval"], p, lr, wd, mix(spec.seed, len(grid), 1),
                                   ckpt, stop, device, f"{spec.task} trainval", multilabel,
                                   metrics=run_metrics(spec, folder, "final"))  # fmt: skip
    test = evaluate(net, sets["test"], p, info.metric, device)
    ckpt.unlink(missing_ok=True)
    log(f"{spec.task} test {METRIC_NAMES[info.metric]} {test:.2f} (lr {lr:.4g}, wd {wd:.4g})")
    return {
        "task": spec.task,
        "metric": info.metric,
        "test": test,
        "val": best_score,
        "best_lr": lr,
        "best_wd": wd,
        "runs": done,
        **({"final_diverged_at": final_diverged} if final_diverged else {}),
        "images": {k: len(v) for k, v in sets.items()},
        "headline": {spec.task: test},
    }
