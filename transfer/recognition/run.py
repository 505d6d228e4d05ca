"""One (weights, dataset, seed) result of a recognition protocol in this process:
``run_recognition_seed(spec)`` (the seed's entry point).

fewshot: features of every image (all splits pooled, the few-shot transform, cached), then
for each shot count 600 ProtoNet episodes from a generator seeded with the seed.
manyshot_finetune: ``finetune.py``.

manyshot_linear: features of every source split (cached), ssl-transfer's 45-value sweep on
train -> val (its state saved after each fit: an interrupted sweep resumes at the next wd,
warm start included), the refit on trainval with the best C, the test metric. Writes
``config.yaml``, ``log.txt``, ``train_metrics.jsonl`` (one line per fit), ``sweep.pkl``,
``environment.json``, ``sessions.json`` and, last, ``metrics.json``.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from common.archs import get_arch
from common.atomic import atomic_pickle, atomic_write_json, atomic_write_text
from common.cli import BadInput, Interrupted
from common.distributed import world
from common.sessions import recorded_session, session_totals
from common.signals import StopFlag
from transfer.backbone import load_backbone
from transfer.environment import environment_record
from transfer.recognition import datasets as D
from transfer.recognition import fewshot as FS
from transfer.recognition.features import (
    cache_key,
    cached_features,
    eval_transform,
    extract,
    fewshot_transform,
)
from transfer.recognition.finetune import manyshot_finetune
from transfer.recognition.logreg import SweepState, fit_and_score, make_solver, sweep, wd_grid
from transfer.recognition.metrics import METRIC_NAMES
from transfer.recognition.protocols import RecProtocol, resolve
from transfer.spec import SeedSpec


class Log:
    """Lines to stdout and to ``log.txt`` (the main process's; the others' lines go to
    their own stdout only)."""

    def __init__(self, folder: Path, main: bool = True):
        self.path = folder / "log.txt"
        self.main = main

    def __call__(self, msg: str) -> None:
        print(msg, flush=True)
        if not self.main:
            return
        with open(self.path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")


def split_features(spec: SeedSpec, p: RecProtocol, log: Log) -> dict[str, tuple]:
    """{source split: (X (N, C) float32, y)} of ``spec.task``, from the cache when there."""
    device = torch.device("cuda" if spec.device == "cuda" else "cpu")
    arch = get_arch(spec.arch) if spec.arch else None
    samples = {
        s: D.read_split(spec.task, spec.data, s, caltech101_split=p.caltech101_split)
        for s in D.source_splits(spec.task)
    }
    weights_id = spec.weights_info.get("sha256") or f"random-{spec.arch}"  # names the arch too
    backbone = None
    out = {}
    for split, smp in samples.items():
        key = cache_key(weights_id, smp, p.image_size, p.normalise)

        def compute(smp=smp, split=split):
            nonlocal backbone
            if backbone is None:
                backbone, n = load_backbone(spec.weights, arch, spec.allow_pickle)
                backbone.to(device)
                log(f"backbone loaded and verified: {n} tensors equal {spec.weights}" if n
                    else f"backbone: random initialisation ({backbone.arch.name})")  # fmt: skip
            tf = eval_transform(p.image_size, p.normalise)
            return extract(backbone, smp, tf, p.batch_size, p.workers, device,
                           f"{spec.task} {split} features")  # fmt: skip

        feats, hit = cached_features(Path(spec.cache_dir), key, compute)
        log(f"{split}: {len(smp)} images, features {feats.shape} "
            f"({'cached' if hit else 'extracted'}, {key[:12]})")  # fmt: skip
        out[split] = (feats, smp.labels)
    return out


def _load_state(path: Path) -> SweepState:
    if not path.is_file():
        return SweepState()
    with open(path, "rb") as f:
        return SweepState(**pickle.load(f))


def manyshot_linear(spec: SeedSpec, p: RecProtocol, folder: Path, log: Log) -> dict | None:
    """The features (every process extracts its share), then the sweep on the main
    process (the others return None)."""
    info = D.DATASETS[spec.task]
    parts = D.fit_splits(spec.task, split_features(spec, p, log))
    if not log.main:
        return None
    grid = wd_grid(p.wd_n, p.wd_lo, p.wd_hi)
    device = "cuda" if spec.device == "cuda" else "cpu"
    solver = make_solver(p.solver, p.max_iter, p.tol, p.legacy_sklearn, device, p.features_dtype)
    state_path = folder / "sweep.pkl"
    state = _load_state(state_path)
    if state.scores:
        log(f"resuming the sweep after fit {len(state.scores)} of {len(grid)}")
    from tqdm import tqdm

    bar = tqdm(total=len(grid), initial=len(state.scores), desc=f"{spec.task} sweep",
               unit="fit", dynamic_ncols=True, leave=False)  # fmt: skip
    with StopFlag() as stop, spec.metrics_log(len(state.scores) or None, str(folder)) as mlog:

        def after_fit(s: SweepState) -> None:
            k = len(s.scores)
            atomic_pickle(state_path, asdict(s))
            mlog.write({"sweep/wd": grid[k - 1], "sweep/C": 1.0 / grid[k - 1],
                        "val/score": s.scores[-1]}, k)  # fmt: skip
            bar.update(1)
            bar.set_postfix_str(f"best C {s.best_C:.4g} val {s.best_score:.2f}"
                                if s.best_C else "")  # fmt: skip
            if stop.requested:
                raise Interrupted(f"stopped after fit {k} of {len(grid)}; re-run the same "
                                  "command to resume")  # fmt: skip

        try:
            state = sweep(solver, grid, parts["train"], parts["val"], info.metric,
                          p.absent_class_nan, state, after_fit)  # fmt: skip
        finally:
            bar.close()
    best_k = int(np.argmin([abs(1.0 / w - state.best_C) for w in grid]))
    log(f"best C {state.best_C:.6g} (wd {grid[best_k]:.3g}, fit {best_k + 1} of {len(grid)}): "
        f"val {state.best_score:.2f}")  # fmt: skip
    test = fit_and_score(solver, state.best_C, parts["trainval"], parts["test"], info.metric,
                         p.absent_class_nan)  # fmt: skip
    log(f"{spec.task} test {METRIC_NAMES[info.metric]} {test:.2f} (C {state.best_C:.4g})")
    return {
        "task": spec.task,
        "metric": info.metric,
        "test": test,
        "val": state.best_score,
        "best_C": state.best_C,
        "best_wd": grid[best_k],
        "val_scores": state.scores,
        "wds": grid,
        "images": {k: int(len(v[1])) for k, v in parts.items()},
        "headline": {spec.task: test},
        "selected_C": {spec.task: state.best_C},
    }


def pooled_features(spec: SeedSpec, p: RecProtocol, log: Log) -> tuple[np.ndarray, np.ndarray]:
    """(X (N, C), y (N,)) of every image of ``spec.task`` under the few-shot transform."""
    device = torch.device("cuda" if spec.device == "cuda" else "cpu")
    samples = D.pooled(spec.task, spec.data, caltech101_split=p.caltech101_split)
    weights_id = spec.weights_info.get("sha256") or f"random-{spec.arch}"
    key = cache_key(weights_id, samples, p.image_size, p.normalise, resize="square_bilinear")

    def compute():
        arch = get_arch(spec.arch) if spec.arch else None
        backbone, n = load_backbone(spec.weights, arch, spec.allow_pickle)
        backbone.to(device)
        log(f"backbone loaded and verified: {n} tensors equal {spec.weights}" if n
            else f"backbone: random initialisation ({backbone.arch.name})")  # fmt: skip
        tf = fewshot_transform(p.image_size, p.normalise)
        return extract(backbone, samples, tf, p.batch_size, p.workers, device,
                       f"{spec.task} features (all splits)")  # fmt: skip

    feats, hit = cached_features(Path(spec.cache_dir), key, compute)
    log(f"{len(samples)} images (all splits), features {feats.shape} "
        f"({'cached' if hit else 'extracted'}, {key[:12]})")  # fmt: skip
    return feats, samples.labels


def fewshot(spec: SeedSpec, p: RecProtocol, folder: Path, log: Log) -> dict | None:
    """ProtoNet episodes for each shot count, each from a generator seeded with the seed."""
    from tqdm import tqdm

    if D.INFO[spec.task].metric == "map11":
        raise BadInput(f"{spec.task} is multi-label: the few-shot protocol needs one class per "
                       "image (ssl-transfer's few-shot loader cannot read it either)")  # fmt: skip
    X, y = pooled_features(spec, p, log)
    if not log.main:  # the episodes are the main process's (seconds)
        return None
    per_shot, headline = {}, {}
    mlog = spec.metrics_log(None, str(folder))
    for shots in p.shots:
        need = shots + p.n_query
        classes, _ = FS.class_members(y, need)
        dropped = len(np.unique(y)) - len(classes)
        if dropped:
            log(f"{shots}-shot: {dropped} class(es) with fewer than {need} images take no part")
        if len(classes) < p.n_way:
            raise BadInput(f"{spec.task}: {len(classes)} classes have {need} images or more; a "
                           f"{p.n_way}-way {shots}-shot episode with {p.n_query} queries needs "
                           f"{p.n_way} (lower n_way, shots or n_query)")  # fmt: skip
        with tqdm(total=p.episodes, desc=f"{spec.task} {p.n_way}-way {shots}-shot",
                  unit="ep", dynamic_ncols=True, leave=False) as bar:  # fmt: skip
            res = FS.evaluate(X, y, p.n_way, shots, p.n_query, p.episodes, spec.seed, bar.update)
        key = f"{spec.task}_{shots}shot"
        per_shot[key] = {**res.summary(), "classes": len(classes)}
        headline[key] = res.mean
        log(f"{spec.task} {p.n_way}-way {shots}-shot: {res.mean:.2f} +- {res.ci95:.2f} "
            f"({p.episodes} episodes, {len(classes)} classes)")  # fmt: skip
        mlog.write({f"test/accuracy_{shots}shot": res.mean, f"test/ci95_{shots}shot": res.ci95},
                   p.episodes)  # fmt: skip
    mlog.close()
    return {"task": spec.task, "metric": "accuracy", "images": int(len(y)),
            "episodes": per_shot, "headline": headline}  # fmt: skip


def run_recognition_seed(spec: SeedSpec) -> dict | None:
    """The seed's work; ``metrics.json`` is written last. Under several processes they
    share the feature extraction and the fine-tuning grid; the main process writes."""
    p = resolve(spec.protocol, spec.smoke, spec.opts)
    folder = Path(spec.seed_dir)
    main = world()[0] == 0
    folder.mkdir(parents=True, exist_ok=True)
    log = Log(folder, main)
    record = {"protocol": asdict(p), "task": spec.task, "data": spec.data,
              "weights": spec.weights_info, "seed": spec.seed,
              "world_size": world()[1]}  # fmt: skip
    if main:
        atomic_write_text(folder / "config.yaml", yaml.safe_dump(record, sort_keys=False))
    torch.manual_seed(spec.seed)
    drivers = {"manyshot_linear": manyshot_linear, "fewshot": fewshot,
               "manyshot_finetune": manyshot_finetune}  # fmt: skip
    with recorded_session(folder, main):
        res = drivers[p.kind](spec, p, folder, log)
    if not main:
        return None
    metrics = {
        "protocol": spec.protocol_name,
        "base_protocol": spec.protocol,
        "family": "recognition",
        "variant": "smoke" if spec.smoke else "full",
        "dataset": spec.dataset,
        "weights": spec.weights_info,
        "arch": spec.weights_info.get("arch") or get_arch(spec.arch).name,
        "seed_index": spec.seed_index,
        "seed": spec.seed,
        "world_size": world()[1],
        **({"solver": p.solver} if p.kind == "manyshot_linear" else {}),
        **session_totals(folder),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **res,
    }
    atomic_write_json(folder / "environment.json", environment_record())
    atomic_write_json(folder / "metrics.json", metrics)
    return metrics
