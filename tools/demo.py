#!/usr/bin/env python
"""The whole pipeline on built-in synthetic data (``make demo``), CPU, minutes.

1. writes the synthetic shapes (ImageFolder, VOC, COCO layouts);
2. pretrains CARE and BYOL (ResNet-50, small images, a few epochs);
3-4. evaluates both with the main command, ``care-bench run --suite quick --dataset
   synthetic``: every family's quick protocol (VOC C4, COCO FPN, kNN, many-shot linear on two
   recognition twins, ADE20K UPerNet) as smoke runs, 1 seed each, then ``care-bench
   status`` (the suite's report with the two checkpoints' comparison is rebuilt as seeds
   finish);
5. classification: pretrains CARE (ResNet-18, 64 px) on the silhouettes, where two CPU
   minutes measurably beat random initialisation, then runs the linear (CARE's protocol)
   and kNN smoke protocols, 2 seeds each, for it and for a random ResNet-18, and the
   many-shot linear recognition transfer (ssl-transfer's) of both on two synthetic twins;
6. draws Grad-CAM attention maps of CARE and BYOL (CARE's Fig. 4) and t-SNE maps of the
   silhouettes' validation images through the three pretrained backbones (GSG's Fig. 1);
7. regenerates the tables (CSV / Markdown / LaTeX), per-protocol plots, the segmentation
   figure (GSG's Fig. 2 layout) and ``report.html``, all of it on one page.

Every step reuses what a previous run finished (pretraining resumes, finished seeds are
skipped), so re-running is cheap. ``--tiny`` is the smallest version (used by the tests).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIZES = {  # pretraining recipe (pretrain.recipes), classification seeds, data counts
    "small": dict(
        recipe="demo",
        seeds=2,  # classification seeds
        cls=dict(per_class=64, val_per_class=32, epochs=12, probe_epochs=10),
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
        seeds=1,
        cls=dict(per_class=6, val_per_class=2, epochs=1, probe_epochs=1),
        shapes=dict(
            size=64,
            imagefolder={"train": 4, "val": 2},
            voc2007={"trainval": 4, "test": 3},
            voc2012={"trainval": 2},
            coco={"train2017": 4, "val2017": 3},
        ),
    ),
}


_STAGE: list[tuple[str, float]] = []  # (title, start) of each stage so far


def stage_done() -> None:
    """Print how long the current stage took, naming it."""
    if _STAGE:
        title, start = _STAGE[-1]
        print(f"    ({title.split(' ', 1)[0]} took {time.time() - start:.0f} s)", flush=True)


def step(title: str) -> float:
    """Close the previous stage (its time) and print this stage's title."""
    stage_done()
    now = time.time()
    _STAGE.append((title, now))
    print(f"\n=== {title}", flush=True)
    return now


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


# the smoke seeds' weights serve no later stage: the demo keeps no transfer checkpoint (the
# default, `final`, keeps each finished seed's weights: 130-260 MB per R50 seed)
KEEP = ["--keep-checkpoints", "none"]


def run_script(script: str, argv: list[str]) -> int:
    """``python transfer/<script> ARGV`` in this process, its seeds too (``--launcher
    inprocess``): torch and detectron2 are imported once for the whole demo."""
    import importlib

    module = importlib.import_module(f"transfer.{Path(script).stem}")
    return module.cli(["--launcher", "inprocess", *KEEP, *argv])


def suite_run(out: Path, weights: list[str]) -> list[str]:
    """The main command on the quick suite's synthetic runs (each seed in this process:
    torch and detectron2 are imported once), then its status view."""
    from bench.__main__ import cli

    common = ["--output", str(out / "runs")]
    argv = ["run", "--suite", "quick", "--dataset", "synthetic", "--weights", *weights,
            "--launcher", "inprocess", *KEEP, *common]  # fmt: skip
    code = cli(argv)
    cli(["status", *common, "--no-report"])
    return [] if code == 0 else ["care-bench run --suite quick --dataset synthetic"]


RECOGNITION_DATASETS = ("cifar10", "dtd")  # the demo's many-shot linear transfer


