#!/usr/bin/env python
"""The recognition protocols' costs: feature extraction, the 45-value linear sweep, few-shot
episodes and the fine-tuning step.

    python benchmarks/speed/recognition.py                                  # CUDA if present
    python benchmarks/speed/recognition.py --device cpu --fits 3 --n 50000 --images 64

Prints
- feature extraction images/s: ImageNet-sized JPEGs (500 x 375) decoded, Resize(224,
  bicubic) + CenterCrop(224), pooled res5 of a frozen ResNet-50 (``--workers`` loader
  processes; the protocol's code path, ``transfer.recognition.features.extract``);
- the sweep: ``--fits`` of the 45 fits (spread over the grid: small, middle and large C,
  each warm-started from the previous as in the sweep) on an ``--n`` x 2048 feature set of
  ``--classes`` classes, with scikit-learn and with the PyTorch L-BFGS solver, seconds per
  fit, the estimated 45-fit sweep, and both solvers' val accuracy at each timed C;
- few-shot ProtoNet episodes/s on cached features, and the fine-tuning training step's
  images/s (ResNet-50, ``--finetune-batch``) with the estimated cost of one dataset's grid;
- the estimated cost of the whole 11-dataset linear protocol for one checkpoint from those rates
  and the datasets' sizes (``--json`` writes the figures). Estimates are labelled as such.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.protocols import DATASET_IMAGES  # noqa: E402
from bench.throughputs import add_record_arg, record_benchmark  # noqa: E402

RECOGNITION = ("aircraft", "caltech101", "cars", "cifar10", "cifar100", "dtd", "flowers",
               "food", "pets", "sun397", "voc2007")  # fmt: skip

# Images and classes per dataset as the protocol extracts and fits them (VOC2007: 20
# binary fits per C); the plan of care-bench uses the same table.
DATASET_SIZES = {k: v for k, v in DATASET_IMAGES.items() if k in RECOGNITION}


def extraction_rate(device: torch.device, n_images: int, batch: int, workers: int) -> float:
    from benchmarks.speed.linear_step import write_images
    from common.archs import get_arch
    from transfer.backbone import FeatureResNet
    from transfer.recognition.datasets import Samples
    from transfer.recognition.features import eval_transform, extract

    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp), n_images)
        paths = sorted(Path(tmp).rglob("*.JPEG"))
        samples = Samples(np.zeros(len(paths), np.int64), paths)
        net = FeatureResNet(get_arch("resnet50")).to(device)
        tf = eval_transform(224, True)
        warm = samples.subset(list(range(min(batch, len(paths)))))
        extract(net, warm, tf, batch, 0, device, "warm-up")
        t0 = time.perf_counter()
        extract(net, samples, tf, batch, workers, device, "features")
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(paths) / (time.perf_counter() - t0)


def clusters(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative (post-ReLU-like) features of ``k`` classes, average pooled scale."""
    mu = np.abs(np.random.default_rng(100).normal(0, 1, (k, d))).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = np.maximum(mu[y] * 0.06 + rng.normal(0, 1, (n, d)).astype(np.float32), 0)
    return x.astype(np.float32), y


def time_sweep(solver_name: str, fits: list[float], data, device: str) -> dict:
    from transfer.recognition.logreg import fit_and_score, make_solver

    train, val = data
    solver = make_solver(solver_name, 100, 1e-4, True, device)
    out = {"seconds": [], "val": []}
    for C in fits:
        t0 = time.perf_counter()
        score = fit_and_score(solver, C, train, val, "accuracy")
        if device == "cuda":
            torch.cuda.synchronize()
        out["seconds"].append(time.perf_counter() - t0)
        out["val"].append(score)
    return out


def fewshot_rate(n_episodes: int = 600) -> float:
    """ProtoNet episodes per second on 5000 x 2048 features of 50 classes."""
    from transfer.recognition.fewshot import evaluate

    x, y = clusters(5000, 2048, 50, 3)
    t0 = time.perf_counter()
    evaluate(x, y, 5, 5, 15, n_episodes, seed=0)
    return n_episodes / (time.perf_counter() - t0)


