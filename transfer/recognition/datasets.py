"""The 11 many-shot recognition datasets of ssl-transfer, read from its on-disk layouts or
torchvision's layouts of the same files, with ssl-transfer's splits, labels and metrics.

``find_dataset(name, data_root)`` detects the layout (one line naming the files expected
when none matches); ``load_splits(name, data_root, options)`` returns the splits the linear
protocol fits and scores on::

    train / val   hyper-parameter selection (val: the dataset's own, or a random 20% of train)
    trainval      the final fit (train + own val, or the whole train split)
    test          the reported metric

Labels follow ssl-transfer's readers: sorted class names / ids -> 0..K-1 per reader, VOC2007
a (N, 20) 0/1 matrix (1 iff a non-difficult object of the class is present).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.cli import BadInput, InputNotFound
from common.imagesets import CIFAR, read_cifar_batches
from common.splits import caltech101_split_lines, imagefolder, random_val_indices

ISIC_CSV = "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv"
# ChestX: ssl-transfer keeps single-finding images of these 7 (Pneumonia and "No Finding"
# are left out), labelled in this order.
CHESTX_CLASSES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumothorax",
)  # fmt: skip
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset of the suite: its folder name in ssl-transfer's ``data/``, classes, metric
    (``accuracy``, ``mean_per_class`` or ``map11``) and validation split (``own`` or
    ``random20``)."""

    name: str
    title: str
    folder: str  # ssl-transfer's data/<folder>
    classes: int
    metric: str
    val: str
    layouts: tuple  # ((layout name, sub-folder, (required relative paths, ...)), ...)


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("aircraft", "FGVC-Aircraft", "Aircraft", 100, "mean_per_class", "own", (
            ("ssl-transfer", "", ("data/images", "data/images_variant_train.txt")),
            ("torchvision", "fgvc-aircraft-2013b",
             ("data/images", "data/images_variant_train.txt")),
        )),
        DatasetInfo("caltech101", "Caltech-101", "Caltech101", 102, "mean_per_class", "random20", (
            ("ssl-transfer", "", ("caltech101/101_ObjectCategories", "train.txt", "test.txt")),
            ("images only", "", ("caltech101/101_ObjectCategories",)),
        )),
        DatasetInfo("cars", "Stanford Cars", "Cars", 196, "accuracy", "random20", (
            ("ssl-transfer", "", ("devkit/cars_train_annos.mat",
                                  "devkit/cars_test_annos_withlabels.mat", "cars_train")),
            ("torchvision", "stanford_cars", ("devkit/cars_train_annos.mat",
                                              "cars_test_annos_withlabels.mat", "cars_train")),
        )),
        DatasetInfo("cifar10", "CIFAR-10", "CIFAR10", 10, "accuracy", "random20", (
            ("ssl-transfer", "",
             ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch")),
        )),
        DatasetInfo("cifar100", "CIFAR-100", "CIFAR100", 100, "accuracy", "random20", (
            ("ssl-transfer", "", ("cifar-100-python/train", "cifar-100-python/test")),
        )),
        DatasetInfo("dtd", "DTD", "DTD", 47, "accuracy", "own", (
            ("ssl-transfer", "", ("images", "labels/train1.txt")),
            ("torchvision", "dtd/dtd", ("images", "labels/train1.txt")),
        )),
        DatasetInfo("flowers", "Flowers-102", "Flowers", 102, "mean_per_class", "own", (
            ("ssl-transfer", "", ("jpg", "setid.mat", "imagelabels.mat")),
            ("torchvision", "flowers-102", ("jpg", "setid.mat", "imagelabels.mat")),
        )),
        DatasetInfo("food", "Food-101", "Food", 101, "accuracy", "random20", (
            ("ssl-transfer", "", ("food-101/images", "food-101/meta/train.json",
                                  "food-101/meta/classes.txt")),
        )),
        DatasetInfo("pets", "Oxford-IIIT Pets", "Pets", 37, "mean_per_class", "random20", (
            ("ssl-transfer", "", ("images", "annotations/trainval.txt", "annotations/test.txt")),
            ("torchvision", "oxford-iiit-pet", ("images", "annotations/trainval.txt")),
        )),
        DatasetInfo("sun397", "SUN397", "SUN397", 397, "accuracy", "random20", (
            ("ssl-transfer", "", ("ClassName.txt", "Training_01.txt", "Testing_01.txt")),
            ("torchvision", "SUN397", ("ClassName.txt", "Training_01.txt", "Testing_01.txt")),
        )),
        DatasetInfo("voc2007", "VOC2007", "VOC2007", 20, "map11", "own", (
            ("ssl-transfer", "", ("VOCdevkit/VOC2007/JPEGImages",
                                  "VOCdevkit/VOC2007/ImageSets/Main/aeroplane_train.txt")),
        )),
    )
}  # fmt: skip


