"""Unreadable images: dropped at collate time, counted in the main process, refused past a
fraction.

A dataset returns ``None`` for an image it cannot read (``open_rgb``). ``SkipBad`` is the
loader's collate: it runs in the worker processes, so it returns ``(seen, bad, batch or
None)`` rather than counting; ``BadCount.take`` adds those counts in the main process and
hands the batch on. Pretraining and the classification protocols share all three.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import default_collate

from common.cli import UserError


class TooManyBadImages(UserError):
    """More images could not be read than the run allows."""


# what Pillow raises for a missing, truncated or corrupt file (SyntaxError: some broken PNGs)
UNREADABLE = (OSError, ValueError, SyntaxError)


def open_rgb(path: str | Path | np.ndarray) -> Image.Image | None:
    """The image at ``path`` decoded as RGB, or None when it cannot be read; an (H, W, 3)
    uint8 array (an image held in memory, e.g. CIFAR's) is wrapped as it is."""
    if isinstance(path, np.ndarray):
        return Image.fromarray(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except UNREADABLE:
        return None


class SkipBad:
    """Collate that drops ``None`` items and collates the rest with ``collate`` (torch's
    ``default_collate`` unless given; it must be picklable for worker processes)."""

    def __init__(self, collate: Callable | None = None):
        self.collate = collate or default_collate

    def __call__(self, batch: list) -> tuple[int, int, object]:
        good = [b for b in batch if b is not None]
        return len(batch), len(batch) - len(good), self.collate(good) if good else None


class BadCount:
    """Images seen and unreadable, summed over the ``SkipBad`` items taken."""

    def __init__(self) -> None:
        self.seen = self.bad = 0

    def take(self, item: tuple[int, int, object]):
        """Counts of one collated item; returns its batch (None when every image was bad)."""
        seen, bad, batch = item
        self.seen += seen
        self.bad += bad
        return batch

    def check(self, max_frac: float, what: str, fix: str, min_seen: int = 1) -> None:
        """Raise ``TooManyBadImages`` when more than ``max_frac`` of the images seen (once at
        least ``min_seen``) were unreadable. ``what``: where, e.g. "of the val split";
        ``fix``: what the user can do."""
        if self.bad and self.seen >= min_seen and self.bad / self.seen > max_frac:
            raise TooManyBadImages(
                f"{self.bad} of {self.seen} images {what} could not be read, more than the "
                f"allowed fraction {max_frac:g}; {fix}"
            )


SKIPPED_FILE = "skipped_images.txt"  # a transfer seed's list of skipped training images
MIN_SEEN = 50  # images a loader worker must have seen before the fraction is checked


class SkippedLog:
    """A loader worker's unreadable training images: each is appended to
    ``<log_dir>/skipped_images.txt``; once more than ``max_frac`` of at least ``MIN_SEEN``
    images seen were unreadable, ``TooManyBadImages`` names the list and the setting."""

    def __init__(self, log_dir: str | Path, max_frac: float):
        self.path = Path(log_dir) / SKIPPED_FILE
        self.max_frac = max_frac
        self.seen = self.bad = 0

    def record(self, file_name: str, error: Exception) -> None:
        self.bad += 1
        with open(self.path, "a") as f:
            f.write(f"{file_name}\t{type(error).__name__}: {error}\n")
        if self.seen >= MIN_SEEN and self.bad / self.seen > self.max_frac:
            raise TooManyBadImages(
                f"{self.bad} of {self.seen} training images could not be read (listed in "
                f"{self.path}), more than the allowed fraction {self.max_frac:g}; check the "
                "files, or allow more with SUITE.MAX_BAD_FRAC F"
            ) from error


def skipped_images(seed_dir: str | Path) -> list[str]:
    """The unreadable training images a seed skipped (once per time one was drawn)."""
    path = Path(seed_dir) / SKIPPED_FILE
    if not path.exists():
        return []
    return [line.split("\t")[0] for line in path.read_text().splitlines() if line]
