"""The toolkit's data pipeline as a detectron2 mapper and batch sampler.

Training (``TrainBatches`` + ``OrientationBatchSampler``): an iteration's
``SOLVER.IMS_PER_BATCH`` images form groups of ``INPUT.IMS_PER_GROUP``, the toolkit's per-GPU
batches (2 GPUs x 2 images): whatever the process count, each process gets its share of the
groups (one process: both; two: one each). A group holds images of one orientation (h > w,
or h <= w, the toolkit's two buckets) and draws one short side from
``INPUT.MIN_SIZE_TRAIN``; every image is scaled by min(short / min(h, w),
max / max(h, w)) (sizes truncated to integers), flipped with probability 0.5, resized
(PIL bilinear; the label nearest), and its label padded (unlabelled) to a multiple of 4 and
downsampled x4 (nearest). No crop. The model pads each group to a multiple of 32 and averages
the groups' losses, as the toolkit's data-parallel loss mean (``UPerNetSegmentor``).
Testing (``TestMapper``): the image at each of ``INPUT.TEST_SHORT_SIDES``, each size rounded
up to a multiple of 32 (a resize, not a pad), the label left at full resolution for the
evaluator.

The sampler yields one process's iteration at a time (a tuple of groups, each a tuple of
(index, short side, flip)), so detectron2's ``ToIterableDataset`` shards whole iterations
across loader workers; its stream is a function of the seed only, and ``start_batch`` skips
the iterations a resumed run already used.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.utils.data as torchdata
from PIL import Image

from common.badimages import UNREADABLE, SkippedLog, TooManyBadImages
from common.cli import BadInput


def round_up(x: int, p: int) -> int:
    """The smallest multiple of ``p`` >= ``x`` (the toolkit's round2nearest_multiple)."""
    return ((x - 1) // p + 1) * p


def train_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """(h', w') of a training image: the scale of the short side, the long side capped,
    truncated to integers as the toolkit's int32 arrays do."""
    scale = min(short / min(h, w), max_size / max(h, w))
    return int(h * scale), int(w * scale)


def test_size(h: int, w: int, short: int, max_size: int, divisor: int = 32) -> tuple[int, int]:
    """(h', w') of a test scale: truncated, then each rounded up to a multiple of ``divisor``."""
    h2, w2 = train_size(h, w, short, max_size)
    return round_up(h2, divisor), round_up(w2, divisor)


def portrait(h: int, w: int) -> bool:
    """The toolkit's orientation groups: h > w, or h <= w."""
    return h > w


def read_pair(d: dict) -> tuple[Image.Image, Image.Image]:
    """(RGB image, label) of a record; ``BadInput`` when their sizes differ."""
    img = Image.open(d["file_name"]).convert("RGB")
    seg = Image.open(d["sem_seg_file_name"])
    seg.load()
    if seg.mode != "L":
        raise BadInput(f"{d['sem_seg_file_name']}: label mode {seg.mode}, expected L (8-bit)")
    if img.size != seg.size:
        raise BadInput(
            f"{d['sem_seg_file_name']}: label size {seg.size} differs from the image's "
            f"{img.size} ({d['file_name']})"
        )
    return img, seg


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) uint8."""
    return torch.from_numpy(np.array(img, dtype=np.uint8).transpose(2, 0, 1).copy())


def train_sample(
    d: dict, short: int, flip: bool, max_size: int, label_stride: int, ignore: int = 255
) -> dict:
    """One training image at its batch's short side: "image" (3, h', w') uint8, "sem_seg"
    (ceil(h'/s), ceil(w'/s)) int64."""
    img, seg = read_pair(d)
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
        seg = seg.transpose(Image.FLIP_LEFT_RIGHT)
    h, w = train_size(img.height, img.width, short, max_size)
    img = img.resize((w, h), Image.BILINEAR)
    seg = seg.resize((w, h), Image.NEAREST)
    padded = Image.new("L", (round_up(w, label_stride), round_up(h, label_stride)), ignore)
    padded.paste(seg, (0, 0))
    small = padded.resize(
        (padded.width // label_stride, padded.height // label_stride), Image.NEAREST
    )
    return {
        "file_name": d["file_name"],
        "image": to_tensor(img),
        "sem_seg": torch.from_numpy(np.array(small, dtype=np.int64)),
        "height": h,
        "width": w,
    }


class OrientationBatchSampler(torchdata.Sampler):
    """Infinite stream of one rank's iterations: each a tuple of ``groups`` groups, a group a
    tuple of ``group_size`` (index, short side, flip), all of one orientation and one short
    side. Indices come from one seeded permutation per epoch shared by the ranks (rank r
    takes every world-th); short sides and flips from a generator of (seed, rank)."""

    def __init__(
        self,
        sizes: list[tuple[int, int]],
        group_size: int,
        short_sides: tuple[int, ...],
        flip: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        groups: int = 1,
    ):
        self.portrait = np.array([portrait(h, w) for h, w in sizes])
        self.group_size, self.groups = group_size, groups
        self.short_sides = tuple(int(s) for s in short_sides)
        self.flip = flip
        self.seed, self.rank, self.world = seed, rank, world_size
        self.start_batch = 0  # iterations a resumed run skips

    def _groups(self) -> Iterator[tuple]:
        """The rank's endless stream of groups, in the toolkit's bucket order."""
        order = np.random.default_rng([self.seed, 0])
        draws = np.random.default_rng([self.seed, 1, self.rank])
        buckets: dict[bool, list[int]] = {False: [], True: []}
        n = self.group_size
        while True:
            for idx in order.permutation(len(self.portrait))[self.rank :: self.world]:
                bucket = buckets[bool(self.portrait[idx])]
                bucket.append(int(idx))
                if len(bucket) < n:
                    continue
                short = self.short_sides[int(draws.integers(len(self.short_sides)))]
                flips = draws.integers(0, 2, n) if self.flip else [0] * n
                yield tuple((i, short, bool(f)) for i, f in zip(bucket, flips))
                bucket.clear()

    def __iter__(self) -> Iterator[tuple]:
        groups = self._groups()
        made = 0
        while True:
            step = tuple(next(groups) for _ in range(self.groups))
            made += 1
            if made > self.start_batch:
                yield step


class TrainBatches(torchdata.Dataset):
    """Map-style: a sampler's batch key -> the list of its mapped training samples.

    An unreadable image is logged to ``<log_dir>/skipped_images.txt`` and replaced by the
    next record of the same orientation; past ``max_frac`` of the images seen (after
    ``MIN_SEEN``) the run stops with ``TooManyBadImages``."""

    def __init__(self, dicts: list[dict], cfg, log_dir: str):
        self.dicts = dicts
        self.max_size = cfg.INPUT.MAX_SIZE_TRAIN
        self.stride = cfg.INPUT.LABEL_DOWNSAMPLE
        self.ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        self.skipped = SkippedLog(log_dir, cfg.SUITE.MAX_BAD_FRAC)

    def __len__(self) -> int:
        return len(self.dicts)

    def _sample(self, i: int, short: int, flip: bool) -> dict:
        orient = portrait(self.dicts[i]["height"], self.dicts[i]["width"])
        for step in range(len(self.dicts)):
            d = self.dicts[(i + step) % len(self.dicts)]
            if portrait(d["height"], d["width"]) != orient:
                continue
            self.skipped.seen += 1
            try:
                return train_sample(d, short, flip, self.max_size, self.stride, self.ignore)
            except UNREADABLE as e:
                self.skipped.record(d["file_name"], e)
        raise TooManyBadImages("no readable training image of this orientation is left")

    def __getitem__(self, key: tuple) -> list[dict]:
        """An iteration's groups -> their samples, each with its "group" (0, 1, ...)."""
        return [
            {**self._sample(i, short, flip), "group": g}
            for g, group in enumerate(key)
            for i, short, flip in group
        ]


def groups_per_process(cfg, world: int) -> int:
    """How many of an iteration's groups (``IMS_PER_BATCH / IMS_PER_GROUP``) each of
    ``world`` processes makes; ``BadInput`` when they cannot be shared evenly."""
    groups = cfg.SOLVER.IMS_PER_BATCH // cfg.INPUT.IMS_PER_GROUP
    if groups % world:
        raise BadInput(
            f"an iteration's {cfg.SOLVER.IMS_PER_BATCH} images are {groups} groups of "
            f"{cfg.INPUT.IMS_PER_GROUP} (the toolkit's per-GPU batches), which {world} "
            f"processes cannot share; run on a divisor of {groups} processes, or change "
            "SOLVER.IMS_PER_BATCH / INPUT.IMS_PER_GROUP (no longer the toolkit's protocol)"
        )
    return groups // world


def build_train_loader(cfg, dicts: list[dict], log_dir: str):
    """detectron2's iterable loader over ``OrientationBatchSampler`` iterations (this
    process's groups, one list of dicts, per step)."""
    from detectron2.data.build import worker_init_reset_seed
    from detectron2.data.common import ToIterableDataset
    from detectron2.utils import comm

    world = comm.get_world_size()
    sampler = OrientationBatchSampler(
        [(d["height"], d["width"]) for d in dicts],
        cfg.INPUT.IMS_PER_GROUP,
        cfg.INPUT.MIN_SIZE_TRAIN,
        cfg.INPUT.FLIP,
        cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed(),
        comm.get_rank(),
        world,
        groups_per_process(cfg, world),
    )
    dataset = ToIterableDataset(TrainBatches(dicts, cfg, log_dir), sampler)
    return torchdata.DataLoader(
        dataset,
        batch_size=None,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        worker_init_fn=worker_init_reset_seed,
        pin_memory=torch.cuda.is_available(),
    )


class TestMapper:
    """A validation record -> "images" (one (3, h_s, w_s) uint8 tensor per test scale),
    the full "height" / "width", and the record's file names (the evaluator reads the
    full-resolution label itself)."""

    def __init__(self, cfg):
        self.short_sides = tuple(cfg.INPUT.TEST_SHORT_SIDES)
        self.max_size = cfg.INPUT.MAX_SIZE_TEST
        self.divisor = cfg.MODEL.UPERNET.SIZE_DIVISIBILITY

    def __call__(self, d: dict) -> dict:
        img, _ = read_pair(d)
        images = []
        for short in self.short_sides:
            h, w = test_size(img.height, img.width, short, self.max_size, self.divisor)
            images.append(to_tensor(img.resize((w, h), Image.BILINEAR)))
        return {
            "file_name": d["file_name"],
            "sem_seg_file_name": d["sem_seg_file_name"],
            "images": images,
            "height": img.height,
            "width": img.width,
        }


def label_downsampled_size(h: int, w: int, stride: int) -> tuple[int, int]:
    """(ceil(h / stride), ceil(w / stride)): a training label's size."""
    return math.ceil(h / stride), math.ceil(w / stride)
