"""Pretraining data: the collections of ``common.imagesets`` (ImageFolder trees, CIFAR's
batches, unlabelled folders and lists), BYOL's asymmetric views, a resumable sampler.

Every sample's augmentation is seeded by (seed, epoch, index), so a resumed run (and any
number of loader workers) sees exactly the same views as an uninterrupted one.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from common.badimages import UNREADABLE, open_rgb
from common.cli import ConfigError
from common.imagesets import Split, imagefolder_split

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LAYOUT_HELP = (
    "expected an ImageFolder tree: ROOT/train/<class>/<image>.JPEG (ImageNet "
    "layout), optionally ROOT/val/<class>/... for the kNN probe; or a CIFAR folder "
    "(cifar-10-batches-py/, cifar-100-python/), a folder of unlabelled images or a list file"
)


@dataclass(frozen=True)
class AugConfig:
    """One view's augmentation (BYOL's asymmetric pair is two of these; docs/methods.md, CARE)."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 1.0
    solarize_p: float = 0.0
    interpolation: str = "bilinear"  # the crop's resize: torchvision's default (or bicubic)

    def blur_sigma(self) -> tuple[float, float]:
        """Blur sigma range in pixels: BYOL's (0.1, 2.0) at 224 px, scaled with the view
        side so that small views (CPU runs) are blurred as much, relative to their size."""
        return 0.1 * self.size / 224, 2.0 * self.size / 224

    def build(self) -> ViewTransform:
        return ViewTransform(self)


RATIO = (3 / 4, 4 / 3)


