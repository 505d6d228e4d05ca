#!/usr/bin/env python
"""Images/s of the linear-probe train loop (frozen ResNet forward + head step), three ways.

    python benchmarks/speed/linear_step.py                          # CUDA if present
    python benchmarks/speed/linear_step.py --device cpu --batch 32 --steps 6 --workers 2

Prints images/s of
- the loader alone: JPEG decode + RandomResizedCrop 224 + flip (the protocols' pipeline)
  over ``--workers`` processes, on ImageNet-sized JPEGs written to a temporary ImageFolder;
- the model alone: the frozen forward + Linear/BatchNorm1d step on random tensors
  (``--amp``: bf16 autocast);
- the loop: both together, as ``transfer/classification/train.py`` runs them.
The loop should keep >= 90% of the slower of the two. ``--json`` writes the figures.
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
from PIL import Image  # noqa: E402

from bench.throughputs import add_record_arg, record_benchmark  # noqa: E402


def write_images(root: Path, n: int, seed: int = 0) -> None:
    """``n`` JPEGs of ImageNet's typical size and weight (500 x 375, about 110 KB at quality
    90: smooth colour fields plus pixel noise) in 10 classes."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(small).resize((500, 375), Image.BICUBIC), np.float32)
        noisy = np.clip(smooth + rng.normal(0, 18, smooth.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(noisy)
        folder = root / "train" / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"img_{i:05d}.JPEG", quality=90)


def rate(fn, steps: int, batch: int, warmup: int = 2) -> float:
    """Images/s of ``steps`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument(
        "--aug",
        default="rrc_flip",
        choices=["rrc_flip", "rrc_flip_jitter_lighting"],
        help="train pipeline: the linear protocols' or the multi-layer one's",
    )
    p.add_argument("--json", type=Path, default=None)
    add_record_arg(p)
    return p


def probe_step(arch_name: str, device: torch.device, amp: bool):
    """The linear probe's step on a frozen ResNet (channels_last): ``step(x, y)``."""
    from common.archs import get_arch
    from transfer.classification.models import FeatureResNet, LinearHead

    arch = get_arch(arch_name)
    model = FeatureResNet(arch).to(device).eval().to(memory_format=torch.channels_last)
    for prm in model.parameters():
        prm.requires_grad_(False)
    head = LinearHead(arch.feature_dim, 1000, bn=True).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=0.2, momentum=0.9)

    def step(x, y):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            with torch.no_grad():
                feats = model(
                    x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                )
            loss = torch.nn.functional.cross_entropy(head(feats)["res5"].float(), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def loader_rates(args, device: torch.device, step) -> dict:
    """Images/s of the protocol's loader alone and of the loop (loader + step) on JPEGs."""
    from common.badimages import SkipBad
    from transfer.classification import data as D

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # the loader is timed after its workers' prefetched batches are drained
        warm = 2 * max(args.workers, 1) + 1
        loader_steps = max(args.steps, 4 * max(args.workers, 1))
        write_images(root, args.batch * (warm + loader_steps))
        _, samples = D.scan_split(root, "train")
        ds = D.Images(samples, D.train_transform(args.aug, 224))
        loader = torch.utils.data.DataLoader(
            ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
            collate_fn=SkipBad(), pin_memory=device.type == "cuda", drop_last=True,
            persistent_workers=args.workers > 0,
        )  # fmt: skip
        it = iter(loader)
        out["loader_img_per_s"] = rate(lambda: next(it), loader_steps, args.batch, warm)

        def loop_step():
            _, _, (xb, yb) = next(it2)
            step(xb, yb)

        it2 = iter(loader)
        steps = min(args.steps, len(loader) - 2)
        out["loop_img_per_s"] = rate(loop_step, steps, args.batch)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = torch.device(args.device)
    amp = args.amp and device.type == "cuda"
    step = probe_step(args.arch, device, amp)
    from common.archs import get_arch

    out = {"device": str(device), "arch": get_arch(args.arch).name, "batch": args.batch, "amp": amp,
           "workers": args.workers, "aug": args.aug}  # fmt: skip
    x = torch.randn(args.batch, 3, 224, 224)
    y = torch.randint(0, 1000, (args.batch,))
    out["model_img_per_s"] = rate(lambda: step(x, y), args.steps, args.batch)
    out.update(loader_rates(args, device, step))
    bound = min(out["model_img_per_s"], out["loader_img_per_s"])
    out["loop_vs_bound"] = out["loop_img_per_s"] / bound
    for k, v in out.items():
        print(f"{k:18s} {v:.1f}" if isinstance(v, float) else f"{k:18s} {v}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.record and out["arch"] == "ResNet-50":  # the protocols' network
        # rrc_flip is linear_care's and linear_moco's pipeline, the other linear_multilayer's
        keys = ["linear_care", "linear_moco"] if args.aug == "rrc_flip" else ["linear_multilayer"]
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        precision = "amp" if amp else "fp32"
        figures = [(k, precision, out["loop_img_per_s"], "runner") for k in keys]
        record_benchmark(args.record, figures, name, "benchmarks/speed/linear_step.py",
                         sys.argv[1:] if argv is None else argv)  # fmt: skip
    return out


if __name__ == "__main__":
    main()
