"""GSG's Figure 2 layout: ADE20K validation images, their ground truth, each checkpoint's
prediction (UPerNet R50), in a class colour map.

    python -m tables.segfigure --runs output --out ade20k_predictions.png
    python -m tables.segfigure --runs output --images 5 --colors color150.mat

Each segmentation seed keeps the predictions of its first validation images
(``<seed>/inference/predictions/*.png`` and ``index.json``, written by the evaluator); the
figure takes, per weights file, its lowest finished seed. ``python -m tables`` draws it too
when such runs exist. Colours: by default a fixed 150-colour map (the PASCAL VOC devkit's
bit-interleaved scheme), or the CSAIL toolkit's ``color150.mat`` / any 150 x 3 CSV given
with ``--colors``; unlabelled pixels are black.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import json

import numpy as np
from PIL import Image

from common.cli import doc_parser, run_cli
from tables.aggregate import TablesError, add_runs_arg

PREDICTIONS = Path("inference") / "predictions"
IGNORE = 255


def default_palette(n: int = 150) -> np.ndarray:
    """(n, 3) uint8: class k gets the VOC devkit's colour of index k + 1 (bits of k + 1
    spread over R, G, B from the most significant bit down)."""
    out = np.zeros((n, 3), np.uint8)
    for k in range(n):
        c, rgb = k + 1, [0, 0, 0]
        for j in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - j)
            c >>= 3
        out[k] = rgb
    return out


def read_palette(path: Path | None, n: int = 150) -> np.ndarray:
    """(n, 3) uint8 colours: ``path`` (.mat with a 'colors' array, or a CSV of rows r,g,b)
    or the default map."""
    if path is None:
        return default_palette(n)
    if not path.is_file():
        raise TablesError(f"--colors {path}: no such file")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        colors = np.asarray(loadmat(str(path)).get("colors"))
    else:
        colors = np.loadtxt(path, delimiter=",", ndmin=2)
    if colors.ndim != 2 or colors.shape[0] < n or colors.shape[1] != 3:
        raise TablesError(f"--colors {path}: expected {n} rows of R, G, B, got {colors.shape}")
    return colors[:n].astype(np.uint8)


def colourise(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class indices (255 unlabelled) -> (H, W, 3) uint8."""
    out = np.zeros((*label.shape, 3), np.uint8)
    known = label < len(palette)
    out[known] = palette[label[known]]
    return out


def prediction_sets(roots: list[Path], weights: list[str] | None = None) -> dict[str, Path]:
    """{weights stem: the predictions folder of its lowest finished segmentation seed}, in
    the order of ``weights`` when given."""
    found: dict[str, tuple[int, Path]] = {}
    for root in roots:
        for metrics in sorted(root.glob("*/*/seed*/metrics.json")):
            seed_dir = metrics.parent
            m = json.loads(metrics.read_text())
            pred = seed_dir / PREDICTIONS
            if m.get("family") != "segmentation" or not (pred / "index.json").is_file():
                continue
            stem = seed_dir.parent.name
            if stem not in found or m["seed_index"] < found[stem][0]:
                found[stem] = (m["seed_index"], pred)
    if weights:
        missing = [w for w in weights if w not in found]
        if missing:
            raise TablesError(f"no finished segmentation seed with predictions for {missing}; "
                              f"found: {sorted(found)}")  # fmt: skip
        return {w: found[w][1] for w in weights}
    return {k: v[1] for k, v in sorted(found.items())}


def draw(
    sets: dict[str, Path], out: Path, images: int = 10, palette: np.ndarray | None = None
) -> Path:
    """The figure: a row per validation image (the first ``images`` all sets share), columns
    image | ground truth | one prediction per weights file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not sets:
        raise TablesError("no segmentation predictions to draw (run transfer/run_segmentation.py)")
    palette = default_palette() if palette is None else palette
    indices = {w: json.loads((p / "index.json").read_text()) for w, p in sets.items()}
    stems = sorted(set.intersection(*(set(i) for i in indices.values())))[:images]
    first = next(iter(indices.values()))
    cols = ["image", "ground truth", *sets]
    fig, axes = plt.subplots(len(stems), len(cols), figsize=(2.2 * len(cols), 1.8 * len(stems)),
                             squeeze=False)  # fmt: skip
    for r, stem in enumerate(stems):
        rec = first[stem]
        panels = [np.asarray(Image.open(rec["file_name"]).convert("RGB")),
                  colourise(np.asarray(Image.open(rec["sem_seg_file_name"])), palette)]  # fmt: skip
        panels += [colourise(np.asarray(Image.open(p / f"{stem}.png")), palette)
                   for p in sets.values()]  # fmt: skip
        for c, (ax, img) in enumerate(zip(axes[r], panels)):
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    add_runs_arg(p, "results roots of transfer/run_segmentation.py")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("ade20k_predictions.png"),
        help="the PNG to write (default: %(default)s)",
    )
    p.add_argument(
        "--images",
        type=int,
        default=10,
        help="validation images, the first in file-name order (default: 10)",
    )
    p.add_argument(
        "--weights",
        nargs="+",
        default=None,
        help="weights stems to show, in order (default: every one found)",
    )
    p.add_argument(
        "--colors",
        type=Path,
        default=None,
        help="class colours: the toolkit's color150.mat or a CSV of 150 R,G,B rows",
    )
    return p  # fmt: skip


def main(args: argparse.Namespace) -> Path:
    sets = prediction_sets(args.runs, args.weights)
    out = draw(sets, args.out, args.images, read_palette(args.colors))
    print(f"wrote {out} ({len(sets)} checkpoint(s))")
    return out


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
