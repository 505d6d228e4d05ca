#!/usr/bin/env python
"""Pretraining speed: model-alone training images/s and the data pipeline's images/s.

    python benchmarks/speed/pretrain_step.py                          # GPU: R50, 224 px, 128
    python benchmarks/speed/pretrain_step.py --device cpu --arch resnet18 --size 64 --batch 16

Model alone: one full training step of each method (two views: online forward + backward,
target forward, SGD step, EMA update; MaskCo with its boxes) on random tensors, timed
after warm-up with the device synchronised. MaskCo's paper batch is 32 per GPU
(``--methods maskco --batch 32``). Data: the CPU pipeline (JPEG decode + BYOL's two views) through a
DataLoader with ``--workers`` processes on JPEG files written for the purpose.
Targets on one H100 (DESIGN.md s. 7): CARE >= 1100 images/s model alone.
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


def model_speed(method: str, arch: str, size: int, batch: int, device: str, amp: str,
                steps: int, warmup: int) -> float:
    import torch

    from pretrain.methods import build_method
    from pretrain.train import _amp_dtype

    model = build_method(method, arch).to(device)
    cuda = device.startswith("cuda")
    mf = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=mf)
    opt = torch.optim.SGD(model.param_groups(), lr=0.1, momentum=0.9,
                          weight_decay=1e-4, foreach=True)
    from pretrain.train import PretrainConfig

    dtype = _amp_dtype(PretrainConfig(amp=amp), "cuda" if cuda else "cpu")
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    views = [torch.randn(batch, 3, size, size, device=device).to(memory_format=mf)
             for _ in range(2)]
    extra = []
    if model.needs_boxes:  # MaskCo: the masked box in each view
        from pretrain.maskco import random_boxes

        extra = [random_boxes(batch, 2, size, (0.3, 0.6), device)]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=dtype,
                            enabled=dtype is not None):
            loss = model(views, *extra)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        model.update_target(0.99)
    sync()
    return steps * batch / (time.perf_counter() - t0)


def data_speed(size: int, batch: int, workers: int, images: int, src_size: int) -> float:
    """Images/s of decode + two BYOL views on JPEG files (ImageNet-like sizes)."""
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader

    from pretrain.data import BadImageCounter, ViewsDataset, byol_views

    tmp = Path(tempfile.mkdtemp(prefix="pretrain_speed_"))
    rng = np.random.default_rng(0)
    for i in range(images):
        d = tmp / "train" / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        arr = (rng.random((src_size * 3 // 4, src_size, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"{i}.jpg", quality=90)
    ds = ViewsDataset(tmp / "train", byol_views(size))
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=BadImageCounter(),
                        persistent_workers=workers > 0, shuffle=True, drop_last=True)
    n, t0 = 0, None
    for epoch in range(2):  # the first pass warms the workers (and the page cache)
        if epoch == 1:
            t0 = time.perf_counter()
        for b in loader:
            if epoch == 1:
                n += b[0][0].shape[0]
    return n / (time.perf_counter() - t0)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+",
                   default=["care", "byol", "simsiam", "simsiam_gsg", "byol_gsg", "maskco"])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=128, help="per GPU (paper: 128)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "none"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 8, 16],
                   help="loader worker counts to time (default: 0 8 16)")
    p.add_argument("--data-images", type=int, default=512, help="JPEG files to time on")
    p.add_argument("--data-src-size", type=int, default=500, help="JPEG width (ImageNet ~500)")
    p.add_argument("--json", type=Path, default=None)
    return p


def main(args: argparse.Namespace) -> dict:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"device {name}, {args.arch}, {args.size} px, batch {args.batch}, amp {args.amp}")
    res = {"device": name, "model": {}, "data": {}}
    for m in args.methods:
        ips = model_speed(m, args.arch, args.size, args.batch, device, args.amp, args.steps,
                          args.warmup)
        res["model"][m] = ips
        print(f"model alone  {m:<11} {ips:9.1f} images/s", flush=True)
    for w in args.workers:
        ips = data_speed(args.size, args.batch, w, args.data_images, args.data_src_size)
        res["data"][w] = ips
        print(f"data, {w:2d} workers     {ips:9.1f} images/s (two views)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main(get_args_parser().parse_args())
