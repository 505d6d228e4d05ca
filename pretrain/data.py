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
from torchvision.transforms import functional as TF

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

    def blur_sigma(self) -> tuple[float, float]:
        """Blur sigma range in pixels: BYOL's (0.1, 2.0) at 224 px, scaled with the view
        side so that small views (CPU runs) are blurred as much, relative to their size."""
        return 0.1 * self.size / 224, 2.0 * self.size / 224

    def build(self) -> ViewTransform:
        return ViewTransform(self)


RATIO = (3 / 4, 4 / 3)


class ViewTransform:
    """One view: RandomResizedCrop (bicubic) + horizontal flip, then the photometric part.

    ``__call__(img)`` returns ``(view (3, S, S), geometry (5,))`` with geometry = the crop
    ``(x0, y0, w, h)`` in the source image's pixels and ``flip`` (1.0 / 0.0): what maps a
    box of the image into the view (``map_boxes``). Random draws are the same, in the
    same order, as torchvision's RandomResizedCrop + RandomHorizontalFlip.
    """

    def __init__(self, cfg: AugConfig):
        self.cfg = cfg
        self.photometric = T.Compose([
            T.RandomApply([T.ColorJitter(*cfg.jitter)], p=cfg.jitter_p),
            T.RandomGrayscale(p=cfg.gray_p),
            PILGaussianBlur(cfg.blur_p, cfg.blur_sigma()),
            RandomSolarize(cfg.solarize_p),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ])

    def crop_params(self, img: Image.Image) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random crop."""
        return T.RandomResizedCrop.get_params(img, list(self.cfg.scale), list(RATIO))

    def __call__(self, img: Image.Image, crop: tuple[int, int, int, int] | None = None):
        top, left, h, w = crop or self.crop_params(img)
        out = TF.resized_crop(img, top, left, h, w, [self.cfg.size, self.cfg.size],
                              interpolation=T.InterpolationMode.BICUBIC)
        flip = bool(torch.rand(1) < 0.5)
        if flip:
            out = TF.hflip(out)
        geom = torch.tensor([left, top, w, h, float(flip)], dtype=torch.float32)
        return self.photometric(out), geom


def map_boxes(boxes: torch.Tensor, geom: torch.Tensor, size: int) -> torch.Tensor:
    """Boxes (..., 4) ``x0, y0, x1, y1`` in source pixels -> the view's pixels, for a view
    of side ``size`` made by crop ``geom[:4] = (x0, y0, w, h)`` then flip if ``geom[4]``."""
    x0, y0, w, h, flip = geom.unbind(-1)
    sx, sy = size / w, size / h
    bx0, by0 = (boxes[..., 0] - x0) * sx, (boxes[..., 1] - y0) * sy
    bx1, by1 = (boxes[..., 2] - x0) * sx, (boxes[..., 3] - y0) * sy
    if bool(flip):
        bx0, bx1 = size - bx1, size - bx0
    return torch.stack([bx0, by0, bx1, by1], dim=-1)


def byol_views(size: int, scale: tuple[float, float] = (0.08, 1.0)) -> list[AugConfig]:
    """BYOL / CARE: blur p 1.0 / 0.1, solarize p 0.0 / 0.2."""
    return [AugConfig(size=size, scale=tuple(scale), blur_p=1.0, solarize_p=0.0),
            AugConfig(size=size, scale=tuple(scale), blur_p=0.1, solarize_p=0.2)]


def simsiam_views(size: int, scale: tuple[float, float] = (0.2, 1.0)) -> list[AugConfig]:
    """SimSiam / GSG / MoCo v2 (DESIGN.md s. 5): two identical pipelines, jitter
    (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5, no solarize."""
    one = AugConfig(size=size, scale=tuple(scale), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5)
    return [one, one]


def crop_views(size: int, scale: tuple[float, float] = (0.5, 1.0)) -> list[AugConfig]:
    """Crops and flips only, no photometric change: for short sanity runs on the synthetic
    silhouettes (the learning-signal tests), where the paper recipes' colour and blur
    augmentations need far more steps than a CPU run has."""
    one = AugConfig(size=size, scale=tuple(scale), jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    return [one, one]


AUGMENTATIONS = {"byol": byol_views, "simsiam": simsiam_views, "crop": crop_views}


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
    """Images of a folder as ``(views, label, index)``, views a list of (3, S, S) tensors;
    with ``pair`` (MaskCo) ``(views, label, index, boxes)``. Unreadable images give
    ``None`` (the collate function drops and counts them)."""

    def __init__(self, folder: str | Path, views: list[AugConfig], seed: int = 0,
                 pair=None):
        self.samples, self.classes = list_images(Path(folder))
        self.transforms = [v.build() for v in views]
        self.seed, self.epoch = seed, 0
        self.pair = pair  # e.g. maskco.MaskedPair: makes the views and their boxes

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
            if self.pair is not None:
                views, boxes = self.pair(img, self.transforms)
                return views, label, idx, boxes
            return [t(img)[0] for t in self.transforms], label, idx
        finally:
            torch.set_rng_state(state)


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
