"""ImageNet-layout data for the classification protocols: checks, transforms, datasets.

Layout: ``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*.JPEG`` (the val split in
class folders, as torchvision's ImageFolder reads it), or a CIFAR release in torchvision's
format (``ROOT`` = or holding ``cifar-10-batches-py/`` / ``cifar-100-python/``: train and
test batches; its samples are the (32, 32, 3) images themselves, not paths). SimCLR's
subset files (one image name per line, e.g. ``n01440764_10026.JPEG``) select the
semi-supervised training images. Unreadable images are skipped (``None`` items;
``common.badimages``) and capped by the protocol's ``max_bad_frac``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

from common.badimages import BadCount, open_rgb
from common.cli import BadInput, InputNotFound
from common.imagesets import cifar_split, find_cifar

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUT = "ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG"
VAL_HINT = (
    "ImageNet's val images come in one flat folder: move each into a folder named after its "
    "class (e.g. with the widely used valprep.sh, or from LOC_val_solution.csv)"
)
# ImageNet's RGB PCA (AlexNet's "Lighting" noise; OpenSelfSup's transforms.Lighting)
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
BAD_FIX = "check the files, or allow more with a trailing `max_bad_frac F`"


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMG_EXTENSIONS


def scan_split(root: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(path, class index)]) of ``root/split``; a clear error otherwise."""
    folder = root / split
    if not folder.is_dir():
        raise InputNotFound(f"{folder} is missing: expected the ImageNet layout {LAYOUT}")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        loose = [p for p in folder.iterdir() if p.is_file() and _is_image(p)]
        hint = f"; {VAL_HINT}" if loose else ""
        raise BadInput(f"{folder} holds no class folders (expected {LAYOUT}){hint}")
    samples = []
    for k, c in enumerate(classes):
        files = sorted(p for p in (folder / c).rglob("*") if p.is_file() and _is_image(p))
        samples += [(str(p), k) for p in files]
    if not samples:
        raise BadInput(f"{folder}: class folders hold no images (expected {LAYOUT})")
    return classes, samples


def check_layout(root: Path, cifar: str | None = None) -> tuple[list[str], list, list]:
    """(class names, train samples, val samples), after checking that train and val have
    the same class folders (each split is listed once). A CIFAR folder gives its train and
    test batches (``cifar``: cifar10 / cifar100 where ``root`` holds both)."""
    if find_cifar(root, cifar) is not None:
        train = cifar_split(root, "train", cifar)
        return train.classes, train.samples, cifar_split(root, "test", cifar).samples
    train_classes, train = scan_split(root, "train")
    val_classes, val = scan_split(root, "val")
    if train_classes != val_classes:
        only = sorted(set(train_classes) ^ set(val_classes))[:5]
        raise BadInput(
            f"{root}: train has {len(train_classes)} class folders, val {len(val_classes)}; "
            f"they must be the same (e.g. {only}). {VAL_HINT}"
        )
    return train_classes, train, val


def read_subset(path: Path, samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The samples named in a SimCLR subset file (one file name per line)."""
    if not path.is_file():
        raise InputNotFound(
            f"subset file {path} is missing: the semi-supervised protocols train on SimCLR's "
            "label subsets (1percent.txt / 10percent.txt from the SimCLR repository's "
            "imagenet_subsets folder); put it there or pass --subset-file"
        )
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if samples and not isinstance(samples[0][0], str | Path):
        raise BadInput(f"{path}: subset files name ImageNet files; this dataset is CIFAR")
    by_name = {Path(p).name: (p, k) for p, k in samples}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise BadInput(
            f"{path}: {len(missing)} of {len(names)} listed images are not in the train "
            f"split (e.g. {missing[:3]}); is it the subset file of this dataset?"
        )
    return [by_name[n] for n in names]


class Lighting:
    """AlexNet-style PCA colour noise on a (3, H, W) tensor in [0, 1]."""

    def __init__(self, alphastd: float = 0.1):
        self.alphastd = alphastd
        self.eigval = torch.tensor(EIGVAL)
        self.eigvec = torch.tensor(EIGVEC)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        alpha = torch.empty(3).normal_(0, self.alphastd)
        rgb = (self.eigvec * alpha.view(1, 3) * self.eigval.view(1, 3)).sum(1)
        return img + rgb.view(3, 1, 1)


def train_transform(aug: str, crop: int) -> T.Compose:
    """RandomResizedCrop(crop) + flip (+ ColorJitter(0.4, 0.4, 0.4, 0) + Lighting)."""
    steps = [T.RandomResizedCrop(crop), T.RandomHorizontalFlip()]
    if aug == "rrc_flip_jitter_lighting":
        steps += [T.ColorJitter(0.4, 0.4, 0.4, 0.0), T.ToTensor(), Lighting(0.1)]
    else:
        steps.append(T.ToTensor())
    return T.Compose(steps + [T.Normalize(MEAN, STD)])


def eval_transform(resize: int, crop: int, square: bool = False) -> T.Compose:
    """Resize(resize) (or to a resize x resize square) then CenterCrop(crop)."""
    size = (resize, resize) if square else resize
    return T.Compose([T.Resize(size), T.CenterCrop(crop), T.ToTensor(), T.Normalize(MEAN, STD)])


class Images(Dataset):
    """(image tensor, label) per sample; ``None`` for an unreadable image."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        img = open_rgb(path)
        return None if img is None else (self.transform(img), label)


class BadCounter(BadCount):
    """The unreadable images of one pass over a split, refused past ``max_frac``: as the
    pass goes (from 100 images on) and at its end (``check_end``)."""

    def __init__(self, max_frac: float, where: str):
        super().__init__()
        self.max_frac, self.what = max_frac, f"of {where}"

    def take(self, item):
        batch = super().take(item)
        self.check(self.max_frac, self.what, BAD_FIX, min_seen=100)
        return batch

    def check_end(self) -> None:
        self.check(self.max_frac, self.what, BAD_FIX)
