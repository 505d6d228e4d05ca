#!/usr/bin/env python
"""Pretraining data readers: images/s of the same JPEG files read as an ImageFolder tree, as
a flat folder (searched recursively, COCO ``train2017/`` style) and through a list file.

    python benchmarks/speed/readers.py --images 2048 --workers 2

Each reader feeds ``ViewsDataset`` (BYOL's two views, decoded and augmented in ``--workers``
loader processes, the CPU path) for two passes; the second is timed. The three should match:
the readers only differ in how they list the files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def speed(split, size: int, batch: int, workers: int) -> float:
    from torch.utils.data import DataLoader

    from common.badimages import SkipBad
    from pretrain.data import ViewsDataset, byol_views

    ds = ViewsDataset(split, byol_views(size))
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=SkipBad(),
                        persistent_workers=workers > 0, drop_last=True)  # fmt: skip
    n, t0 = 0, None
    for epoch in range(2):
        if epoch == 1:
            t0 = time.perf_counter()
        for item in loader:
            n += (item[0] - item[1]) if epoch == 1 else 0  # SkipBad: (size, bad, batch)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks" / "speed"))
    from pretrain_step import write_jpegs

    from common.imagesets import flat_split, list_split
    from pretrain.data import as_split

    train = write_jpegs(args.images, 500)
    listing = train.parent / "list.txt"
    listing.write_text("\n".join(str(p.relative_to(train.parent))
                                 for p in sorted(train.rglob("*.jpg"))) + "\n")  # fmt: skip
    print(f"{args.images} JPEGs (500 x 375), {args.workers} workers, batch {args.batch}, "
          f"BYOL views at {args.size} px")  # fmt: skip
    for name, split in (("imagefolder", as_split(train)), ("flat", flat_split(train)),
                        ("list", list_split(listing))):  # fmt: skip
        print(f"{name:<12} {speed(split, args.size, args.batch, args.workers):8.1f} images/s",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