class ViewTransform:
    """One view: RandomResizedCrop (bilinear by default, as torchvision's) + horizontal flip,
    then the photometric part
    (colour jitter with probability, grayscale, Gaussian blur, solarize, normalise).

    ``draw(width, height)`` draws every random choice of one view as a dict of tensors
    (``ViewParams``), in the same order and from the same torch RNG calls as torchvision's
    RandomResizedCrop, RandomHorizontalFlip, RandomApply(ColorJitter), RandomGrayscale,
    then blur and solarize; ``apply(img, params)`` makes the view with PIL. The two are
    split so that the batched device path (``pretrain.device_aug``) applies the same draws.
    ``__call__(img)`` = both: ``(view (3, S, S), geometry (5,))`` with geometry = the crop
    ``(x0, y0, w, h)`` in the source image's pixels and ``flip`` (1.0 / 0.0): what maps a
    box of the image into the view (``map_boxes``).
    """

    def __init__(self, cfg: AugConfig):
        self.cfg = cfg
        self.jitter = T.ColorJitter(*cfg.jitter)  # its checked ranges (None = not applied)
        j = self.jitter
        # which of brightness, contrast, saturation, hue have a range (get drawn and applied)
        self.jitter_active = tuple(
            r is not None for r in (j.brightness, j.contrast, j.saturation, j.hue)
        )
        self.sigma = cfg.blur_sigma()
        self.normalize = T.Normalize(MEAN, STD)

    def crop_params(self, img: Image.Image) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random crop."""
        return self.crop_params_wh(*img.size)

    def crop_params_wh(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random crop of a ``width`` x ``height`` image
        (torchvision's RandomResizedCrop.get_params; only the image's size is read)."""
        shape_only = torch.empty(1, 1, 1).expand(1, height, width)
        return T.RandomResizedCrop.get_params(shape_only, list(self.cfg.scale), list(RATIO))

    def draw(
        self, width: int, height: int, crop: tuple[int, int, int, int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Every random choice of one view of a ``width`` x ``height`` image (ViewParams):
        ``crop`` (4,) top, left, h, w; ``flip``, ``jitter``, ``gray``, ``solarize`` (bool);
        ``order`` (4,) the jitter order (0 brightness, 1 contrast, 2 saturation, 3 hue);
        ``factors`` (4,) their factors (1, 1, 1, 0 where not drawn); ``sigma`` the blur
        sigma in pixels (0 = no blur)."""
        cfg = self.cfg
        top, left, h, w = crop or self.crop_params_wh(width, height)
        flip = bool(torch.rand(1) < 0.5)
        order, factors = torch.arange(4), [1.0, 1.0, 1.0, 0.0]
        jitter = not cfg.jitter_p < torch.rand(1)  # RandomApply's test
        if jitter:
            j = self.jitter
            order, *drawn = T.ColorJitter.get_params(j.brightness, j.contrast, j.saturation, j.hue)
            factors = [d if d is not None else f for f, d in zip(factors, drawn)]
        gray = bool(torch.rand(1) < cfg.gray_p)
        sigma = 0.0
        if not torch.rand(()) >= cfg.blur_p:
            lo, hi = self.sigma
            sigma = lo + (hi - lo) * float(torch.rand(()))
        solarize = bool(torch.rand(()) < cfg.solarize_p)
        return {
            "crop": torch.tensor([top, left, h, w]),
            "flip": torch.tensor(flip),
            "jitter": torch.tensor(jitter),
            "order": order.clone(),
            "factors": torch.tensor(factors, dtype=torch.float32),
            "gray": torch.tensor(gray),
            "sigma": torch.tensor(sigma, dtype=torch.float32),
            "solarize": torch.tensor(solarize),
        }

    def apply(self, img: Image.Image, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """The view (3, S, S), normalised, of ``img`` under the draws ``p`` (PIL ops)."""
        top, left, h, w = p["crop"].tolist()
        out = TF.resized_crop(
            img,
            top,
            left,
            h,
            w,
            [self.cfg.size, self.cfg.size],
            interpolation=T.InterpolationMode(self.cfg.interpolation),
        )
        if p["flip"]:
            out = TF.hflip(out)
        if p["jitter"]:
            f = p["factors"].tolist()
            for i in p["order"].tolist():
                if self.jitter_active[i]:
                    out = JITTER_OPS[i](out, f[i])
        if p["gray"]:
            out = TF.rgb_to_grayscale(out, num_output_channels=3)
        if p["sigma"] > 0:  # PIL's blur: ~5x faster than torchvision's (docs/performance.md)
            out = out.filter(ImageFilter.GaussianBlur(radius=float(p["sigma"])))
        if p["solarize"]:
            out = ImageOps.solarize(out, 128)
        return self.normalize(TF.to_tensor(out))

    def __call__(self, img: Image.Image, crop: tuple[int, int, int, int] | None = None):
        p = self.draw(*img.size, crop=crop)
        x0, y0 = p["crop"][1], p["crop"][0]
        geom = torch.tensor(
            [x0, y0, p["crop"][3], p["crop"][2], float(p["flip"])], dtype=torch.float32
        )
        return self.apply(img, p), geom


JITTER_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


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
    return [
        AugConfig(size=size, scale=tuple(scale), blur_p=1.0, solarize_p=0.0),
        AugConfig(size=size, scale=tuple(scale), blur_p=0.1, solarize_p=0.2),
    ]


def simsiam_views(size: int, scale: tuple[float, float] = (0.2, 1.0)) -> list[AugConfig]:
    """SimSiam / GSG / MoCo v2 (docs/methods.md, SimSiam and GSG): two identical pipelines, jitter
    (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5, no solarize."""
    one = AugConfig(size=size, scale=tuple(scale), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5)
    return [one, one]


def crop_views(size: int, scale: tuple[float, float] = (0.5, 1.0)) -> list[AugConfig]:
    """Crops and flips only, no photometric change: for short sanity runs on the synthetic
    silhouettes (the learning-signal tests), where the paper recipes' colour and blur
    augmentations need far more steps than a CPU run has."""
    one = AugConfig(size=size, scale=tuple(scale), jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    return [one, one]


def cifar_views(size: int, scale: tuple[float, float] = (0.08, 1.0)) -> list[AugConfig]:
    """lightly's CIFAR benchmark (GSG B.2): its SimCLR collate at strength 0.5 without blur,
    the same for both views: crop scale (0.08, 1), flip 0.5, jitter (0.4, 0.4, 0.4, 0.1)
    p 0.8, grayscale 0.2, no blur, no solarize."""
    one = AugConfig(size=size, scale=tuple(scale), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.0)
    return [one, one]


AUGMENTATIONS = {
    "byol": byol_views,
    "simsiam": simsiam_views,
    "cifar": cifar_views,
    "crop": crop_views,
}


def views_for(
    aug: str,
    size: int,
    scale: tuple[float, float],
    n_views: int = 2,
    interpolation: str = "bilinear",
) -> list[AugConfig]:
    """The views' augmentations of a named recipe (``--aug``): its pair, repeated to
    ``n_views`` (GSG's four crops: the pair twice), each resizing with ``interpolation``."""
    if aug not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation recipe {aug!r}; choose from {list(AUGMENTATIONS)}")
    pair = [replace(v, interpolation=interpolation) for v in AUGMENTATIONS[aug](size, scale)]
    return [pair[i % 2] for i in range(n_views)]


def eval_transform(size: int, resize: bool = True) -> T.Compose:
    """Resize (size / 0.875), centre crop, normalise: for kNN and probe features. With
    ``resize`` off the images are taken as they are (a centre crop of ``size`` at most:
    lightly's CIFAR monitor feeds the 32 px images unchanged)."""
    steps = [T.CenterCrop(size)]
    if resize:
        steps.insert(
            0, T.Resize(int(round(size / 0.875)), interpolation=T.InterpolationMode.BICUBIC)
        )
    return T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])


def as_split(source: str | Path | Split) -> Split:
    """A ``Split`` as it is; a folder path as an ImageFolder split (folder/<class>/...)."""
    return source if isinstance(source, Split) else imagefolder_split(source, LAYOUT_HELP)


def list_images(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) for every image under folder/<class>/, and the class names.

    Raises a clear error with the expected layout when it is not there.
    """
    split = imagefolder_split(folder, LAYOUT_HELP)
    return split.samples, split.classes


class ViewsDataset(Dataset):
    """Images of a folder as ``(views, label, index)``, views a list of (3, S, S) tensors;
    with a method's ``hook`` (``Method.data_hook``; MaskCo's masked pair) the hook makes the
    views and more: ``(views, label, index, *extra)``. Unreadable images give
    ``None`` (the collate function drops and counts them).

    With ``raw`` (``--batch-aug``: the views are made on the device by
    ``device_aug.DeviceAugment``) an item is ``(payload, params, label, index)``: the
    file's bytes (1-D uint8) for a JPEG in RGB or L mode, else the image decoded here
    (3, H, W) uint8; and each view's draws (``ViewTransform.draw``), from the same
    per-sample seed as the PIL path.
    """

    def __init__(
        self,
        folder: str | Path | Split,
        views: list[AugConfig],
        seed: int = 0,
        hook=None,
        raw: bool = False,
    ):
        split = as_split(folder)
        self.samples, self.classes = split.samples, split.classes
        self.transforms = [v.build() for v in views]
        self.seed, self.epoch = seed, 0
        self.hook = hook  # (image, transforms) -> (views, *extra), e.g. MaskCo's boxes
        if raw and hook is not None:
            raise ValueError("raw items (--batch-aug) cannot carry a method's data hook")
        self.raw = raw

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int):
        path, label = self.samples[idx]
        # Per-sample seed: the same views whatever the worker, order or resume point.
        seed = ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + idx) % (2**31 - 1)
        if self.raw:
            return self._raw_item(path, label, idx, seed)
        img = open_rgb(path)
        if img is None:
            return None
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            if self.hook is not None:
                views, *extra = self.hook(img, self.transforms)
                return (views, label, idx, *extra)
            return [t(img)[0] for t in self.transforms], label, idx
        finally:
            torch.set_rng_state(state)

    def _raw_item(self, path: str | np.ndarray, label: int, idx: int, seed: int):
        if isinstance(path, np.ndarray):  # an image held in memory (CIFAR): (H, W, 3) uint8
            h, w = path.shape[:2]
            payload = torch.from_numpy(path).permute(2, 0, 1).contiguous()
            return self._draws(payload, w, h, label, idx, seed)
        try:
            data = Path(path).read_bytes()
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                (w, h), jpeg = im.size, im.format == "JPEG" and im.mode in ("RGB", "L")
                payload = (
                    torch.frombuffer(bytearray(data), dtype=torch.uint8)
                    if jpeg
                    else torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
                )
        except UNREADABLE:
            return None
        return self._draws(payload, w, h, label, idx, seed)

    def _draws(self, payload: torch.Tensor, w: int, h: int, label: int, idx: int, seed: int):
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return payload, [t.draw(w, h) for t in self.transforms], label, idx
        finally:
            torch.set_rng_state(state)


class LabelledImages(Dataset):
    """Images with labels through a deterministic transform (kNN banks, the probe's val);
    ``resize`` as ``eval_transform``'s."""

    def __init__(
        self,
        folder: str | Path | Split,
        size: int,
        limit_per_class: int = 0,
        resize: bool = True,
    ):
        split = as_split(folder)
        samples, self.classes = split.samples, split.classes
        if limit_per_class:
            kept, count = [], {}
            for path, y in samples:
                if count.get(y, 0) < limit_per_class:
                    kept.append((path, y))
                    count[y] = count.get(y, 0) + 1
            samples = kept
        self.samples, self.transform = samples, eval_transform(size, resize)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int):
        path, label = self.samples[idx]
        img = open_rgb(path)
        return None if img is None else (self.transform(img), label)


class Payloads(NamedTuple):
    """A raw batch's images in few tensors, so a worker hands a batch over in one
    shared-memory transfer instead of one per image: ``flat`` the JPEG files' bytes end to
    end (uint8), ``sizes`` (N,) each sample's byte count (0: the worker decoded it, see
    ``decoded``), ``decoded`` the (3, H, W) uint8 images of the other samples, in order."""

    flat: torch.Tensor
    sizes: torch.Tensor
    decoded: list[torch.Tensor]

    @classmethod
    def pack(cls, items: list[torch.Tensor]) -> Payloads:
        """items: JPEG bytes (1-D uint8) or decoded images (3, H, W) uint8."""
        jpegs = [t for t in items if t.dim() == 1]
        flat = torch.cat(jpegs) if jpegs else torch.empty(0, dtype=torch.uint8)
        sizes = torch.tensor([t.numel() if t.dim() == 1 else 0 for t in items], dtype=torch.int64)
        return cls(flat, sizes, [t for t in items if t.dim() == 3])

    def unpack(self) -> list[torch.Tensor]:
        """The items again (views into ``flat``, no copies)."""
        out, start, decoded = [], 0, iter(self.decoded)
        for n in self.sizes.tolist():
            out.append(self.flat[start : start + n] if n else next(decoded))
            start += n
        return out


def collate_raw(items: list) -> tuple:
    """Collate of ``ViewsDataset(raw=True)`` items ``(payload, params, label, index)``: the
    payloads, of different sizes, packed into one ``Payloads``; the rest as torch's."""
    return (
        Payloads.pack([b[0] for b in items]),
        *torch.utils.data.default_collate([b[1:] for b in items]),
    )


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
        mine = perm[self.rank :: self.world].tolist()
        return iter(mine[self.start :])
