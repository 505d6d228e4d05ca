"""A synthetic twin of ADE20K's scene-parsing release (ADEChallengeData2016)::

    ROOT/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg
    ROOT/ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_%08d.png

Labels are single-channel PNGs as the release stores them: 0 = unlabelled, k = class k of
the 150 (1-based). Each scene is a stack of "stuff" bands (class-coloured noise textures:
wall, floor, sky, ...) under a few "things" (shapes with a class-specific silhouette, colour
and texture: bed, person, car, ...), with a thin unlabelled outline around each thing, as
ADE's annotators leave between regions. ``STUFF`` + ``THINGS`` are the classes that occur
(1-based ADE indices); images are landscape and portrait, so same-orientation batching has
both kinds to sort.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.atomic import atomic_write_text
from common.locks import waiting_lock
from synthetic.render import CLASSES, texture

STAMP = "ade20k.json"
FORMAT_VERSION = 1
RELEASE = "ADEChallengeData2016"
SPLITS = {"training": "train", "validation": "val"}
# 1-based ADE20K classes that occur: stuff bands, then things (one shape each)
STUFF = (1, 4, 3, 6, 10, 7, 14, 22)  # wall, floor, sky, ceiling, grass, road, ground, water
THINGS = (8, 13, 16, 20, 21, 24, 5, 11, 15, 19, 23, 36)  # bed, person, table, car, ...
TEXTURE_OF = ("noise", "stripes", "checker", "gradient", "solid")


def _class_colour(k: int) -> np.ndarray:
    """A fixed RGB colour in [0, 1] for 1-based class ``k`` (golden-ratio hues)."""
    h = (k * 0.618034) % 1.0
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    v, s = 0.9, 0.75
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _class_texture(rng, k: int, h: int, w: int) -> np.ndarray:
    """(h, w, 3) texture of class ``k``: its colour modulated by its texture kind."""
    t = texture(rng, h, w, TEXTURE_OF[k % len(TEXTURE_OF)]).mean(axis=2, keepdims=True)
    return np.clip(_class_colour(k) * (0.6 + 0.5 * t), 0, 1)


def _polygon(rng, j: int, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of thing ``j``'s shape (``render.CLASSES`` cycled), rotated at random."""
    from synthetic.render import _unit_shape

    a = rng.uniform(0, 2 * math.pi)
    ca, sa = math.cos(a), math.sin(a)
    pts = _unit_shape(CLASSES[j % len(CLASSES)])
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (h, w, 3) uint8, label (h, w) uint8 with 0 = unlabelled, k = class k)."""
    img = np.zeros((h, w, 3), np.float32)
    label = np.zeros((h, w), np.uint8)
    bands = rng.choice(STUFF, size=int(rng.integers(2, 4)), replace=False)
    cuts = np.sort(rng.integers(h // 5, h - h // 5, size=len(bands) - 1))
    for k, y0, y1 in zip(bands, [0, *cuts], [*cuts, h]):
        if y1 <= y0:
            continue
        img[y0:y1] = _class_texture(rng, int(k), y1 - y0, w)
        label[y0:y1] = k
    canvas, lab = Image.fromarray((img * 255).astype(np.uint8)), Image.fromarray(label)
    for _ in range(int(rng.integers(2, 5))):
        j = int(rng.integers(len(THINGS)))
        k = THINGS[j]
        r = rng.uniform(0.12, 0.3) * min(h, w)
        poly = _polygon(rng, j, rng.uniform(r, w - r), rng.uniform(r, h - r), r)
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).polygon(poly, fill=255)
        fill = Image.fromarray((_class_texture(rng, k, h, w) * 255).astype(np.uint8))
        canvas.paste(fill, (0, 0), mask)
        draw = ImageDraw.Draw(lab)
        draw.polygon(poly, fill=int(k))
        draw.line([*poly, poly[0]], fill=0, width=1)  # the unlabelled outline
    noisy = np.asarray(canvas, np.float32) + rng.normal(0, 4, size=(h, w, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8), np.asarray(lab)


def _size(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    """(h, w): landscape or portrait (or square), the long side near ``long_side``."""
    long_ = int(rng.integers(long_side * 3 // 4, long_side + 1))
    short = int(long_ * rng.uniform(0.6, 1.0))
    return (short, long_) if rng.uniform() < 0.6 else (long_, short)


def write_ade20k(
    root: str | Path, seed: int = 0, train: int = 48, val: int = 12, size: int = 160
) -> Path:
    """Write (or reuse, by its stamp) the twin under ``root``; returns ``root`` (the folder
    holding ``ADEChallengeData2016``, as ``$DETECTRON2_DATASETS``)."""
    root = Path(root)
    spec = {"format_version": FORMAT_VERSION, "seed": seed, "train": train, "val": val,
            "size": size}  # fmt: skip
    stamp = root / RELEASE / STAMP
    with waiting_lock(root / ".ade20k.lock"):
        if stamp.exists() and json.loads(stamp.read_text()) == spec:
            return root
        release = root / RELEASE
        if release.exists() and not stamp.exists() and not (release / ".writing").exists():
            raise FileExistsError(
                f"{release} exists and is not a synthetic twin (no {STAMP}); not overwriting it"
            )
        shutil.rmtree(release, ignore_errors=True)  # an older twin: rewritten whole
        release.mkdir(parents=True)
        (release / ".writing").touch()
        for folder, short, n in (("training", "train", train), ("validation", "val", val)):
            images = root / RELEASE / "images" / folder
            labels = root / RELEASE / "annotations" / folder
            images.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            for i in range(1, n + 1):
                rng = np.random.default_rng([seed, 400, 1 if short == "train" else 2, i])
                im, lab = scene(rng, *_size(rng, size))
                name = f"ADE_{short}_{i:08d}"
                Image.fromarray(im).save(images / f"{name}.jpg", quality=92)
                Image.fromarray(lab).save(labels / f"{name}.png")
        atomic_write_text(stamp, json.dumps(spec, indent=1))  # last: the twin is complete
        (release / ".writing").unlink()
    return root
