#!/usr/bin/env python
"""Pretraining speed: model-alone training images/s, the data pipelines' images/s, and
end to end (JPEG files -> views -> training step).

    python benchmarks/speed/pretrain_step.py                          # GPU: R50, 224 px, 128
    python benchmarks/speed/pretrain_step.py --device cpu --arch resnet18 --size 64 --batch 16 \
        --workers 2 --data-images 64 --end-to-end byol

Model alone: one full training step of each method (two views: online forward + backward,
target forward, SGD step, EMA update; MaskCo with its boxes) on random tensors, timed
after warm-up with the device synchronised. MaskCo's paper batch is 32 per GPU
(``--methods maskco --batch 32``). Data, on JPEG files written for the purpose, through a
DataLoader with ``--workers`` processes: ``pil`` = decode + BYOL's two views in the workers
(the CPU path); ``device`` = the workers read bytes and draw, decoding (nvjpeg on CUDA) and
augmentation run batched on the device (``--batch-aug``, pretrain/device_aug.py). End to
end: the ``--end-to-end`` methods trained from those files by the real training loop
(``pretrain.trainer.Trainer``, two epochs, the second timed), through the device pipeline (or
``pil`` on CPU). Targets on one H100 (docs/performance.md): CARE >= 1100 images/s model
alone, end to end >= 90% of that.
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


def training_step(method: str, arch: str, device: str, amp: str, graph: bool = False):
    """(step(views, *extra) -> loss, memory format, sync, model) for one method: the
    Trainer's optimiser step (``pretrain.amp.AmpStep``) without its loop; ``graph``: its
    forward + backward replayed as a CUDA graph (``--cuda-graph``, pretrain/graphed.py)."""
    import torch

    from pretrain.amp import AmpStep
    from pretrain.config import amp_dtype
    from pretrain.graphed import GraphedForwardBackward
    from pretrain.methods import build_method

    model = build_method(method, arch).to(device)
    cuda = device.startswith("cuda")
    mf = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=mf)
    opt = torch.optim.SGD(
        model.param_groups(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True
    )
    device_type = "cuda" if cuda else "cpu"
    amp_step = AmpStep(opt, amp_dtype(amp, device_type), device_type)
    graphed = GraphedForwardBackward(model, amp_step) if graph else None

    def step(views, *extra):
        views = [v.to(device, non_blocking=True, memory_format=mf) for v in views]
        if graphed is not None:
            loss = graphed(views, *extra)["loss"]
            amp_step.apply()
        else:
            with amp_step.autocast():
                loss = model(views, *extra)["loss"]
            amp_step.step(loss)
        model.update_target(0.99)
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    return step, mf, sync, model


def bound_module(net, tgt):
    """The bound's step as a module with the GraphedForwardBackward interface (views ->
    {"loss"}): online forward of 2 views (the loss), a no-grad forward of the others, the
    target's forward of 2 views when ``tgt`` is given."""
    import torch

    class Bound(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.tgt = net, tgt

        def forward(self, vs):
            with torch.no_grad():
                for v in vs[2:]:
                    self.net(v)
                for v in vs[:2] if self.tgt is not None else ():
                    self.tgt(v)
            return {"loss": sum(self.net(v).float().mean() for v in vs[:2])}

    return Bound()


def bound_speed(
    arch: str,
    views: int, target: bool, size: int, batch: int, device: str, amp: str, steps: int,
    warmup: int, graph: bool,
) -> float:  # fmt: skip
    """Images/s of the ResNet bound of a method: a plain torchvision ``arch``'s online
    forward + backward on 2 views (+ a no-grad forward of each further view), a target
    copy's forward of 2 views when the method has one, and a foreach SGD step, at the same
    batch, dtype and memory format (eager, or as a CUDA graph like ``--cuda-graph``)."""
    import copy

    import torch

    from pretrain.amp import AmpStep
    from pretrain.config import amp_dtype

    cuda = device.startswith("cuda")
    mf = torch.channels_last if cuda else torch.contiguous_format
    from common.archs import build_resnet, get_arch

    net = build_resnet(get_arch(arch)).to(device, memory_format=mf)  # torchvision's (or CIFAR's)
    tgt = copy.deepcopy(net).requires_grad_(False) if target else None
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)
    amp_step = AmpStep(opt, amp_dtype(amp, "cuda" if cuda else "cpu"), "cuda" if cuda else "cpu")
    xs = [torch.randn(batch, 3, size, size, device=device).to(memory_format=mf)
          for _ in range(views)]  # fmt: skip

    pair = bound_module(net, tgt)
    if graph:
        from pretrain.graphed import GraphedForwardBackward

        graphed = GraphedForwardBackward(pair, amp_step)

    def step():
        if graph:
            graphed(xs)
            amp_step.apply()
        else:
            with amp_step.autocast():
                loss = pair(xs)["loss"]
            amp_step.step(loss)

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    return images_per_s(step, steps, warmup, batch, sync)