def finetune_rate(device: torch.device, batch: int, steps: int) -> float:
    """Training images/s of the fine-tuning step (ResNet-50 + Linear, SGD Nesterov)."""
    from common.archs import get_arch
    from transfer.backbone import FeatureResNet
    from transfer.recognition.finetune import FinetuneNet

    net = FinetuneNet(FeatureResNet(get_arch("resnet50")), 100).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 100, (batch,), device=device)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=256, help="JPEGs for the extraction rate")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n", type=int, default=50000, help="feature rows of the sweep")
    p.add_argument("--val", type=int, default=10000, help="val rows")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--fits", type=int, default=3, help="fits timed per solver (of 45)")
    p.add_argument("--solvers", nargs="+", default=["sklearn", "torch"])
    p.add_argument("--finetune-steps", type=int, default=3, help="timed steps (0: skip)")
    p.add_argument("--finetune-batch", type=int, default=16)
    p.add_argument("--json", type=Path, default=None)
    add_record_arg(p)
    return p


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    from transfer.recognition.logreg import wd_grid

    res: dict = {"device": str(device), "torch": torch.__version__}
    res["extract_img_s"] = extraction_rate(device, args.images, args.batch, args.workers)
    print(f"feature extraction: {res['extract_img_s']:.1f} images/s (ResNet-50, 224 px, "
          f"batch {args.batch}, {args.workers} workers, {device})")  # fmt: skip
    grid = wd_grid()
    picks = np.linspace(0, 44, args.fits).round().astype(int).tolist()
    Cs = [1.0 / grid[i] for i in picks]
    data = (clusters(args.n, 2048, args.classes, 1), clusters(args.val, 2048, args.classes, 2))
    for name in args.solvers:
        r = time_sweep(name, Cs, data, "cuda" if device.type == "cuda" else "cpu")
        per_fit = float(np.mean(r["seconds"]))
        res[name] = {**r, "C": Cs, "per_fit_s": per_fit, "sweep_s_estimated": 45 * per_fit}
        print(f"{name}: {per_fit:.2f} s per fit on {args.n} x 2048, {args.classes} classes "
              f"(C {', '.join(f'{c:.3g}' for c in Cs)}: "
              f"{', '.join(f'{s:.1f}' for s in r['seconds'])} s; val "
              f"{', '.join(f'{v:.2f}' for v in r['val'])}); 45 fits estimated "
              f"{45 * per_fit / 60:.1f} min")  # fmt: skip
    res["fewshot_episodes_s"] = fewshot_rate()
    print(f"few-shot: {res['fewshot_episodes_s']:.0f} ProtoNet episodes/s on cached 2048-d "
          "features (5-way 5-shot, 15 queries)")  # fmt: skip
    if args.finetune_steps:
        res["finetune_img_s"] = finetune_rate(device, args.finetune_batch, args.finetune_steps)
        print(f"fine-tuning: {res['finetune_img_s']:.1f} images/s (ResNet-50 train step, 224 px,"
              f" batch {args.finetune_batch}, {device}, tensors in memory)")  # fmt: skip
        steps = 21 * 5000 * 64
        print(f"estimated, fine-tuning one dataset (21 runs x 5000 steps x 64 images): "
              f"{steps / res['finetune_img_s'] / 3600:.1f} h of training steps")  # fmt: skip
    # the whole protocol for one checkpoint, estimated from the measured rates
    images = sum(n for n, _ in DATASET_SIZES.values())
    extract_h = images / res["extract_img_s"] / 3600
    print(f"estimated, 11 datasets ({images} images): extraction {extract_h:.2f} h")
    for name in args.solvers:
        per_row_class = res[name]["per_fit_s"] / (args.n * args.classes)
        total = 0.0
        for n, k in DATASET_SIZES.values():  # fit cost ~ rows x classes (VOC: 20 binary fits)
            total += 46 * per_row_class * n * 0.8 * k
        res[name]["protocol_h_estimated"] = total / 3600 + extract_h
        print(f"estimated, {name}: sweeps {total / 3600:.1f} h, whole protocol "
              f"{res[name]['protocol_h_estimated']:.1f} h per checkpoint")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.record:
        record(args.record, res, device, sys.argv[1:] if argv is None else argv)
    return res


def record(path: Path, res: dict, device: torch.device, argv: list[str]) -> None:
    """The extraction and fine-tuning rates into the throughput file care-bench plans with."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    figures = [("feature_extraction", "fp32", res["extract_img_s"], "runner")]
    if "finetune_img_s" in res:
        figures.append(("finetune_step", "fp32", res["finetune_img_s"], "bare"))
    record_benchmark(path, figures, name, "benchmarks/speed/recognition.py", argv)


if __name__ == "__main__":
    main()
