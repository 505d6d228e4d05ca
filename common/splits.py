"""ssl-transfer's split algorithms, transcribed: its random validation split and its
Caltech-101 30-per-class split (used by the readers and by the synthetic twins alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def random_val_indices(n: int, valid_size: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """ssl-transfer's split of a train set of ``n`` samples (``get_train_valid_loader``):
    indices 0..n-1 shuffled by numpy's legacy generator seeded ``seed``; the first
    floor(valid_size n) are val. Returns (train indices, val indices) in that order."""
    indices = list(range(n))
    np.random.RandomState(seed).shuffle(indices)
    split = int(np.floor(valid_size * n))
    return indices[split:], indices[:split]


def imagefolder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """torchvision ImageFolder's samples: classes = sorted sub-folders, files sorted."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: missing")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    paths, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted((folder / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(f)
                labels.append(k)
    return paths, labels, classes


def caltech101_split_lines(
    folder: Path, per_class: int = 30, seed: int = 0
) -> tuple[list[str], list[str]]:
    """ssl-transfer's ``create_caltech101_splits`` on the images under ``folder``
    (``101_ObjectCategories``): per class, in label order, ``per_class`` indices drawn with
    replacement by numpy's legacy generator seeded ``seed`` (one stream for all classes),
    sorted; test = every image never drawn. Lines ``<class>/<file> <label>``; the train
    lines keep their duplicates (the first published train.txt: 3060 lines, 2416 unique)."""
    paths, labels, classes = imagefolder(folder)
    ids = [f"{p.parent.name}/{p.name}" for p in paths]
    rng = np.random.RandomState(seed)
    by_class: dict[int, list[int]] = {k: [] for k in range(len(classes))}
    for i, k in enumerate(labels):
        by_class[k].append(i)
    train: list[int] = []
    for k in by_class:
        train.extend(np.sort(rng.choice(by_class[k], per_class)).tolist())
    drawn = set(train)
    test = [i for i in range(len(labels)) if i not in drawn]
    return [f"{ids[i]} {labels[i]}" for i in train], [f"{ids[i]} {labels[i]}" for i in test]