def images_per_s(step, steps: int, warmup: int, batch: int, sync) -> float:
    """Images/s of ``step()`` over ``steps`` calls after ``warmup`` untimed ones, with the
    device synchronised (``sync``) at both ends."""
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        step()
    sync()
    return steps * batch / (time.perf_counter() - t0)


def model_speed(
    method: str, arch: str, size: int, batch: int, device: str, amp: str, steps: int,
    warmup: int, graph: bool = False,
) -> float:  # fmt: skip
    import torch

    step, mf, sync, model = training_step(method, arch, device, amp, graph)
    needs_boxes = model.needs_boxes
    views = [
        torch.randn(batch, 3, size, size, device=device).to(memory_format=mf)
        for _ in range(model.views_needed(model.cfg))  # GSG: four crops
    ]
    extra = []
    if needs_boxes:  # MaskCo: the masked box in each view
        from pretrain.maskco import random_boxes

        extra = [random_boxes(batch, 2, size, (0.3, 0.6), device)]
    return images_per_s(lambda: step(views, *extra), steps, warmup, batch, sync)


def _write_jpeg(args: tuple[Path, int, int]) -> None:
    """One photo-like JPEG: smooth colour regions plus grain (~100 KB at 500 x 375, the
    size and entropy of an ImageNet file; pure noise would be slower to decode)."""
    import numpy as np
    from PIL import Image

    path, i, w = args
    h = w * 3 // 4
    rng = np.random.default_rng(i)
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.int16)
    grain = rng.integers(-20, 21, (h, w, 3), dtype=np.int16)
    Image.fromarray((base + grain).clip(0, 255).astype(np.uint8)).save(path, quality=90)


def write_jpegs(images: int, src_size: int) -> Path:
    """``images`` photo-like JPEG files (ImageNet-like size) in an ImageFolder tree,
    written by a process pool."""
    import os
    from multiprocessing import Pool

    tmp = Path(tempfile.mkdtemp(prefix="pretrain_speed_"))
    jobs = []
    for i in range(images):
        d = tmp / "train" / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((d / f"{i}.jpg", i, src_size))
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_write_jpeg, jobs, chunksize=32)
    return tmp / "train"


def view_batches(
    folder: Path, size: int, batch: int, workers: int, pipeline: str, device: str, epochs: int
):
    """Yields BYOL's two views (N, 3, S, S) per batch, on ``device``, from the files
    through the ``pil`` or ``device`` pipeline, for ``epochs`` passes."""
    from torch.utils.data import DataLoader

    from common.badimages import BadCount, SkipBad
    from pretrain.data import ViewsDataset, byol_views, collate_raw
    from pretrain.device_aug import DeviceAugment, decode_images

    raw = pipeline == "device"
    views = byol_views(size)
    ds = ViewsDataset(folder, views, raw=raw)
    counter = BadCount()
    augment = DeviceAugment(views)
    loader = DataLoader(
        ds,
        batch_size=batch,
        num_workers=workers,
        collate_fn=SkipBad(collate_raw if raw else None),
        persistent_workers=workers > 0,
        shuffle=True,
        drop_last=True,
        pin_memory=device.startswith("cuda"),
    )
    for _ in range(epochs):
        for item in loader:
            b = counter.take(item)
            if raw:
                yield augment(decode_images(b[0], device), b[1])
            else:
                yield [v.to(device, non_blocking=True) for v in b[0]]


