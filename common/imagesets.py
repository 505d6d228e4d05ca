"""Image collections the readers share: ImageFolder splits, CIFAR's pickled batches, and
unlabelled collections (a flat folder of images, searched recursively, or a list file).

A collection is a ``Split``: ``samples`` is a list of ``(ref, label)`` where ``ref`` is a
file path (str) or an (H, W, 3) uint8 array (CIFAR's images, held in memory), ``label`` the
class index or -1 (unlabelled); ``classes`` the class names (empty when unlabelled).
``common.badimages.open_rgb`` decodes either kind of ref.

CIFAR on disk is torchvision's layout: ``cifar-10-batches-py/{data_batch_1..5, test_batch,
batches.meta}`` and ``cifar-100-python/{train, test, meta}`` (pickles of ``data`` (N, 3072)
uint8 in CHW order and ``labels`` / ``fine_labels``).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from common.cli import BadInput, InputNotFound


@dataclass(frozen=True)
class CifarLayout:
    """One CIFAR release's files: the training and test batches, the label key, the names."""

    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str
    meta: str
    names_key: str


CIFAR = {
    "cifar10": CifarLayout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                           ("test_batch",), "labels", "batches.meta", "label_names"),
    "cifar100": CifarLayout("cifar-100-python", ("train",), ("test",), "fine_labels", "meta",
                            "fine_label_names"),
}  # fmt: skip


@dataclass
class Split:
    """Images with labels (-1: unlabelled) and class names; ``where`` names the source."""

    samples: list[tuple[str | np.ndarray, int]]
    classes: list[str]
    where: str

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def __len__(self) -> int:
        return len(self.samples)


def is_image(p: Path) -> bool:
    return p.suffix.lower() in IMG_EXTENSIONS


def image_files(folder: Path) -> list[Path]:
    """Every image file below ``folder`` (recursively), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))


def find_cifar(root: str | Path, name: str | None = None) -> tuple[str, Path] | None:
    """(``cifar10`` / ``cifar100``, its folder) when ``root`` is a CIFAR folder or holds
    one (``root/cifar-10-batches-py``; ``name`` picks one where it holds both, as
    torchvision's root often does); None otherwise."""
    root = Path(root)
    order = sorted(CIFAR, key=lambda n: n != name)  # the named release first
    for name, layout in ((n, CIFAR[n]) for n in order):
        if root.name == layout.folder and root.is_dir():
            return name, root
        if (root / layout.folder).is_dir():
            return name, root / layout.folder
    return None


def unpickle(path: Path) -> dict:
    """One CIFAR pickle; a clear error for a missing, truncated or foreign file."""
    if not path.is_file():
        raise InputNotFound(f"{path}: missing")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - a truncated or foreign pickle
        raise BadInput(f"{path}: not a CIFAR batch ({type(e).__name__}: {e})") from e


def read_cifar_batches(folder: Path, files, label_key: str) -> tuple[np.ndarray, list[int]]:
    """(images (N, 32, 32, 3) uint8, labels) of CIFAR pickles ``files`` in ``folder``."""
    arrays, labels = [], []
    for name in files:
        d = unpickle(folder / name)
        try:
            data = np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32)
            labels.extend(int(y) for y in d[label_key])
        except (KeyError, ValueError, TypeError) as e:
            raise BadInput(
                f"{folder / name}: not a CIFAR batch (no 32x32 'data' or '{label_key}': {e})"
            ) from e
        arrays.append(data.transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(arrays)), labels


def cifar_split(root: str | Path, split: str, name: str | None = None) -> Split:
    """The ``train`` or ``test`` split of the CIFAR release at (or under) ``root``
    (``name``: cifar10 / cifar100 where it holds both)."""
    found = find_cifar(root, name)
    if found is None:
        raise InputNotFound(
            f"{root}: no CIFAR folder (expected {CIFAR['cifar10'].folder}/ or "
            f"{CIFAR['cifar100'].folder}/ as torchvision writes them)"
        )
    name, folder = found
    layout = CIFAR[name]
    files = layout.train if split == "train" else layout.test
    missing = [f for f in (*layout.train, *layout.test, layout.meta) if not (folder / f).is_file()]
    if missing:
        raise InputNotFound(
            f"{folder}: missing {', '.join(missing)}; torchvision's {name} holds "
            f"{', '.join((*layout.train, *layout.test, layout.meta))}"
        )
    images, labels = read_cifar_batches(folder, files, layout.label_key)
    meta = unpickle(folder / layout.meta)
    classes = [str(c) for c in meta.get(layout.names_key, [])]
    if not classes or max(labels) >= len(classes):
        raise BadInput(f"{folder / layout.meta}: no '{layout.names_key}' for every label")
    return Split([(images[i], y) for i, y in enumerate(labels)], classes, f"{folder} ({split})")


def imagefolder_split(folder: str | Path, help_text: str) -> Split:
    """``folder/<class>/<image>`` (any depth below the class folder); ``help_text`` is
    appended to the error when the layout is not there."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFound(f"{folder} does not exist; {help_text}")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise BadInput(f"{folder} has no class sub-folders; {help_text}")
    samples = [(str(p), i) for i, c in enumerate(classes) for p in image_files(folder / c)]
    if not samples:
        raise BadInput(
            f"no images ({', '.join(IMG_EXTENSIONS)}) under {folder}/<class>/; {help_text}"
        )
    return Split(samples, classes, str(folder))


def flat_split(folder: str | Path) -> Split:
    """Every image below ``folder``, unlabelled (COCO's ``train2017/``, a web-image dump)."""
    folder = Path(folder)
    files = image_files(folder)
    if not files:
        raise BadInput(
            f"no images ({', '.join(IMG_EXTENSIONS)}) found below {folder}; point --data at "
            "an ImageFolder root (train/<class>/), a CIFAR folder, a folder of images or a "
            "list file"
        )
    return Split([(str(p), -1) for p in files], [], f"{folder} (unlabelled, recursive)")


def list_split(path: str | Path) -> Split:
    """The images named in a text file, one path a line (relative paths: to the file's
    folder; blank lines and lines starting with '#' skipped), unlabelled."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"list file {path} not found")
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    refs = [Path(ln) if Path(ln).is_absolute() else path.parent / ln
            for ln in lines if ln and not ln.startswith("#")]  # fmt: skip
    if not refs:
        raise BadInput(f"list file {path} names no images (one path a line)")
    missing = [str(p) for p in refs if not p.is_file()]
    if missing:
        raise InputNotFound(
            f"{len(missing)} of {len(refs)} images listed in {path} do not exist (e.g. "
            f"{missing[0]}); paths are read relative to the list file's folder"
        )
    return Split([(str(p), -1) for p in refs], [], f"{path} (unlabelled list)")
