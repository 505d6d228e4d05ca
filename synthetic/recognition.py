"""Synthetic twins of the 15 recognition datasets, in their real on-disk formats.

``write_recognition(root)`` writes ``root/<Folder>`` for each dataset in ssl-transfer's
layout (``layout="torchvision"``: torchvision's folder names and file places instead)::

    Aircraft/data/{images/*.jpg, images_variant_{train,val,trainval,test}.txt}
    Caltech101/{caltech101/101_ObjectCategories/<class>/*.jpg, train.txt, test.txt}
    Cars/{devkit/cars_train_annos.mat, devkit/cars_test_annos_withlabels.mat, cars_*/}
    CIFAR10/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}   (pickles)
    CIFAR100/cifar-100-python/{train, test, meta}
    DTD/{images/<class>/*.jpg, labels/{train,val,test}1.txt}
    Flowers/{jpg/image_%05d.jpg, setid.mat, imagelabels.mat}
    Food/food-101/{images/<class>/*.jpg, meta/{train,test}.json, meta/classes.txt}
    Pets/{images/*.jpg, annotations/{trainval,test}.txt}
    SUN397/{ClassName.txt, Training_01.txt, Testing_01.txt, <l>/<class>/sun_*.jpg}
    VOC2007/VOCdevkit/VOC2007/{JPEGImages, ImageSets/Main/<class>_<split>.txt}
    CropDiseases/dataset/train/<class>/*.JPG          (few-shot only, CD-FSL's four)
    EuroSAT/2750/<class>/*.jpg
    ISIC/{ISIC2018_Task3_Training_Input/*.jpg, ISIC2018_Task3_Training_GroundTruth/*.csv}
    ChestX/{images/*.png, Data_Entry_2017.csv}

Each image is one silhouette (``writers.silhouette``) whose shape is its class (VOC2007:
category j is present iff the class is j mod 4), so a backbone that knows shapes scores
above one that does not. Caltech101's split files are made by ssl-transfer's algorithm
with 5 draws per class (30 would leave no test image in so small a twin).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from common.atomic import atomic_write_text
from common.locks import waiting_lock
from common.splits import caltech101_split_lines
from synthetic.render import CLASSES
from synthetic.writers import _save_jpeg, silhouette

STAMP = "recognition.json"
FORMAT_VERSION = 2
SPLITS = {"train": 8, "val": 3, "test": 4}  # images per class and split
N_CLASSES = 4  # classes per dataset (each a shape of CLASSES)
VOC_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
TORCHVISION_FOLDERS = {
    "Aircraft": "fgvc-aircraft-2013b", "Cars": "stanford_cars", "DTD": "dtd/dtd",
    "Flowers": "flowers-102", "Pets": "oxford-iiit-pet", "SUN397": "SUN397",
    "EuroSAT": "eurosat",
}  # fmt: skip


class _Images:
    """Deterministic silhouettes: image ``i`` of class ``c`` in split ``split``."""

    def __init__(self, seed: int, size: int, code: int):
        self.seed, self.size, self.code = seed, size, code

    def array(self, split: str, c: int, i: int) -> np.ndarray:
        split_code = {"train": 1, "val": 2, "test": 3}[split]
        rng = np.random.default_rng([self.seed, 100 + self.code, split_code, c, i])
        return silhouette(rng, c % len(CLASSES), self.size)

    def save(self, split: str, c: int, i: int, path: Path) -> None:
        _save_jpeg(self.array(split, c, i), path)


def _each(splits=("train", "val", "test")):
    for split in splits:
        n = SPLITS[split]
        for c in range(N_CLASSES):
            for i in range(n):
                yield split, c, i


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def write_aircraft(d: Path, im: _Images) -> None:
    names = ["707-320", "A300B4", "Boeing 737-200", "DC-9-30"]  # one with a space, as real
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for split, c, i in _each():
        image_id = f"{1000000 + 1000 * c + 100 * ('train', 'val', 'test').index(split) + i}"
        im.save(split, c, i, d / "data" / "images" / f"{image_id}.jpg")
        lines[split].append(f"{image_id} {names[c]}")
    for split, rows in {**lines, "trainval": lines["train"] + lines["val"]}.items():
        _write_lines(d / "data" / f"images_variant_{split}.txt", rows)


def _write_caltech101(d: Path, im: _Images) -> None:
    folder = d / "caltech101" / "101_ObjectCategories"
    names = ["BACKGROUND_Google", "Faces", "airplanes", "ant"]  # ImageFolder's sorted order
    for split, c, i in _each():
        n = ("train", "val", "test").index(split) * 100 + i
        im.save(split, c, i, folder / names[c] / f"image_{n + 1:04d}.jpg")
    train, test = caltech101_split_lines(folder, per_class=5)
    _write_lines(d / "train.txt", train)
    _write_lines(d / "test.txt", test)


def _savemat(path: Path, data: dict) -> None:
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), data)


def _cars_annotations(rows: list[tuple[int, str]]) -> np.ndarray:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    ann = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for j, (label, fname) in enumerate(rows):
        for f, v in zip(fields[:4], (1, 1, 30, 30)):
            ann[0, j][f] = np.array([[v]], np.uint8)
        ann[0, j]["class"] = np.array([[label]], np.uint8)
        ann[0, j]["fname"] = np.array([fname])
    return ann


def _write_cars(d: Path, im: _Images, torchvision: bool) -> None:
    rows: dict[str, list] = {"train": [], "test": []}
    for split, c, i in _each(("train", "test")):
        fname = f"{len(rows[split]) + 1:05d}.jpg"
        im.save(split, c, i, d / f"cars_{split}" / fname)
        rows[split].append((c + 1, fname))  # the class field is 1-based
    _savemat(
        d / "devkit" / "cars_train_annos.mat", {"annotations": _cars_annotations(rows["train"])}
    )
    test_mat = d / ("" if torchvision else "devkit") / "cars_test_annos_withlabels.mat"
    _savemat(test_mat, {"annotations": _cars_annotations(rows["test"])})


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_arrays(im: _Images, splits) -> tuple[np.ndarray, list[int]]:
    data, labels = [], []
    for split, c, i in _each(splits):
        a = np.asarray(Image.fromarray(im.array(split, c, i)).resize((32, 32)))
        data.append(a.transpose(2, 0, 1).reshape(-1))
        labels.append(c)
    return np.stack(data).astype(np.uint8), labels


def _write_cifar10(d: Path, im: _Images) -> None:
    folder = d / "cifar-10-batches-py"
    data, labels = _cifar_arrays(im, ("train", "val"))
    for b, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        _pickle(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5",
                "labels": [labels[j] for j in part], "data": data[part],
                "filenames": [f"img_{j}.png" for j in part]})  # fmt: skip
    test, test_labels = _cifar_arrays(im, ("test",))
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels,
                                    "data": test, "filenames": []})  # fmt: skip
    _pickle(folder / "batches.meta", {"label_names": list(CLASSES[:N_CLASSES])})


def _write_cifar100(d: Path, im: _Images) -> None:
    folder = d / "cifar-100-python"
    for name, splits in (("train", ("train", "val")), ("test", ("test",))):
        data, labels = _cifar_arrays(im, splits)
        _pickle(folder / name, {"data": data, "fine_labels": labels,
                                "coarse_labels": [0] * len(labels), "filenames": []})  # fmt: skip
    _pickle(folder / "meta", {"fine_label_names": list(CLASSES[:N_CLASSES])})


def _write_dtd(d: Path, im: _Images) -> None:
    names = ["banded", "blotchy", "braided", "bubbly"]
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for split, c, i in _each():
        n = ("train", "val", "test").index(split) * 100 + i
        rel = f"{names[c]}/{names[c]}_{n:04d}.jpg"
        im.save(split, c, i, d / "images" / rel)
        lines[split].append(rel)
    for split, rows in lines.items():
        _write_lines(d / "labels" / f"{split}1.txt", rows)


def _write_flowers(d: Path, im: _Images) -> None:
    ids: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    labels = []
    for split, c, i in _each():
        n = len(labels) + 1
        im.save(split, c, i, d / "jpg" / f"image_{n:05d}.jpg")
        labels.append(c + 1)  # imagelabels.mat is 1-based
        ids[split].append(n)
    _savemat(d / "setid.mat", {"trnid": np.array([ids["train"]]), "valid": np.array([ids["val"]]),
                               "tstid": np.array([ids["test"]])})  # fmt: skip
    _savemat(d / "imagelabels.mat", {"labels": np.array([labels])})


def _write_food(d: Path, im: _Images) -> None:
    names = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio"]
    meta: dict[str, dict] = {"train": {n: [] for n in names}, "test": {n: [] for n in names}}
    for split, c, i in _each():
        part = "test" if split == "test" else "train"
        image_id = f"{names[c]}/{100000 * (split == 'val') + 1000 + i}"
        im.save(split, c, i, d / "food-101" / "images" / f"{image_id}.jpg")
        meta[part][names[c]].append(image_id)
    for part, rows in meta.items():
        atomic_write_text(d / "food-101" / "meta" / f"{part}.json", json.dumps(rows))
    _write_lines(d / "food-101" / "meta" / "classes.txt", names)


def _write_pets(d: Path, im: _Images) -> None:
    names = ["Abyssinian", "Bengal", "american_bulldog", "beagle"]
    lines: dict[str, list[str]] = {"trainval": [], "test": []}
    for split, c, i in _each():
        part = "test" if split == "test" else "trainval"
        image_id = f"{names[c]}_{100 * (split == 'val') + i + 1}"
        im.save(split, c, i, d / "images" / f"{image_id}.jpg")
        lines[part].append(f"{image_id} {c + 1} {1 + (c < 2)} 1")  # CLASS-ID SPECIES BREED-ID
    for part, rows in lines.items():
        _write_lines(d / "annotations" / f"{part}.txt", rows)


def _write_sun397(d: Path, im: _Images) -> None:
    names = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop", "/s/shop"]
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for split, c, i in _each():
        part = "test" if split == "test" else "train"
        rel = f"{names[c]}/sun_{100 * (split == 'val') + i:08d}.jpg"
        im.save(split, c, i, d / rel[1:])
        lines[part].append(rel)
    _write_lines(d / "ClassName.txt", names)
    _write_lines(d / "Training_01.txt", lines["train"])
    _write_lines(d / "Testing_01.txt", lines["test"])


def _write_voc2007(d: Path, im: _Images) -> None:
    base = d / "VOCdevkit" / "VOC2007"
    rows: dict[str, list] = {"train": [], "val": [], "test": []}
    for split, c, i in _each():
        image_id = f"{len(rows['train']) + len(rows['val']) + len(rows['test']) + 1:06d}"
        im.save(split, c, i, base / "JPEGImages" / f"{image_id}.jpg")
        rows[split].append((image_id, c))
    rows["trainval"] = rows["train"] + rows["val"]
    for split, items in rows.items():
        _write_lines(base / "ImageSets" / "Main" / f"{split}.txt", [i for i, _ in items])
        for j, name in enumerate(VOC_NAMES):
            lines = []
            for k, (image_id, c) in enumerate(items):
                present = j % N_CLASSES == c  # every category has positives
                # a difficult-only object ("0") now and then: a negative, as in ssl-transfer
                flag = 1 if present else (0 if (k + j) % 7 == 0 else -1)
                lines.append(f"{image_id} {flag:2d}")
            _write_lines(base / "ImageSets" / "Main" / f"{name}_{split}.txt", lines)


CDFSL_IMAGES = 12  # per class, all in one pool (the few-shot smoke needs 10)


def _cdfsl_images(im: _Images):
    for c in range(N_CLASSES):
        for i in range(CDFSL_IMAGES):
            yield c, i, im.array("train", c, i)


def _write_cropdiseases(d: Path, im: _Images) -> None:
    names = ["Apple___Apple_scab", "Apple___healthy", "Corn___Common_rust", "Tomato___healthy"]
    for c, i, a in _cdfsl_images(im):
        _save_jpeg(a, d / "dataset" / "train" / names[c] / f"{names[c][:5]}{i:04d}.JPG")


def _write_eurosat(d: Path, im: _Images) -> None:
    names = ["AnnualCrop", "Forest", "Highway", "River"]
    for c, i, a in _cdfsl_images(im):
        _save_jpeg(a, d / "2750" / names[c] / f"{names[c]}_{i + 1}.jpg")


def _write_isic(d: Path, im: _Images) -> None:
    header = "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
    rows = [header]
    for c, i, a in _cdfsl_images(im):
        name = f"ISIC_{24306 + 100 * c + i:07d}"
        _save_jpeg(a, d / "ISIC2018_Task3_Training_Input" / f"{name}.jpg")
        onehot = ["1.0" if j == 2 * c else "0.0" for j in range(7)]  # classes 0, 2, 4, 6
        rows.append(",".join([name, *onehot]))
    _write_lines(d / "ISIC2018_Task3_Training_GroundTruth" /
                 "ISIC2018_Task3_Training_GroundTruth.csv", rows)  # fmt: skip


def _write_chestx(d: Path, im: _Images) -> None:
    """Grayscale PNGs; besides the single-finding rows the reader keeps, rows it must drop
    (two findings, "No Finding", Pneumonia), as the real Data_Entry_2017.csv has."""
    names = ["Atelectasis", "Effusion", "Mass", "Pneumothorax"]
    rows = [
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    ]
    extra = ["Atelectasis|Effusion", "No Finding", "Pneumonia"]
    k = 0
    for c, i, a in _cdfsl_images(im):
        k += 1
        name = f"{k:08d}_000.png"
        path = d / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).convert("L").save(path)
        finding = names[c] if i < CDFSL_IMAGES - 1 or c >= len(extra) else extra[c]
        rows.append(f"{name},{finding},0,{k},58,M,PA,2682,2749,0.143,0.143,")
    _write_lines(d / "Data_Entry_2017.csv", rows)


WRITERS = {
    "Aircraft": write_aircraft, "Caltech101": _write_caltech101, "Cars": _write_cars,
    "CIFAR10": _write_cifar10, "CIFAR100": _write_cifar100, "DTD": _write_dtd,
    "Flowers": _write_flowers, "Food": _write_food, "Pets": _write_pets,
    "SUN397": _write_sun397, "VOC2007": _write_voc2007,
    "CropDiseases": _write_cropdiseases, "EuroSAT": _write_eurosat, "ISIC": _write_isic,
    "ChestX": _write_chestx,
}  # fmt: skip


def write_recognition(
    root: str | Path, seed: int = 0, size: int = 40, layout: str = "ssl-transfer"
) -> Path:
    """Write (or reuse) every twin under ``root``; returns ``root`` (the ``--data`` of
    ``transfer/run_recognition.py``). ``layout``: ``ssl-transfer`` or ``torchvision``."""
    root = Path(root)
    spec = {"format_version": FORMAT_VERSION, "seed": seed, "size": size, "layout": layout,
            "splits": SPLITS, "classes": N_CLASSES}  # fmt: skip
    stamp = root / STAMP
    with waiting_lock(root / ".recognition.lock"):
        if stamp.exists() and json.loads(stamp.read_text()) == spec:
            return root
        stamp.unlink(missing_ok=True)
        for code, (folder, write) in enumerate(WRITERS.items()):
            d = root / folder
            if layout == "torchvision" and folder in TORCHVISION_FOLDERS:
                d = d / TORCHVISION_FOLDERS[folder]
            im = _Images(seed, size, code)
            if write is _write_cars:
                write(d, im, torchvision=layout == "torchvision")
            else:
                write(d, im)
        atomic_write_text(stamp, json.dumps(spec, indent=1))  # last: the twins are complete
    return root
