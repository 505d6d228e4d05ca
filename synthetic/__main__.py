"""``python -m synthetic --root DIR``: write the synthetic shapes tree (see ``synthetic``)."""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import time

from common.cli import run_cli
from synthetic import ShapesSpec, generate


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Write synthetic shapes data in the ImageFolder, Pascal VOC and COCO layouts."
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("datasets/shapes"),
        help="output folder, usable as $DETECTRON2_DATASETS (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--size", type=int, default=128, help="longest image side in px (default: 128)")
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every image count by this factor (default: 1)",
    )
    p.add_argument("--force", action="store_true", help="rewrite even if the stamp matches")
    p.add_argument(
        "--recognition",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the synthetic twins of the 11 recognition datasets to DIR "
        "(transfer/run_recognition.py --data DIR)",
    )
    p.add_argument(
        "--cifar",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write synthetic CIFAR-10 / CIFAR-100 twins in torchvision's pickled layout "
        "to DIR (DIR/cifar-10-batches-py, DIR/cifar-100-python; pretraining --data "
        "DIR/cifar-10-batches-py)",
    )
    p.add_argument(
        "--ade20k",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write a synthetic ADE20K twin (DIR/ADEChallengeData2016, the release "
        "layout, 48 x --scale training images, long side 1.25 x --size; "
        "transfer/run_segmentation.py with DETECTRON2_DATASETS=DIR)",
    )
    p.add_argument(
        "--recognition-layout",
        choices=["ssl-transfer", "torchvision"],
        default="ssl-transfer",
        help="the twins' on-disk layout (default: %(default)s)",
    )
    return p


def main(args: argparse.Namespace) -> Path:
    base = ShapesSpec()

    def scaled(d: dict[str, int]) -> dict[str, int]:
        return {k: max(1, round(v * args.scale)) for k, v in d.items()}

    spec = ShapesSpec(
        seed=args.seed,
        size=args.size,
        imagefolder=scaled(base.imagefolder),
        voc2007=scaled(base.voc2007),
        voc2012=scaled(base.voc2012),
        coco=scaled(base.coco),
    )
    t0 = time.time()
    root = generate(args.root, spec, force=args.force)
    n = sum(1 for _ in root.rglob("*.jpg"))
    print(f"synthetic shapes: {n} images under {root} ({time.time() - t0:.1f} s)")
    if args.recognition:
        from synthetic.recognition import write_recognition

        rec = write_recognition(args.recognition, args.seed, layout=args.recognition_layout)
        n = sum(1 for _ in rec.rglob("*.jpg"))
        print(f"recognition twins ({args.recognition_layout} layout): {n} images under {rec}")
    if args.ade20k:
        from synthetic.ade20k import write_ade20k

        n = max(1, round(48 * args.scale)), max(1, round(12 * args.scale))
        ade = write_ade20k(args.ade20k, args.seed, n[0], n[1], size=round(1.25 * args.size))
        print(f"ADE20K twin: {n[0]} training and {n[1]} validation images under {ade}")
    if args.cifar:
        from synthetic.cifar import write_cifar

        print(f"CIFAR twins (pickled): {write_cifar(args.cifar, args.seed)}")
    return root


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