def classification(size: dict, out: Path) -> list[str]:
    """Step 5: CARE on the silhouettes (the learning-signal recipe at 64 px), then the
    linear and kNN probes (64 px crops) of it and of a random ResNet-18, and ssl-transfer's
    many-shot linear transfer of both to two synthetic recognition twins."""
    from pretrain.recipes import recipe_config
    from pretrain.trainer import run
    from synthetic import write_silhouettes

    c = size["cls"]
    data = out / "datasets" / "silhouettes"
    if not (data / "val").is_dir():
        tmp = out / "datasets" / "silhouettes.partial"
        write_silhouettes(tmp, 0, 48, {"train": c["per_class"], "val": c["val_per_class"]})
        tmp.rename(data)
    weights = out / "weights" / "care_r18.pth"
    if not weights.exists():
        run(
            recipe_config(
                "learning-signal",
                method="care",
                data=str(data),
                out=str(weights),
                output=str(out / "pretrain" / "care_r18"),
                epochs=c["epochs"],
                image_size=64,
                knn_every=c["epochs"],
                save_every=c["epochs"],
            )
        )
    else:
        print(f"{weights}: done earlier, reused")
    failures = []
    for w in (str(weights), "none"):
        for protocol, opts in (
            ("linear_care", ["epochs", str(c["probe_epochs"])]),
            ("knn", []),
        ):
            argv = ["--weights", w, "--protocol", protocol, "--seeds", str(size["seeds"]),
                    "--dataset", "synthetic", "--data", str(data), "--arch", "resnet18",
                    "--output", str(out / "runs"), *opts]  # fmt: skip
            if run_script("run_linear.py", argv) != 0:
                failures.append(f"run_linear.py --protocol {protocol} --weights {w}")
    # recognition transfer: ssl-transfer's many-shot linear on two synthetic twins
    twins = out / "datasets" / "recognition"
    argv = ["--weights", str(weights), "none", "--arch", "resnet18", "--datasets",
            *RECOGNITION_DATASETS, "--dataset", "synthetic", "--data", str(twins),
            "--output", str(out / "runs")]  # fmt: skip
    if run_script("run_recognition.py", argv) != 0:
        failures.append("run_recognition.py --protocol manyshot_linear")
    return failures


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
    """Steps 6 and 7: the attention maps, then the tables, plots and report.html of every
    finished seed (the maps among the report's figures)."""
    from pretrain import tsne, visualize
    from tables import __main__ as tables_cli

    step("6/7 attention maps (Grad-CAM, CARE Fig. 4) and t-SNE maps (GSG Fig. 1)")
    maps = out / "attention_maps.png"
    argv = ["--weights", str(weights["care"]), str(weights["byol"]), "--images",
            str(shapes / "imagefolder" / "val"), "--out", str(maps),
            "--size", str(image_size * 2), "--max-images", "6"]  # fmt: skip
    maps = visualize.main(visualize.get_args_parser().parse_args(argv))
    tsne_png = out / "tsne.png"
    argv = ["--weights", str(out / "weights" / "care_r18.pth"), str(weights["care"]),
            str(weights["byol"]), "--data", str(out / "datasets" / "silhouettes"),
            "--size", "64", "--out", str(tsne_png), "--workers", "0"]  # fmt: skip
    tsne_png = tsne.main(tsne.get_args_parser().parse_args(argv))

    step("7/7 tables, plots and report.html")
    short = arch.replace("resnet", "r")
    argv = ["--runs", str(out / "runs"), "--out", str(out / "tables"), "--compare",
            f"byol_{short}", f"care_{short}", "--label", "random_init=Rand Init",
            "--label", "random_init_r18=Rand Init", "--label", "care_r18=CARE",
            "--decimals", "2", "--html", "--figure", str(maps),
            "--figure", str(tsne_png)]  # fmt: skip
    written = tables_cli.main(tables_cli.get_args_parser().parse_args(argv))
    written["attention_maps.png"] = maps
    written["tsne.png"] = tsne_png
    return written


def report(out: Path, written: dict[str, Path], seconds: float) -> None:
    stage_done()
    print(f"\n=== done in {seconds:.0f} s. Results:")
    for name in ("report.html", "table4.md", "table4.csv", "table4.tex", "classification.md",
                 "manyshot.md", "segmentation.md", "attention_maps.png", "tsne.png",
                 "segmentation_figure.png"):  # fmt: skip
        if name in written:
            print(f"  {written[name]}")
    figures = ("attention_maps.png", "tsne.png", "segmentation_figure.png")
    for path in sorted(p for k, p in written.items() if k.endswith(".png") and k not in figures):
        print(f"  {path}")
    for name in ("table4.md", "classification.md", "manyshot.md"):
        if (out / "tables" / name).exists():
            print("\n" + (out / "tables" / name).read_text())


def main(args: argparse.Namespace) -> dict[str, Path]:
    from pretrain.recipes import RECIPES
    from synthetic import ShapesSpec, generate

    if not sys.stdout.isatty():  # a log file: a progress bar's line every 5 s, not 10 a second
        os.environ.setdefault("TQDM_MININTERVAL", "5")
    size = SIZES["tiny" if args.tiny else "small"]
    recipe = RECIPES[size["recipe"]]
    out = args.out.resolve()
    t_all = step("1/7 synthetic shapes")
    shapes = generate(out / "datasets" / "shapes", ShapesSpec(**size["shapes"]))
    print(f"written under {shapes}")

    step(
        f"2/7 pretraining CARE and BYOL (recipe {size['recipe']}: {recipe['arch']}, "
        f"{recipe['epochs']} epochs, {recipe['image_size']} px)"
    )
    weights = {
        m: pretrain(m, size["recipe"], shapes / "imagefolder", out) for m in ("care", "byol")
    }

    step("3-4/7 care-bench run --suite quick --dataset synthetic: CARE and BYOL")
    failures = suite_run(out, [str(weights["care"]), str(weights["byol"])])

    step(
        "5/7 classification: CARE (ResNet-18) on the silhouettes, then the linear and "
        f"kNN smoke protocols, {size['seeds']} seed(s) each, beside a random ResNet-18, "
        "and many-shot linear recognition transfer"
    )
    failures += classification(size, out)

    written = tables_and_maps(out, shapes, weights, recipe["arch"], recipe["image_size"])
    report(out, written, time.time() - t_all)
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        raise SystemExit(1)
    return written


if __name__ == "__main__":
    main(get_args_parser().parse_args())