# The few-shot-only datasets of ssl-transfer (CD-FSL's four), read whole (split "all").
CDFSL: dict[str, DatasetInfo] = {
    d.name: d
    for d in (
        DatasetInfo("cropdiseases", "CropDiseases", "CropDiseases", 38, "accuracy", "none", (
            ("ssl-transfer", "", ("dataset/train",)),
        )),
        DatasetInfo("eurosat", "EuroSAT", "EuroSAT", 10, "accuracy", "none", (
            ("ssl-transfer", "", ("2750",)),
            ("torchvision", "eurosat", ("2750",)),
        )),
        DatasetInfo("isic", "ISIC2018", "ISIC", 7, "accuracy", "none", (
            ("ssl-transfer", "", ("ISIC2018_Task3_Training_Input", ISIC_CSV)),
        )),
        DatasetInfo("chestx", "ChestX-ray8", "ChestX", 7, "accuracy", "none", (
            ("ssl-transfer", "", ("images", "Data_Entry_2017.csv")),
        )),
    )
}  # fmt: skip
INFO: dict[str, DatasetInfo] = {**DATASETS, **CDFSL}


@dataclass
class Samples:
    """The images of one split: ``paths`` (files) or ``arrays`` (N, H, W, 3) uint8 (CIFAR),
    and ``labels`` (N,) int64 or (N, classes) int64 for multi-label VOC2007."""

    labels: np.ndarray
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None
    root: Path | None = field(default=None, repr=False)  # what the paths are relative to
    # (w, h): resized to this in the file's own mode, then made RGB, before any transform
    # (ssl-transfer's ChestX reader: 256 x 256)
    pre_resize: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: list[int] | np.ndarray) -> Samples:
        idx = np.asarray(idx, dtype=np.int64)
        return Samples(
            self.labels[idx],
            None if self.paths is None else [self.paths[i] for i in idx],
            None if self.arrays is None else self.arrays[idx],
            self.root,
            self.pre_resize,
        )

    def fingerprint(self) -> str:
        """A content key of the sample list (relative paths or pixels, and labels)."""
        h = hashlib.sha256()
        if self.paths is not None:
            for p in self.paths:
                h.update(str(p.relative_to(self.root) if self.root else p).encode() + b"\0")
        else:
            h.update(np.ascontiguousarray(self.arrays).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        if self.pre_resize:
            h.update(f"pre_resize{self.pre_resize}".encode())
        return h.hexdigest()


def concat(a: Samples, b: Samples) -> Samples:
    """``a`` then ``b`` (torch's ConcatDataset order)."""
    return Samples(
        np.concatenate([a.labels, b.labels]),
        None if a.paths is None else a.paths + b.paths,
        None if a.arrays is None else np.concatenate([a.arrays, b.arrays]),
        a.root,
        a.pre_resize,
    )


def find_dataset(name: str, data_root: str | Path) -> tuple[Path, str]:
    """(the dataset's folder, its layout name) under ``data_root``: ``data_root/<Folder>``
    (ssl-transfer's ``data/``), torchvision's folder inside it or beside it, or
    ``data_root`` itself being the dataset's folder."""
    info = INFO[name]
    data_root = Path(data_root)
    candidates = [data_root / info.folder, data_root]
    for base in candidates:
        for layout, sub, need in info.layouts:
            folder = base / sub if sub else base
            if all((folder / rel).exists() for rel in need):
                return folder, layout
    expected = " or ".join(
        f"{(data_root / info.folder / sub / need[0]) if sub else data_root / info.folder / need[0]}"
        f" ({layout}: {', '.join(need)})"
        for layout, sub, need in info.layouts
    )
    raise InputNotFound(
        f"no {info.title} under {data_root}: expected {expected}; point --data at the folder "
        f"that holds {info.folder}/ (docs/recognition.md lists every layout)"
    )


# --- readers: one per dataset, ssl-transfer's sample order and labels -------------------


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise InputNotFound(f"{path}: missing; the dataset's split file is needed")
    return path.read_text().splitlines()


def _check_files(paths: list[Path], what: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BadInput(
            f"{len(missing)} of {len(paths)} images listed by {what} are missing, e.g. "
            f"{missing[0]}; restore them or fix the split file"
        )


def _index(values: list) -> tuple[list, dict]:
    classes = sorted(set(values))
    return classes, {c: i for i, c in enumerate(classes)}


def read_aircraft(root: Path, split: str, layout: str, **_) -> Samples:
    ids, names = [], []
    for line in _lines(root / "data" / f"images_variant_{split}.txt"):
        parts = line.split(" ")
        ids.append(parts[0])
        names.append(" ".join(parts[1:]))
    _, to_idx = _index(names)
    paths = [root / "data" / "images" / f"{i}.jpg" for i in ids]
    return Samples(np.array([to_idx[n] for n in names], np.int64), paths, root=root)


def read_caltech101(root: Path, split: str, layout: str, caltech101_split="dedup", **_):
    images = root / "caltech101" / "101_ObjectCategories"
    if (root / f"{split}.txt").is_file():
        lines = _lines(root / f"{split}.txt")
    else:  # no split files: made from the images with the official algorithm
        train, test = caltech101_split_lines(images)
        lines = train if split == "train" else test
    if caltech101_split == "dedup":
        lines = list(dict.fromkeys(lines))  # ssl-transfer's 2023 train.txt: duplicates removed
    paths = [images / line.split(" ")[0] for line in lines]
    labels = np.array([int(line.split(" ")[1]) for line in lines], np.int64)
    return Samples(labels, paths, root=root)


def _mat(path: Path):
    from scipy.io import loadmat

    if not path.is_file():
        raise InputNotFound(f"{path}: missing")
    try:
        return loadmat(str(path))
    except Exception as e:  # noqa: BLE001 - scipy raises several types for a broken file
        raise BadInput(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from e


def read_cars(root: Path, split: str, layout: str, **_) -> Samples:
    name = "cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
    mat_path = root / "devkit" / name
    if layout == "torchvision" and split == "test":
        mat_path = root / name
    annotations = _mat(mat_path)["annotations"][0]
    paths = [root / f"cars_{split}" / str(a[-1][0]) for a in annotations]
    raw = [int(np.asarray(a[-2]).reshape(-1)[0]) for a in annotations]  # class: 1..196
    _, to_idx = _index(raw)
    return Samples(np.array([to_idx[c] for c in raw], np.int64), paths, root=root)


def _cifar(root: Path, files, label_key: str) -> Samples:
    arrays, labels = read_cifar_batches(root, files, label_key)
    return Samples(np.array(labels, np.int64), arrays=arrays, root=root)


def read_cifar10(root: Path, split: str, layout: str, **_) -> Samples:
    c = CIFAR["cifar10"]
    return _cifar(root / c.folder, c.train if split == "train" else c.test, c.label_key)


def read_cifar100(root: Path, split: str, layout: str, **_) -> Samples:
    c = CIFAR["cifar100"]
    return _cifar(root / c.folder, [split], c.label_key)


def read_dtd(root: Path, split: str, layout: str, **_) -> Samples:
    classes = sorted(d.name for d in (root / "images").iterdir() if d.is_dir())
    to_idx = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for line in _lines(root / "labels" / f"{split}1.txt"):
        if not line.strip():
            continue
        paths.append(root / "images" / line.strip())
        labels.append(to_idx[line.split("/")[0]])
    return Samples(np.array(labels, np.int64), paths, root=root)


def read_flowers(root: Path, split: str, layout: str, **_) -> Samples:
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    ids = np.asarray(_mat(root / "setid.mat")[key]).reshape(-1).astype(np.int64)
    all_labels = np.asarray(_mat(root / "imagelabels.mat")["labels"]).reshape(-1)
    raw = all_labels[ids - 1].tolist()
    _, to_idx = _index(raw)
    paths = [root / "jpg" / f"image_{i:05d}.jpg" for i in ids]
    return Samples(np.array([to_idx[c] for c in raw], np.int64), paths, root=root)


def read_food(root: Path, split: str, layout: str, **_) -> Samples:
    meta = root / "food-101" / "meta"
    try:
        by_class = json.loads((meta / f"{split}.json").read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"{meta / f'{split}.json'}: unreadable ({e})") from e
    paths, labels = [], []
    for k, name in enumerate(_lines(meta / "classes.txt")):
        for image_id in by_class[name]:
            paths.append(root / "food-101" / "images" / f"{image_id}.jpg")
            labels.append(k)
    return Samples(np.array(labels, np.int64), paths, root=root)


def read_pets(root: Path, split: str, layout: str, **_) -> Samples:
    name = "trainval" if split == "train" else split
    ids, raw = [], []
    for line in _lines(root / "annotations" / f"{name}.txt"):
        if not line.strip():
            continue
        parts = line.split(" ")
        ids.append(parts[0])
        raw.append(int(parts[1].strip()))
    _, to_idx = _index(raw)
    paths = [root / "images" / f"{i}.jpg" for i in ids]
    return Samples(np.array([to_idx[c] for c in raw], np.int64), paths, root=root)


def sun397_label(rel: str, classes: list[str]) -> int | None:
    """ssl-transfer's rule: the first (sorted) class whose ``/<name>/`` occurs in the path.
    It is applied to the path relative to the dataset folder (``/a/abbey/sun_x.jpg``), not
    the joined path: a dataset folder whose own path holds a class name (``/data/shoe_shop/
    SUN397``) would otherwise label every image as that class."""
    for k, name in enumerate(classes):
        if f"/{name}/" in rel:
            return k
    return None


def read_sun397(root: Path, split: str, layout: str, **_) -> Samples:
    classes = sorted(line[3:] for line in _lines(root / "ClassName.txt") if line.strip())
    part = "Training_01.txt" if split == "train" else "Testing_01.txt"
    paths, labels = [], []
    for line in _lines(root / part):
        if not line.strip():
            continue
        rel = line.strip()
        k = sun397_label(rel, classes)
        if k is None:
            raise BadInput(f"{root / part}: {rel} names no class of {root / 'ClassName.txt'}")
        paths.append(root / rel[1:])
        labels.append(k)
    return Samples(np.array(labels, np.int64), paths, root=root)


def read_voc2007(root: Path, split: str, layout: str, **_) -> Samples:
    main = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    table: dict[str, np.ndarray] = {}
    for c, name in enumerate(VOC_CLASSES):
        for line in _lines(main / f"{name}_{split}.txt"):
            parts = line.split()
            if not parts:
                continue
            if c == 0:
                table[parts[0]] = np.zeros(len(VOC_CLASSES), np.int64)
            elif parts[0] not in table:
                raise BadInput(
                    f"{main / f'{name}_{split}.txt'}: image {parts[0]} is not in "
                    f"aeroplane_{split}.txt; the class files must list the same images"
                )
            table[parts[0]][c] = int(parts[-1])
    images = root / "VOCdevkit" / "VOC2007" / "JPEGImages"
    ids = list(table)
    labels = np.stack([(table[i] == 1).astype(np.int64) for i in ids]) if ids else np.zeros((0, 20))
    return Samples(labels, [images / f"{i}.jpg" for i in ids], root=root)


def _imagefolder(folder: Path) -> Samples:
    paths, labels, _ = imagefolder(folder)
    return Samples(np.array(labels, np.int64), paths, root=folder.parent)


def read_cropdiseases(root: Path, split: str, layout: str, **_) -> Samples:
    return _imagefolder(root / "dataset" / "train")


def read_eurosat(root: Path, split: str, layout: str, **_) -> Samples:
    return _imagefolder(root / "2750")


def _csv_rows(path: Path, min_columns: int) -> list[list[str]]:
    """The rows after the header line (ssl-transfer reads with ``skiprows=[0]``)."""
    import csv

    if not path.is_file():
        raise InputNotFound(f"{path}: missing")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f)][1:]
    bad = next((k for k, r in enumerate(rows) if r and len(r) < min_columns), None)
    if bad is not None:
        raise BadInput(f"{path}: line {bad + 2} has {len(rows[bad])} fields, expected at least "
                       f"{min_columns}; is this the dataset's own file?")  # fmt: skip
    return [r for r in rows if r]


def read_isic(root: Path, split: str, layout: str, **_) -> Samples:
    """ISIC2018 task 3 training set: the class is the first non-zero of the 7 one-hot
    columns of the ground-truth CSV (ssl-transfer: ``(labels != 0).argmax(1)``)."""
    rows = _csv_rows(root / ISIC_CSV, 8)
    try:
        onehot = np.array([[float(v) for v in r[1:8]] for r in rows])
    except ValueError as e:
        raise BadInput(f"{root / ISIC_CSV}: a non-numeric class column ({e})") from e
    labels = (onehot != 0).argmax(axis=1).astype(np.int64)
    paths = [root / "ISIC2018_Task3_Training_Input" / f"{r[0]}.jpg" for r in rows]
    return Samples(labels, paths, root=root)


def read_chestx(root: Path, split: str, layout: str, **_) -> Samples:
    """ChestX-ray8: images with exactly one finding among CHESTX_CLASSES (column 2 of
    Data_Entry_2017.csv, '|'-separated), each resized to 256 x 256 before the transform."""
    paths, labels = [], []
    for r in _csv_rows(root / "Data_Entry_2017.csv", 2):
        findings = r[1].split("|")
        if len(findings) == 1 and findings[0] in CHESTX_CLASSES:
            paths.append(root / "images" / r[0])
            labels.append(CHESTX_CLASSES.index(findings[0]))
    return Samples(np.array(labels, np.int64), paths, root=root, pre_resize=(256, 256))


READERS = {
    "aircraft": read_aircraft, "caltech101": read_caltech101, "cars": read_cars,
    "cifar10": read_cifar10, "cifar100": read_cifar100, "dtd": read_dtd,
    "flowers": read_flowers, "food": read_food, "pets": read_pets, "sun397": read_sun397,
    "voc2007": read_voc2007, "cropdiseases": read_cropdiseases, "eurosat": read_eurosat,
    "isic": read_isic, "chestx": read_chestx,
}  # fmt: skip


def read_split(name: str, data_root: str | Path, split: str, **options) -> Samples:
    """One of the dataset's own splits (``train``, ``val`` where it has one, ``test``; a
    CD-FSL dataset: ``all``)."""
    folder, layout = find_dataset(name, data_root)
    samples = READERS[name](folder, split, layout, **options)
    title = INFO[name].title
    if len(samples) == 0:
        raise BadInput(f"{title} under {folder}: the {split} split is empty")
    if samples.paths is not None:
        _check_files(samples.paths, f"{title}'s {split} split ({folder})")
    return samples


def source_splits(name: str) -> tuple[str, ...]:
    """The splits features are extracted for: own val -> train, val, test; a CD-FSL
    dataset -> all; else train, test."""
    val = INFO[name].val
    return {"own": ("train", "val", "test"), "none": ("all",)}.get(val, ("train", "test"))


def pooled(name: str, data_root: str | Path, **options) -> Samples:
    """Every image of the dataset, its source splits in order (ssl-transfer's few-shot
    ``SetDataset`` pools train, val and test)."""
    parts = [read_split(name, data_root, s, **options) for s in source_splits(name)]
    out = parts[0]
    for p in parts[1:]:
        out = concat(out, p)
    return out


def fit_splits(name: str, parts: dict[str, tuple]) -> dict[str, tuple]:
    """train / val / trainval / test as (X, y) from the source splits ``parts`` ({split:
    (X, y)}, rows in the split's sample order): the dataset's own val, trainval = train then
    val; or ssl-transfer's random 20% of train as val, trainval = the whole train split."""
    if DATASETS[name].val == "own":
        (xt, yt), (xv, yv) = parts["train"], parts["val"]
        trainval = (np.concatenate([xt, xv]), np.concatenate([yt, yv]))
        return {"train": parts["train"], "val": parts["val"], "trainval": trainval,
                "test": parts["test"]}  # fmt: skip
    x, y = parts["train"]
    train_idx, val_idx = random_val_indices(len(y))
    return {"train": (x[train_idx], y[train_idx]), "val": (x[val_idx], y[val_idx]),
            "trainval": parts["train"], "test": parts["test"]}  # fmt: skip


def fit_samples(name: str, parts: dict[str, Samples]) -> dict[str, Samples]:
    """``fit_splits`` on the images themselves (fine-tuning): train / val / trainval / test
    ``Samples`` from the source splits, with the same random 20% validation indices."""
    if DATASETS[name].val == "own":
        trainval = concat(parts["train"], parts["val"])
        return {"train": parts["train"], "val": parts["val"], "trainval": trainval,
                "test": parts["test"]}  # fmt: skip
    train_idx, val_idx = random_val_indices(len(parts["train"]))
    return {"train": parts["train"].subset(train_idx), "val": parts["train"].subset(val_idx),
            "trainval": parts["train"], "test": parts["test"]}  # fmt: skip
