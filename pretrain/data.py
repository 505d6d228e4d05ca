"""Pretraining data: ImageFolder trees, BYOL's asymmetric views, a resumable sampler.

Every sample's augmentation is seeded by (seed, epoch, index), so a resumed run (and any
number of loader workers) sees exactly the same views as an uninterrupted one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUT_HELP = ("expected an ImageFolder tree: ROOT/train/<class>/<image>.JPEG (ImageNet "
               "layout), optionally ROOT/val/<class>/... for the kNN probe")


class PILGaussianBlur:
    """PIL's Gaussian blur, radius = sigma ~ U[lo, hi], applied with probability p.

    (torchvision's GaussianBlur(23) on PIL images is ~5x slower: DESIGN.md s. 7.)
    """

    def __init__(self, p: float, sigma: tuple[float, float] = (0.1, 2.0)):
        self.p, self.sigma = p, sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(()) >= self.p:
            return img
        s = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * float(torch.rand(()))
        return img.filter(ImageFilter.GaussianBlur(radius=s))


class RandomSolarize:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img, 128) if torch.rand(()) < self.p else img


@dataclass(frozen=True)
class AugConfig:
    """One view's augmentation (BYOL's asymmetric pair is two of these; DESIGN.md s. 4)."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 1.0
    solarize_p: float = 0.0

    def build(self) -> T.Compose:
        return T.Compose([
            T.RandomResizedCrop(self.size, scale=self.scale,
                                interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(*self.jitter)], p=self.jitter_p),
            T.RandomGrayscale(p=self.gray_p),
            PILGaussianBlur(self.blur_p),
            RandomSolarize(self.solarize_p),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ])


def byol_views(size: int, scale: tuple[float, float] = (0.08, 1.0)) -> list[AugConfig]:
    """BYOL / CARE: blur p 1.0 / 0.1, solarize p 0.0 / 0.2."""
    return [AugConfig(size=size, scale=tuple(scale), blur_p=1.0, solarize_p=0.0),
            AugConfig(size=size, scale=tuple(scale), blur_p=0.1, solarize_p=0.2)]


def simsiam_views(size: int, scale: tuple[float, float] = (0.2, 1.0)) -> list[AugConfig]:
    """SimSiam / GSG / MoCo v2 (DESIGN.md s. 5): two identical pipelines, jitter
    (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5, no solarize."""
    one = AugConfig(size=size, scale=tuple(scale), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5)
    return [one, one]


AUGMENTATIONS = {"byol": byol_views, "simsiam": simsiam_views}


def views_for(aug: str, size: int, scale: tuple[float, float]) -> list[AugConfig]:
    """The two views' augmentations of a named recipe (``--aug``)."""
    if aug not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation recipe {aug!r}; choose from {list(AUGMENTATIONS)}")
    return AUGMENTATIONS[aug](size, scale)


def eval_transform(size: int) -> T.Compose:
    """Resize (size / 0.875), centre crop, normalise: for kNN features."""
    return T.Compose([T.Resize(int(round(size / 0.875)),
                               interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(size), T.ToTensor(), T.Normalize(MEAN, STD)])


def list_images(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) for every image under folder/<class>/, and the class names.

    Raises FileNotFoundError / ValueError with the expected layout when it is not there.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; {LAYOUT_HELP}")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders; {LAYOUT_HELP}")
    samples = [(str(p), i) for i, c in enumerate(classes) for p in sorted((folder / c).rglob("*"))
               if p.suffix.lower() in IMG_EXTENSIONS]
    if not samples:
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {folder}/<class>/; "
                         f"{LAYOUT_HELP}")
    return samples, classes


class ViewsDataset(Dataset):
    """Images of a folder as lists of augmented views; unreadable images give ``None``
    (the collate function drops and counts them)."""

    def __init__(self, folder: str | Path, views: list[AugConfig], seed: int = 0):
        self.samples, self.classes = list_images(Path(folder))
        self.transforms = [v.build() for v in views]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int):
        path, label = self.samples[idx]
        # Per-sample seed: the same views whatever the worker, order or resume point.
        seed = ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + idx) % (2**31 - 1)
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, ValueError, SyntaxError):
            return None
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            views = [t(img) for t in self.transforms]
        finally:
            torch.set_rng_state(state)
        return views, label, idx


class LabelledImages(Dataset):
    """Images with labels through a deterministic transform (kNN banks)."""

    def __init__(self, folder: str | Path, size: int, limit_per_class: int = 0):
        samples, self.classes = list_images(Path(folder))
        if limit_per_class:
            kept, count = [], {}
            for path, y in samples:
                if count.get(y, 0) < limit_per_class:
                    kept.append((path, y))
                    count[y] = count.get(y, 0) + 1
            samples = kept
        self.samples, self.transform = samples, eval_transform(size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int):
        path, label = self.samples[idx]
        try:
            with Image.open(path) as im:
                return self.transform(im.convert("RGB")), label
        except (OSError, ValueError, SyntaxError):
            return None


class BadImageCounter:
    """Collate that drops unreadable samples and counts them."""

    def __init__(self):
        self.bad = 0
        self.seen = 0

    def __call__(self, batch):
        self.seen += len(batch)
        good = [b for b in batch if b is not None]
        self.bad += len(batch) - len(good)
        if not good:
            return None
        return torch.utils.data.default_collate(good)


class ResumableSampler(Sampler[int]):
    """Epoch-seeded permutation, sharded over ranks, that can start mid-epoch.

    Each rank gets ``len // world`` indices (the tail is dropped, as DistributedSampler
    with drop_last); ``start`` skips that many of this rank's indices (resume).
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n // self.world - self.start

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.n // self.world * self.world]
        mine = perm[self.rank::self.world].tolist()
        return iter(mine[self.start:])
