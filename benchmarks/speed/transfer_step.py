#!/usr/bin/env python
"""Train-step speed of each protocol's model (detectors, UPerNet), bare and through the runner.

    python benchmarks/speed/transfer_step.py                       # GPU: full protocol configs
    python benchmarks/speed/transfer_step.py --smoke --device cpu  # CPU: smoke configs

For each protocol it prints images/s of
- the bare train step (forward + backward + SGD step) on pre-loaded batches from the
  protocol's own data loader (so no data loading), fp32 and, on CUDA, AMP;
- a short runner job (``transfer/run_*.py`` on the synthetic data, ``SOLVER.MAX_ITER`` =
  ``--runner-iters``), from detectron2's own "Overall training speed" line, which excludes
  its first iterations. The runner should keep >= 90% of the bare step speed.

Full configs on synthetic data: the shapes images are upsampled to the protocol's 480-800 px
sizes by the same ResizeShortestEdge (ADE20K: the twin's images to the toolkit's 300-600 px
short sides by its own loader), so the per-image work matches real data's. For the
segmentation protocol it also prints the hours one seed's 150k iterations take at the
runner's speed (an estimate from the measured images/s). Writes a JSON summary with
``--json``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.throughputs import add_record_arg, record_benchmark  # noqa: E402

SCRIPTS = {
    "voc_c4_24k": ["transfer/run_voc.py"],
    "coco_c4_1x": ["transfer/run_coco.py", "--arch", "c4"],
    "coco_fpn_1x": ["transfer/run_coco.py", "--arch", "fpn"],
    "ade20k_upernet": ["transfer/run_segmentation.py"],
}
SEGMENTATION = "ade20k_upernet"


def _config(protocol: str, smoke: bool, device: str, opts=()):
    if protocol == SEGMENTATION:
        from transfer.segmentation.config import build_config
    else:
        from transfer.detection.config import build_config
    return build_config(protocol, smoke=smoke, device=device, opts=list(opts))


def _train_batches(protocol: str, cfg, shapes_root: str, n: int) -> list:
    """``n`` batches of the protocol's own training loader on the synthetic data."""
    if protocol == SEGMENTATION:
        from transfer.segmentation import data
        from transfer.segmentation.loader import build_train_loader

        data.register(shapes_root, synthetic=True)
        dicts, _ = data.dataset_dicts("synthetic_ade20k_sem_seg_train")
        it = iter(build_train_loader(cfg, dicts, tempfile.mkdtemp()))
    else:
        from detectron2.data import build_detection_train_loader

        it = iter(build_detection_train_loader(cfg))
    return [next(it) for _ in range(n)]


def bare_step(
    protocol: str,
    smoke: bool,
    device: str,
    amp: bool,
    iters: int,
    warmup: int,
    ims: int | None,
    shapes_root: str,
) -> float:
    """Images/s of model forward + backward + optimizer step on cached batches."""
    import torch
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer
    from detectron2.utils.events import EventStorage

    if protocol == SEGMENTATION:
        opts = ["DATASETS.TRAIN", "('synthetic_ade20k_sem_seg_train',)"]
    else:
        from transfer.detection.datasets import register_shapes

        register_shapes(shapes_root)
        train = (
            "shapes_voc_2007_trainval" if protocol.startswith("voc") else "shapes_coco_2017_train"
        )
        opts = ["DATASETS.TRAIN", f"('{train}',)"]
    # cached batches: the loader's speed is not timed (segmentation: read in this process)
    opts += ["DATALOADER.NUM_WORKERS", "0" if protocol == SEGMENTATION else "2"]
    if ims:
        opts += ["SOLVER.IMS_PER_BATCH", str(ims)]
    cfg = _config(protocol, smoke, device, opts)
    model = build_model(cfg).train()
    opt = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    batches = _train_batches(protocol, cfg, shapes_root, min(4, iters))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with EventStorage(0):
        for i in range(warmup + iters):
            if i == warmup:
                sync()
                t0 = time.perf_counter()
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                losses = model(batches[i % len(batches)])
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        sync()
    return iters * cfg.SOLVER.IMS_PER_BATCH / (time.perf_counter() - t0)


