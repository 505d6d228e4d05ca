#!/usr/bin/env python
"""The whole pipeline on built-in synthetic data (``make demo``), CPU, minutes.

1. writes the synthetic shapes (ImageFolder, VOC, COCO layouts);
2. pretrains CARE and BYOL (ResNet-50, small images, a few epochs);
3. converts both checkpoints, plus a random-initialisation baseline;
4. runs the VOC C4 and COCO C4 smoke protocols, 2 seeds each, for the three;
5. regenerates the tables (CSV / Markdown / LaTeX) and per-protocol plots;
6. draws Grad-CAM attention maps of CARE and BYOL (CARE's Fig. 4).

Every step reuses what a previous run finished (pretraining resumes, finished seeds are
skipped), so re-running is cheap. ``--tiny`` is the smallest version (used by the tests).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIZES = {  # pretraining recipe (pretrain.recipes), transfer iterations / seeds, data counts
    "small": dict(
        recipe="demo",
        iters=12,
        seeds=2,
        shapes=dict(
            size=96,
            imagefolder={"train": 16, "val": 8},
            voc2007={"trainval": 16, "test": 8},
            voc2012={"trainval": 8},
            coco={"train2017": 16, "val2017": 8},
        ),
    ),
    "tiny": dict(
        recipe="demo-tiny",
        iters=2,
        seeds=1,
        shapes=dict(
            size=64,
            imagefolder={"train": 4, "val": 2},
            voc2007={"trainval": 4, "test": 3},
            voc2012={"trainval": 2},
            coco={"train2017": 4, "val2017": 3},
        ),
    ),
}


def step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.time()


def pretrain(method: str, recipe: str, data: Path, out: Path) -> Path:
    from pretrain.recipes import RECIPES, recipe_config
    from pretrain.trainer import run

    final = out / "weights" / f"{method}_{RECIPES[recipe]['arch'].replace('resnet', 'r')}.pth"
    if final.exists():
        print(f"{final}: done earlier, reused")
        return final
    return run(
        recipe_config(
            recipe,
            method=method,
            data=str(data),
            out=str(final),
            output=str(out / "pretrain" / method),
        )  # fmt: skip
    )


def transfer(script: list[str], weights: str, size: dict, out: Path, shapes: Path) -> int:
    cmd = [
        sys.executable,
        *script,
        "--weights",
        weights,
        "--seeds",
        str(size["seeds"]),
        "--dataset",
        "synthetic",
        "--output",
        str(out / "runs"),
        "--shapes-root",
        str(shapes),
        "SOLVER.MAX_ITER",
        str(size["iters"]),
        "SOLVER.STEPS",
        f"({max(1, size['iters'] * 2 // 3)},)",
        "TEST.PRECISE_BN.NUM_ITER",
        "2",
    ]
    return subprocess.run(cmd, cwd=REPO).returncode


def get_args_parser() -> argparse.ArgumentParser:
    from common.cli import doc_parser

    p = doc_parser(__doc__)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("output/demo"),
        help="everything goes here (default: %(default)s)",
    )
    p.add_argument("--tiny", action="store_true", help="smallest size (tests)")
    return p


def tables_and_maps(
    out: Path, shapes: Path, weights: dict[str, Path], arch: str, image_size: int
) -> dict[str, Path]:
    """Steps 5 and 6: the tables and plots of every finished seed, then the attention maps."""
    from pretrain import visualize
    from tables import __main__ as tables_cli

    step("5/6 tables and plots")
    short = arch.replace("resnet", "r")
    argv = ["--runs", str(out / "runs"), "--out", str(out / "tables"), "--compare",
            f"byol_{short}", f"care_{short}", "--label", "random_init=Rand Init",
            "--decimals", "2"]  # fmt: skip
    written = tables_cli.main(tables_cli.get_args_parser().parse_args(argv))

    step("6/6 attention maps (Grad-CAM, CARE Fig. 4)")
    argv = ["--weights", str(weights["care"]), str(weights["byol"]), "--images",
            str(shapes / "imagefolder" / "val"), "--out", str(out / "attention_maps.png"),
            "--size", str(image_size * 2), "--max-images", "6"]  # fmt: skip
    written["attention_maps.png"] = visualize.main(visualize.get_args_parser().parse_args(argv))
    return written


def report(out: Path, written: dict[str, Path], seconds: float) -> None:
    print(f"\n=== done in {seconds:.0f} s. Results:")
    for name in ("table4.md", "table4.csv", "table4.tex", "attention_maps.png"):
        if name in written:
            print(f"  {written[name]}")
    for path in sorted(p for k, p in written.items() if k.endswith(".png") and "maps" not in k):
        print(f"  {path}")
    if (out / "tables" / "table4.md").exists():
        print("\n" + (out / "tables" / "table4.md").read_text())


def main(args: argparse.Namespace) -> dict[str, Path]:
    from pretrain.recipes import RECIPES
    from synthetic import ShapesSpec, generate

    size = SIZES["tiny" if args.tiny else "small"]
    recipe = RECIPES[size["recipe"]]
    out = args.out.resolve()
    t_all = step("1/6 synthetic shapes")
    shapes = generate(out / "datasets" / "shapes", ShapesSpec(**size["shapes"]))
    print(f"written under {shapes}")

    step(
        f"2/6 pretraining CARE and BYOL (recipe {size['recipe']}: {recipe['arch']}, "
        f"{recipe['epochs']} epochs, {recipe['image_size']} px)"
    )
    weights = {
        m: pretrain(m, size["recipe"], shapes / "imagefolder", out) for m in ("care", "byol")
    }

    step(
        "3-4/6 conversion and transfer: VOC C4 and COCO C4 smoke protocols, "
        f"{size['seeds']} seed(s) each"
    )
    failures = []
    for w in [str(weights["care"]), str(weights["byol"]), "none"]:
        for script in (["transfer/run_voc.py"], ["transfer/run_coco.py", "--arch", "c4"]):
            if transfer(script, w, size, out, shapes) != 0:
                failures.append(f"{script[0]} --weights {w}")

    written = tables_and_maps(out, shapes, weights, recipe["arch"], recipe["image_size"])
    report(out, written, time.time() - t_all)
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        raise SystemExit(1)
    return written


if __name__ == "__main__":
    main(get_args_parser().parse_args())
