"""Frozen features of a recognition split, extracted once per (weights, dataset, split,
transform) and cached by content hash.

``extract(backbone, samples, ...)`` -> (N, C) float32 pooled res5 of the backbone in eval
mode (ssl-transfer's ``ResNetBackbone``: conv1 .. layer4, average pool, flatten). The
cache file is ``<cache>/<key>.npy`` with ``key`` the sha256 of the weights' hash, the
sample list's fingerprint, the transform and the architecture: a rerun, a second protocol
over the same features, or a resumed run never recomputes them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T

from common.atomic import atomic_write
from common.badimages import open_rgb
from common.cli import BadInput
from common.distributed import every_rank, world
from transfer.recognition.datasets import Samples

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def eval_transform(size: int, normalise: bool) -> T.Compose:
    """ssl-transfer's: Resize(size, bicubic) of the shorter side, CenterCrop(size),
    ToTensor, Normalize (ImageNet's mean / std, or 0 / 1 for --no-norm)."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalise else ((0.0,) * 3, (1.0,) * 3)
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])  # fmt: skip


def fewshot_transform(size: int, normalise: bool) -> T.Compose:
    """ssl-transfer's few-shot evaluation transform: Resize to a square of int(1.15 * size)
    (torchvision's default bilinear; 257 for 224), CenterCrop(size), ToTensor, Normalize."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if normalise else ((0.0,) * 3, (1.0,) * 3)
    side = int(size * 1.15)
    return T.Compose([
        T.Resize([side, side]),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])  # fmt: skip


def open_pre_resized(path: Path, size: tuple[int, int]):
    """ssl-transfer's ChestX loading: ``Image.open(p).resize(size).convert('RGB')`` with
    the resampling filter Pillow (>= 7) uses by default, named here; None if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            nearest = im.mode in ("1", "P")
            im = im.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC)
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


class SplitImages(Dataset):
    """(image tensor, index) of a ``Samples``; an unreadable image is a one-line error."""

    def __init__(self, samples: Samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        if self.samples.arrays is not None:
            img = Image.fromarray(self.samples.arrays[i])
        else:
            path = self.samples.paths[i]
            pre = self.samples.pre_resize
            img = open_pre_resized(path, pre) if pre else open_rgb(path)
            if img is None:
                raise BadInput(
                    f"{self.samples.paths[i]}: unreadable image; the frozen-feature protocols "
                    "score every image of a split: replace or re-download the file"
                )
        return self.transform(img), i


def cache_key(weights_id: str, samples: Samples, size: int, normalise: bool,
              resize: str = "bicubic") -> str:  # fmt: skip
    """The cache file's name; ``resize``: ``bicubic`` (many-shot: shorter side) or
    ``square_bilinear`` (few-shot: ``fewshot_transform``)."""
    spec = {"weights": weights_id, "samples": samples.fingerprint(), "size": size,
            "normalise": normalise, "resize": resize, "pool": "res5_avg", "v": 1}  # fmt: skip
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def extract(backbone, samples: Samples, transform, batch_size: int, workers: int,
            device: torch.device, desc: str) -> np.ndarray:  # fmt: skip
    """(N, C) float32 pooled res5 features in the samples' order, with a tqdm bar. Under
    several processes each extracts every world-th image and every process gets all rows
    (each image's features are its own forward's: the same as one process)."""
    from tqdm import tqdm

    rank, size = world()
    backbone.eval()
    mine = Subset(SplitImages(samples, transform), list(range(rank, len(samples), size)))
    loader = DataLoader(mine, batch_size=batch_size, num_workers=workers, shuffle=False)
    rows, index = [], []
    t0 = time.perf_counter()
    with tqdm(total=len(mine), desc=desc, unit="img", dynamic_ncols=True, leave=False,
              disable=rank != 0) as bar:  # fmt: skip
        for x, idx in loader:
            f = backbone(x.to(device), stages=("res5",))["res5"]
            f = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(f, 1), 1).float().cpu()
            rows.append(f.numpy())
            index.append(idx.numpy())
            bar.update(len(idx))
            bar.set_postfix_str(f"{bar.n * size / (time.perf_counter() - t0):.1f} img/s")
    parts = [(np.concatenate(index), np.concatenate(rows))] if rows else []
    if size > 1:
        import torch.distributed as dist

        gathered = [None] * size
        dist.all_gather_object(gathered, parts)
        parts = [p for g in gathered for p in g]
    out = np.zeros((len(samples), parts[0][1].shape[1]), np.float32)
    for idx, f in parts:
        out[idx] = f
    return out


def cached_features(cache_dir: Path, key: str, compute) -> tuple[np.ndarray, bool]:
    """(features, True if read from the cache). ``compute()`` runs only on a miss; the file
    is written atomically, so an interrupted extraction leaves no partial cache entry."""
    path = cache_dir / f"{key}.npy"
    feats = None
    if path.is_file():
        try:
            feats = np.load(path)
        except (OSError, ValueError):  # a damaged entry is recomputed
            path.unlink(missing_ok=True)
    if every_rank(feats is not None):  # several processes extract together, or none does
        return feats, True
    feats = compute()
    if world()[0] == 0:
        atomic_write(path, lambda f: np.save(f, feats))
    return feats, False
