"""t-SNE maps of test-set representations, side by side, coloured by class (GSG's Fig. 1).

    python -m pretrain.tsne --weights simsiam.pth simsiam_gsg.pth --data ~/data/cifar \
        --dataset cifar10 --out tsne.png

Each checkpoint's backbone (eval mode) embeds the labelled evaluation split of ``--data``
(a CIFAR folder's test batches, or an ImageFolder root's ``val/``; ``--max-images`` of
them, spread evenly over the split): its pooled res5 features, L2-normalised as the kNN
monitor compares them, go through t-SNE (2-d, perplexity 30, PCA initialisation, one seed
for every checkpoint) and are drawn one panel per checkpoint. The t-SNE library: openTSNE
(FFT-accelerated) where it is installed, else scikit-learn's Barnes-Hut TSNE
(``--engine``; docs/performance.md has their times on 10,000 x 512 features). CIFAR images
are embedded at 32 px as they are; other images resized to ``--size`` / 0.875 and
centre-cropped, as the kNN monitor reads them.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file path: import the suite from the repository root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from common.badimages import SkipBad
from common.cli import ConfigError, doc_parser, run_cli
from common.imagesets import find_cifar
from pretrain.data import LabelledImages
from pretrain.knn import extract
from pretrain.visualize import load_trunk

ENGINES = ("auto", "opentsne", "sklearn")


def evaluation_images(data: str | Path, dataset: str | None, size: int, limit: int):
    """(dataset of (image, label), class names): the test / val split, ``limit`` images
    spread evenly over it (every class keeps its share)."""
    from pretrain.config import data_splits

    train, test = data_splits(data, dataset)
    split = test or train
    if not split.labelled:
        raise ConfigError(f"--data {data}: t-SNE colours points by class; it has no labels")
    cifar = find_cifar(data, dataset) is not None
    ds = LabelledImages(split, 32 if cifar else size, resize=not cifar)
    step = max(1, len(ds) // limit) if limit else 1
    return Subset(ds, range(0, len(ds), step)[: limit or None]), split.classes


def embed(features: np.ndarray, engine: str, seed: int, perplexity: float) -> np.ndarray:
    """(N, D) -> (N, 2) with the chosen library (``auto``: openTSNE if importable)."""
    import os

    jobs = os.cpu_count() or 1
    perplexity = min(perplexity, (len(features) - 1) / 3)  # both libraries need N > 3 p
    if engine in ("auto", "opentsne"):
        try:
            from openTSNE import TSNE as OpenTSNE
        except ImportError:
            if engine == "opentsne":
                raise ConfigError("--engine opentsne: pip install openTSNE") from None
        else:
            tsne = OpenTSNE(2, perplexity=perplexity, n_jobs=jobs, random_state=seed)
            return np.asarray(tsne.fit(features))
    from sklearn.manifold import TSNE

    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, n_jobs=jobs)
    return tsne.fit_transform(features)


def draw(maps: list[np.ndarray], labels: np.ndarray, names: list[str], classes: list[str],
         out: Path) -> Path:  # fmt: skip
    """One panel per checkpoint, points coloured by class (a legend up to 20 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(maps)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 4.4), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for ax, z, name in zip(axes[0], maps, names):
        for c in np.unique(labels):
            sel = labels == c
            ax.scatter(z[sel, 0], z[sel, 1], s=3, color=cmap(int(c) % cmap.N), alpha=0.8,
                       label=classes[int(c)] if int(c) < len(classes) else str(c))  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(classes) <= 20:
        axes[0, -1].legend(fontsize=6, markerscale=3, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = doc_parser(__doc__)
    p.add_argument("--weights", nargs="+", required=True, help="checkpoints, one panel each")
    p.add_argument("--data", required=True, help="a CIFAR folder or an ImageFolder root (val/)")
    p.add_argument("--dataset", choices=("cifar10", "cifar100"), default=None,
                   help="the CIFAR release where --data holds both")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("tsne.png"), help="output PNG")
    p.add_argument("--max-images", type=int, default=10000, help="points per map (10000)")
    p.add_argument("--size", type=int, default=224, help="input side of non-CIFAR images (224)")
    p.add_argument("--engine", choices=ENGINES, default="auto", help="t-SNE library (auto)")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (30)")
    p.add_argument("--seed", type=int, default=0, help="t-SNE seed, the same for every map")
    p.add_argument("--workers", type=int, default=2, help="data loader workers")
    p.add_argument("--allow-pickle", action="store_true", help="trusted non-tensor checkpoints")
    return p


def main(args: argparse.Namespace) -> Path:
    ds, classes = evaluation_images(args.data, args.dataset, args.size, args.max_images)
    loader = DataLoader(ds, batch_size=256, num_workers=args.workers, collate_fn=SkipBad())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    maps, names, labels = [], [], None
    for w in args.weights:
        trunk, arch = load_trunk(w, args.allow_pickle)
        feats, y = extract(trunk.to(device), loader, device)
        labels = y.cpu().numpy()
        maps.append(embed(feats.cpu().numpy(), args.engine, args.seed, args.perplexity))
        names.append(f"{Path(w).stem} ({arch})")
        print(f"embedded {len(labels)} test images of {w}", flush=True)
    out = draw(maps, labels, names, classes, args.out)
    print(f"wrote {out} ({len(labels)} images x {len(maps)} checkpoints)")
    return out


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, get_args_parser(), argv)


if __name__ == "__main__":
    sys.exit(cli())