def data_speed(
    folder: Path, size: int, batch: int, workers: int, pipeline: str, device: str
) -> float:
    """Images/s of decode + two BYOL views (the first pass warms workers and page cache)."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    n_per_epoch = len(list(folder.rglob("*.jpg"))) // batch * batch
    n, t0 = 0, None
    for i, views in enumerate(view_batches(folder, size, batch, workers, pipeline, device, 2)):
        if i == n_per_epoch // batch:
            sync()
            t0 = time.perf_counter()
        elif t0 is not None:
            n += views[0].shape[0]
    sync()
    return n / (time.perf_counter() - t0)


def end_to_end_speed(
    method: str,
    arch: str,
    folder: Path,
    size: int,
    batch: int,
    workers: int,
    pipeline: str,
    device: str,
    amp: str,
    cuda_graph: str = "off",
) -> float:
    """Training images/s of the real training loop (``pretrain.trainer.Trainer``, two epochs
    on the JPEG files, the second one timed): loader, views (``pipeline``), the step with
    its host sync and logging, as a user's run does it."""
    import tempfile

    from pretrain.config import PretrainConfig
    from pretrain.methods import METHODS
    from pretrain.trainer import Trainer

    on = pipeline == "device" and not METHODS[method].needs_boxes
    with tempfile.TemporaryDirectory() as out:
        cfg = PretrainConfig(
            method=method,
            arch=arch,
            data=str(folder.parent),
            output=out,
            epochs=2,
            batch_size=batch,
            image_size=size,
            workers=workers,
            amp=amp,
            batch_aug="on" if on else "off",
            knn_every=0,
            save_every=100,
            log_every=1,
            warmup_epochs=0.0,
            cuda_graph=cuda_graph,
        )
        trainer = Trainer(cfg)
        if not trainer.device.startswith(device.split(":")[0]):
            raise ValueError(
                f"--end-to-end runs the Trainer, which picks {trainer.device}; asked for {device}"
            )
        trainer.fit()
    # the timed epoch's first step also waits for the epoch's loader workers to start, once
    # per epoch (per ~10k steps on ImageNet): left out, as the warm-up epoch is
    steps = [h for h in trainer.history if h.get("type") == "step" and h["epoch"] == 1][1:]
    seconds = sum(batch / h["train/img_per_s"] for h in steps)
    return len(steps) * batch / seconds


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--methods",
        nargs="+",
        default=["care", "byol", "simsiam", "simsiam_gsg", "byol_gsg", "maskco"],
    )
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=128, help="per GPU (paper: 128)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 8, 16],
        help="loader worker counts to time (default: 0 8 16)",
    )
    p.add_argument(
        "--data-images",
        type=int,
        default=4096,
        help="JPEG files to time on (enough batches for every worker)",
    )
    p.add_argument("--data-src-size", type=int, default=500, help="JPEG width (ImageNet ~500)")
    p.add_argument(
        "--pipelines",
        nargs="+",
        choices=["pil", "device"],
        default=None,
        help="data pipelines to time (default: pil, and device where CUDA)",
    )
    p.add_argument(
        "--end-to-end",
        nargs="*",
        default=["care", "byol"],
        metavar="METHOD",
        help="methods to time end to end from the JPEG files (default: care byol)",
    )
    p.add_argument(
        "--graph",
        choices=["off", "on", "both"],
        default=None,
        help="model alone eager (off), as a CUDA graph (on, --cuda-graph) or both "
        "(default: both on CUDA, off on CPU)",
    )
    p.add_argument(
        "--no-bound",
        dest="bound",
        action="store_false",
        help="skip each method's ResNet-50 bound (see bound_speed)",
    )
    p.add_argument(
        "--e2e-graph",
        choices=["auto", "off", "both"],
        default="auto",
        help="--cuda-graph of the end-to-end Trainer runs (auto: where it applies; both: "
        "off, then auto)",
    )
    p.add_argument("--json", type=Path, default=None)
    return p