def in_child(fn, *args):
    """``fn(*args)`` in a fresh (spawned) process; its GPU memory is freed when it exits."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def runner_job(
    protocol: str,
    smoke: bool,
    iters: int,
    ims: int | None,
    weights: str,
    shapes_root: str,
    amp: bool,
    num_gpus: int,
) -> float:
    """Images/s of a short real runner job (detectron2's own timing, warm-up excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            *SCRIPTS[protocol],
            "--weights",
            weights,
            "--seeds",
            "1",
            "--dataset",
            "synthetic",
            "--output",
            tmp,
            "--shapes-root",
            shapes_root,
            "--num-gpus",
            str(num_gpus),
        ] + (["--amp"] if amp else [])
        opts = ["SOLVER.MAX_ITER", str(iters), "SOLVER.CHECKPOINT_PERIOD", "100000"]
        if protocol == SEGMENTATION:  # one small test scale: the evaluation is not timed
            opts += ["INPUT.TEST_SHORT_SIDES", "(64,)", "INPUT.MAX_SIZE_TEST", "160"]
        else:
            opts += ["TEST.PRECISE_BN.ENABLED", "False", "DATASETS.TEST", "()"]
        if not smoke:
            opts += full_size_opts(protocol)
        if ims:
            opts += ["SOLVER.IMS_PER_BATCH", str(ims)]
        res = subprocess.run(cmd + opts, cwd=REPO, capture_output=True, text=True)
        log = "\n".join(p.read_text() for p in Path(tmp).rglob("log.txt"))
        m = re.search(r"Overall training speed: (\d+) iterations in .* \(([\d.]+) s / it\)", log)
        if not m:
            raise RuntimeError(f"runner job failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        batch = ims or _ims_per_batch(protocol, smoke)
        # steady state: detectron2's "time" of the last record is the median step time of
        # the last 20 iterations (window 20), after the warm-up ones
        records = [json.loads(line) for p in Path(tmp).rglob("train_metrics.jsonl")
                   for line in p.read_text().splitlines() if line.strip()]  # fmt: skip
        times = [r["time"] for r in records if "time" in r]
        steady = batch / times[-1] if len(times) >= 2 else None
        return batch / float(m.group(2)), steady


def _ims_per_batch(protocol: str, smoke: bool) -> int:
    return _config(protocol, smoke, "cpu").SOLVER.IMS_PER_BATCH


def full_size_opts(protocol: str) -> list[str]:
    """Overrides giving the smoke config (what --dataset synthetic runs) the full protocol's
    image sizes, batch and sampling, so the runner's per-image work matches the protocol's."""
    full = _config(protocol, False, "cpu")
    if protocol == SEGMENTATION:
        return ["INPUT.MIN_SIZE_TRAIN", str(tuple(full.INPUT.MIN_SIZE_TRAIN)),
                "INPUT.MAX_SIZE_TRAIN", str(full.INPUT.MAX_SIZE_TRAIN),
                "SOLVER.IMS_PER_BATCH", str(full.SOLVER.IMS_PER_BATCH),
                "DATALOADER.NUM_WORKERS", "8"]  # fmt: skip
    return [
        "INPUT.MIN_SIZE_TRAIN",
        str(tuple(full.INPUT.MIN_SIZE_TRAIN)),
        "INPUT.MAX_SIZE_TRAIN",
        str(full.INPUT.MAX_SIZE_TRAIN),
        "SOLVER.IMS_PER_BATCH",
        str(full.SOLVER.IMS_PER_BATCH),
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
        str(full.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE),
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
        str(full.MODEL.RPN.BATCH_SIZE_PER_IMAGE),
        "DATALOADER.NUM_WORKERS",
        "8",
    ]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocols", nargs="+", default=list(SCRIPTS), choices=list(SCRIPTS))
    p.add_argument("--ade-size", type=int, default=160,
                   help="long side of the synthetic ADE20K images (default: 160)")  # fmt: skip
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--smoke", action="store_true", help="smoke configs (small images)")
    p.add_argument("--iters", type=int, default=20, help="timed bare steps (default: 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed bare steps (default: 5)")
    p.add_argument(
        "--runner-iters",
        type=int,
        default=40,
        help="iterations of the runner job; 0 skips it (default: 40)",
    )
    p.add_argument(
        "--ims-per-batch",
        type=int,
        default=None,
        help="override the batch (default: the config's; 16 for full protocols)",
    )
    p.add_argument(
        "--no-amp", dest="amp", action="store_false", help="skip the bare AMP step on CUDA"
    )
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    add_record_arg(p)
    return p


def prepare_inputs(args, work: Path) -> tuple[str, str | None, Path]:
    """The synthetic shapes, the ADE20K twin (when segmentation is timed) and random
    torchvision ResNet-50 weights, under ``work``."""
    import torch
    import torchvision

    from synthetic import ShapesSpec, generate

    shapes = str(generate(work / "shapes", ShapesSpec(size=256)))
    ade = None
    if SEGMENTATION in args.protocols:
        from synthetic.ade20k import write_ade20k
        from transfer.segmentation.data import prepare

        ade = write_ade20k(work / "ade20k", size=args.ade_size)
        prepare(ade)
    weights = work / "tv_r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), weights)
    return shapes, ade, weights


def time_protocol(args, protocol: str, device: str, data: str, weights: Path) -> dict:
    """One protocol's row: the bare step (fp32, and AMP on CUDA when asked), the runner, and
    for the full segmentation protocol the hours of one seed (an estimate from them)."""
    row = {"protocol": protocol, "smoke": args.smoke}
    # each bare measurement in its own process: the full protocols' steps hold ~60 GB,
    # which must be free for the next one and for the runner job
    common = (protocol, args.smoke, device)
    rest = (args.iters, args.warmup, args.ims_per_batch, data)
    row["bare_fp32"] = in_child(bare_step, *common, False, *rest)
    if device == "cuda" and args.amp:
        row["bare_amp"] = in_child(bare_step, *common, True, *rest)
    if args.runner_iters:
        row["runner_fp32"], steady = runner_job(
            protocol, args.smoke, args.runner_iters, args.ims_per_batch, str(weights), data,
            False, 1 if device == "cuda" else 0,
        )  # fmt: skip
        row["runner_vs_bare"] = row["runner_fp32"] / row["bare_fp32"]
        if steady is not None:  # the last 20 iterations' median step
            row["runner_steady_fp32"] = steady
            row["steady_vs_bare"] = steady / row["bare_fp32"]
    if protocol == SEGMENTATION and not args.smoke:  # one seed: 150k iterations x 4
        speed = row.get("runner_steady_fp32") or row.get("runner_fp32") or row["bare_fp32"]
        row["seed_hours_estimate"] = 150000 * 4 / speed / 3600
    return row


def main(args: argparse.Namespace) -> list[dict]:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shapes, ade, weights = prepare_inputs(args, Path(tempfile.mkdtemp(prefix="transfer_speed_")))
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"device: {gpu}; configs: {'smoke' if args.smoke else 'full protocol'}")
    rows = []
    for protocol in args.protocols:
        data = str(ade) if protocol == SEGMENTATION else shapes
        row = {"device": gpu, **time_protocol(args, protocol, device, data, weights)}
        rows.append(row)
        cells = "  ".join(f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float))
        print(f"{protocol:<12} images/s: {cells}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.record:
        record_benchmark(args.record, _figures(rows, args.smoke), gpu,
                         "benchmarks/speed/transfer_step.py", sys.argv[1:])  # fmt: skip
    return rows


def _figures(rows: list[dict], smoke: bool) -> list[tuple[str, str, float, str]]:
    """(key, precision, images/s, what) of every figure, for the throughput file."""
    names = {"runner_fp32": ("fp32", "runner"), "runner_steady_fp32": ("fp32", "steady"),
             "bare_fp32": ("fp32", "bare"), "bare_amp": ("amp", "bare")}  # fmt: skip
    key = "{}_smoke" if smoke else "{}"
    return [(key.format(r["protocol"]), *names[k][:1], r[k], names[k][1])
            for r in rows for k in names if k in r]  # fmt: skip


if __name__ == "__main__":
    main(get_args_parser().parse_args())
