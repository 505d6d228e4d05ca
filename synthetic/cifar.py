"""Synthetic twins of CIFAR-10 and CIFAR-100 in torchvision's pickled layout::

    ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    ROOT/cifar-100-python/{train, test, meta}

Every image is a 32 x 32 silhouette (``writers.silhouette``): class ``c`` is shape
``c % 6`` of ``render.CLASSES`` tinted with hue ``c // 6`` (classes 0-5 keep the grey of the
other twins), so a backbone that knows shape and colour separates them. Images are stored as
the real files store them: ``data`` (N, 3072) uint8, each row the R, G, B planes in turn.
"""

from __future__ import annotations

import colorsys
import json
import pickle
from pathlib import Path

import numpy as np

from common.atomic import atomic_write_text
from common.imagesets import CIFAR
from common.locks import waiting_lock
from synthetic.render import CLASSES
from synthetic.writers import silhouette

STAMP = "cifar.json"
FORMAT_VERSION = 1


def tint(c: int, n_classes: int) -> np.ndarray:
    """(3,) RGB multipliers of class ``c``: white for the first shapes, then hues."""
    k = c // len(CLASSES)
    if k == 0:
        return np.ones(3)
    hues = -(-n_classes // len(CLASSES)) - 1  # the tinted groups
    return np.array(colorsys.hsv_to_rgb((k - 1) / max(hues, 1), 0.8, 1.0))


def cifar_image(seed: int, dataset: str, split: str, c: int, i: int, n_classes: int):
    """(32, 32, 3) uint8: image ``i`` of class ``c`` of one twin's split (deterministic)."""
    code = (1 if dataset == "cifar10" else 2, 1 if split == "train" else 2)
    rng = np.random.default_rng([seed, 300, *code, c, i])
    grey = silhouette(rng, c % len(CLASSES), 32).astype(np.float32)
    return np.clip(grey * tint(c, n_classes), 0, 255).astype(np.uint8)


def _arrays(seed, dataset, split, n_classes, per_class) -> tuple[np.ndarray, list[int]]:
    """(N, 3072) rows in CIFAR's plane order and the labels, classes interleaved as in the
    real batches (image i of every class, then image i + 1)."""
    rows, labels = [], []
    for i in range(per_class):
        for c in range(n_classes):
            a = cifar_image(seed, dataset, split, c, i, n_classes)
            rows.append(a.transpose(2, 0, 1).reshape(-1))
            labels.append(c)
    return np.stack(rows), labels


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(
    root: str | Path,
    seed: int = 0,
    train_per_class: int = 20,
    test_per_class: int = 8,
    cifar100_per_class: tuple[int, int] = (3, 1),
) -> Path:
    """Write (or reuse, by its stamp) both twins under ``root``; returns ``root``. CIFAR-10
    gets ``train_per_class`` / ``test_per_class`` images per class, CIFAR-100
    ``cifar100_per_class``."""
    root = Path(root)
    spec = {"format_version": FORMAT_VERSION, "seed": seed, "cifar10": [train_per_class,
            test_per_class], "cifar100": list(cifar100_per_class)}  # fmt: skip
    stamp = root / STAMP
    with waiting_lock(root / ".cifar.lock"):
        if stamp.exists() and json.loads(stamp.read_text()) == spec:
            return root
        stamp.unlink(missing_ok=True)
        c10 = CIFAR["cifar10"]
        folder = root / c10.folder
        data, labels = _arrays(seed, "cifar10", "train", 10, train_per_class)
        for b, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
            _dump(folder / f"data_batch_{b}", {
                "batch_label": f"training batch {b} of 5", "labels": [labels[j] for j in part],
                "data": data[part], "filenames": [f"synthetic_{j}.png" for j in part]})  # fmt: skip
        data, labels = _arrays(seed, "cifar10", "test", 10, test_per_class)
        _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels,
                                      "data": data, "filenames": []})  # fmt: skip
        names = [f"{CLASSES[c % len(CLASSES)]}_{c // len(CLASSES)}" for c in range(100)]
        _dump(folder / c10.meta, {"label_names": names[:10], "num_vis": 3072})
        c100 = CIFAR["cifar100"]
        folder = root / c100.folder
        for name, split, n in (("train", "train", cifar100_per_class[0]),
                               ("test", "test", cifar100_per_class[1])):  # fmt: skip
            data, labels = _arrays(seed, "cifar100", split, 100, n)
            _dump(folder / name, {"data": data, "fine_labels": labels,
                                  "coarse_labels": [c // 5 for c in labels],
                                  "filenames": []})  # fmt: skip
        coarse = [f"super_{k}" for k in range(20)]
        _dump(folder / c100.meta, {"fine_label_names": names, "coarse_label_names": coarse})
        atomic_write_text(stamp, json.dumps(spec, indent=1))  # last: the twins are complete
    return root