def model_section(args, device: str, modes: list[bool], res: dict) -> None:
    """The ResNet bounds and each method's model-alone speed, into ``res``."""
    from pretrain.methods import METHODS, method_options

    bounds: dict[tuple, float] = {}
    for m in args.methods:
        cls = METHODS[m]
        key = (cls.views_needed(method_options(m)), bool(cls.momentum_modules))
        if args.bound and key not in bounds:
            name = f"{key[0]} views{', target' if key[1] else ''}"
            for g in modes:
                ips = bound_speed(args.arch, *key, args.size, args.batch, device, args.amp,
                                  args.steps, args.warmup, g)  # fmt: skip
                res["bound"][f"{name}/{'graph' if g else 'eager'}"] = ips
                bounds[key] = max(ips, bounds.get(key, 0.0))
                print(f"R50 bound    {name:<17} {'graph' if g else 'eager':<5} {ips:9.1f} "
                      "images/s", flush=True)  # fmt: skip
        for g in modes:
            if g and not cls.graph_safe:
                print(f"model alone  {m:<11} graph: not graph-safe (eager only)", flush=True)
                continue
            ips = model_speed(
                m, args.arch, args.size, args.batch, device, args.amp, args.steps, args.warmup, g
            )
            res["model"][m] = max(ips, res["model"].get(m, 0.0))
            res["model_modes"][f"{m}/{'graph' if g else 'eager'}"] = ips
            share = (
                f" ({100 * ips / bounds[key]:.0f}% of its best R50 bound)" if key in bounds else ""
            )
            print(f"model alone  {m:<11} {'graph' if g else 'eager':<5} {ips:9.1f} images/s"
                  f"{share}", flush=True)  # fmt: skip


def end_to_end_section(args, folder: Path, pipe: str, device: str, res: dict) -> None:
    """The ``--end-to-end`` methods trained from JPEG files, into ``res``."""
    modes = ["off", "auto"] if args.e2e_graph == "both" else [args.e2e_graph]
    w = max(args.workers)
    for m in args.end_to_end:
        for mode in modes:
            ips = end_to_end_speed(
                m, args.arch, folder, args.size, args.batch, w, pipe, device, args.amp, mode
            )
            share = ips / res["model"][m] if m in res["model"] else None
            res["end_to_end"][f"{m}/graph-{mode}"] = {
                "images_per_s": ips,
                "pipeline": pipe,
                "workers": w,
                "of_model_alone": share,
            }
            alone = (
                f"{100 * share:.0f}% of model alone (best mode)"
                if share is not None
                else "model alone not timed: add it to --methods"
            )
            print(
                f"end to end   {m:<11} {ips:9.1f} images/s ({pipe}, {w} workers, "
                f"--cuda-graph {mode}; {alone})",
                flush=True,
            )


def main(args: argparse.Namespace) -> dict:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"device {name}, {args.arch}, {args.size} px, batch {args.batch}, amp {args.amp}")
    res = {"device": name, "bound": {}, "model": {}, "model_modes": {}, "data": {},
           "end_to_end": {}}  # fmt: skip
    cuda = device.startswith("cuda")
    pipelines = args.pipelines or (["pil", "device"] if cuda else ["pil"])
    graph = args.graph or ("both" if cuda else "off")
    model_section(args, device, {"off": [False], "on": [True], "both": [False, True]}[graph], res)
    folder = write_jpegs(args.data_images, args.data_src_size)
    for pipe in pipelines:
        for w in args.workers:
            ips = data_speed(folder, args.size, args.batch, w, pipe, device)
            res["data"][f"{pipe}/{w}"] = ips
            print(f"data {pipe:<6} {w:2d} workers {ips:9.1f} images/s (two views)", flush=True)
    end_to_end_section(args, folder, "device" if "device" in pipelines else pipelines[0], device,
                       res)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main(get_args_parser().parse_args())
