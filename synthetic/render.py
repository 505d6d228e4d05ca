"""Render one synthetic "shapes" scene: textured shapes on a textured background.

Every object is an exact polygon (shapely), drawn in z-order, so later objects occlude earlier
ones. The annotation of an object is its *visible* region (its polygon minus everything drawn
after it), from which the box, area and COCO polygons are taken exactly; the rasterised
instance map of the same drawing lets tests compare annotations with pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "noise", "gradient")


def _unit_shape(name: str) -> list[tuple[float, float]]:
    """Vertices of a shape of circumradius ~1 centred on the origin."""
    if name == "circle":
        return [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, False)]
    if name == "square":
        return [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]
    if name == "triangle":
        return [
            (math.cos(t), math.sin(t)) for t in np.linspace(-math.pi / 2, 1.5 * math.pi, 3, False)
        ]
    if name == "hexagon":
        return [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 6, False)]
    if name == "star":
        pts = []
        for k in range(10):
            r = 1.0 if k % 2 == 0 else 0.42
            t = -math.pi / 2 + k * math.pi / 5
            pts.append((r * math.cos(t), r * math.sin(t)))
        return pts
    if name == "cross":
        a, b = 0.3, 0.95
        return [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    raise ValueError(f"unknown shape {name!r}; known: {CLASSES}")


@dataclass
class SceneObject:
    """One annotated object. Coordinates are continuous pixels, origin at the top-left."""

    category: int  # index into CLASSES
    full: Polygon  # the drawn polygon, clipped to the image
    visible: BaseGeometry  # Polygon or MultiPolygon: `full` minus later objects
    truncated: bool  # cut by the image border

    @property
    def name(self) -> str:
        return CLASSES[self.category]

    @property
    def visible_fraction(self) -> float:
        return self.visible.area / max(self.full.area, 1e-9)

    def box_xyxy(self) -> tuple[int, int, int, int]:
        """Integer box enclosing the visible region: (x0, y0, x1, y1), x1/y1 exclusive."""
        x0, y0, x1, y1 = self.visible.bounds
        return math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)

    def polygons(self) -> list[list[float]]:
        """COCO polygons [[x1, y1, x2, y2, ...], ...] of the visible region (no holes)."""
        parts = self.visible.geoms if isinstance(self.visible, MultiPolygon) else [self.visible]
        out = []
        for part in parts:
            coords = list(part.exterior.coords)[:-1]
            out.append([round(float(v), 2) for xy in coords for v in xy])
        return out


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8, RGB
    instance_map: np.ndarray  # (H, W) int32: 0 background, k = objects[k - 1] on top
    objects: list[SceneObject]


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated RGB colour in [0, 1] (HSV with S, V >= 0.5)."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.5, 1), rng.uniform(0.5, 1)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """(H, W) noise in [0, 1], bilinearly upsampled from a cells x cells grid."""
    grid = (rng.uniform(0, 255, size=(cells, cells))).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR), np.float32) / 255


def texture(rng: np.random.Generator, h: int, w: int, kind: str) -> np.ndarray:
    """(H, W, 3) float32 texture in [0, 1] of the given kind, two random colours."""
    c1, c2 = _random_colour(rng), _random_colour(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "solid":
        t = np.zeros((h, w), np.float32)
    elif kind == "stripes":
        a, period = rng.uniform(0, math.pi), rng.uniform(4, 12)
        t = np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period) > 0
    elif kind == "checker":
        k = int(rng.integers(3, 9))
        t = ((xx // k + yy // k) % 2).astype(np.float32)
    elif kind == "noise":
        t = _smooth_noise(rng, h, w, int(rng.integers(4, 12)))
    elif kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        g = xx * math.cos(a) + yy * math.sin(a)
        t = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    else:
        raise ValueError(f"unknown texture {kind!r}; known: {TEXTURES}")
    t = np.asarray(t, np.float32)[..., None]
    return (c1 * (1 - t) + c2 * t).astype(np.float32)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(H, W, 3) float32 low-contrast textured background with a few faint lines."""
    base = _random_colour(rng) * rng.uniform(0.35, 0.7)
    noise = _smooth_noise(rng, h, w, int(rng.integers(3, 8)))[..., None]
    img = base * (0.7 + 0.6 * noise) + rng.normal(0, 0.02, size=(h, w, 3))
    canvas = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 6))):
        xy = [tuple(rng.uniform(0, [w, h])) for _ in range(2)]
        shade = tuple(int(v) for v in rng.integers(40, 200, size=3))
        draw.line(xy, fill=shade, width=int(rng.integers(1, 3)))
    return np.asarray(canvas, np.float32) / 255


def place_shape(
    rng: np.random.Generator,
    category: int,
    w: int,
    h: int,
    scale: tuple[float, float],
    centre: tuple[float, float] = (0.1, 0.9),
    rotate: bool = True,
) -> Polygon:
    """A random similarity (+ mild stretch) of a unit shape, as a polygon in pixels.

    ``scale``: circumradius / (min(w, h) / 2) range; ``centre``: the centre's range as a
    fraction of each side; ``rotate``: a uniform random rotation (else upright).
    """
    r = rng.uniform(*scale) * min(w, h) / 2
    poly = Polygon(_unit_shape(CLASSES[category]))
    poly = affinity.scale(
        poly, r * rng.uniform(0.85, 1.15), r * rng.uniform(0.85, 1.15), origin=(0, 0)
    )
    if rotate:
        poly = affinity.rotate(poly, rng.uniform(0, 360), origin=(0, 0))
    return affinity.translate(poly, rng.uniform(*centre) * w, rng.uniform(*centre) * h)


def _clean(geom: BaseGeometry) -> BaseGeometry | None:
    """Drop slivers (< 1 px^2) of a difference; None if a hole or nothing polygonal remains."""
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and g.area >= 1]
    if not parts or any(len(p.interiors) for p in parts):
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def render_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    categories: list[int],
    scale: tuple[float, float] | list[tuple[float, float]] = (0.25, 0.6),
    min_visible: float = 0.6,
    tries: int = 30,
) -> Scene:
    """Draw the given categories in order (later ones on top), keeping each object at least
    ``min_visible`` visible with no holes. An object that cannot be placed is skipped.

    Args:
        categories: class indices in z-order (first = bottom).
        scale: shape circumradius as a fraction of min(width, height) / 2, as a (low, high)
            range for all objects or a list of ranges, one per object.
    """
    scales = scale if isinstance(scale, list) else [scale] * len(categories)
    frame = box(0, 0, width, height)
    objects: list[SceneObject] = []
    for cat, cat_scale in zip(categories, scales):
        for _ in range(tries):
            poly = place_shape(rng, cat, width, height, cat_scale)
            full = poly.intersection(frame)
            if not isinstance(full, Polygon) or full.area < 0.7 * poly.area:
                continue
            new_visible = [_clean(o.visible.difference(full)) for o in objects]
            if any(
                v is None or v.area < min_visible * o.full.area
                for v, o in zip(new_visible, objects)
            ):
                continue
            for o, v in zip(objects, new_visible):
                o.visible = v
            objects.append(SceneObject(cat, full, full, full.area < poly.area - 1e-6))
            break
    canvas = background(rng, height, width)
    ids = Image.new("I", (width, height), 0)
    for k, obj in enumerate(objects, start=1):
        mask_img = Image.new("L", (width, height), 0)
        pts = [tuple(p) for p in obj.full.exterior.coords]
        ImageDraw.Draw(mask_img).polygon(pts, fill=255)
        ImageDraw.Draw(ids).polygon(pts, fill=k)
        mask = np.asarray(mask_img) > 0
        tex = texture(rng, height, width, TEXTURES[int(rng.integers(len(TEXTURES)))])
        canvas[mask] = tex[mask]
    image = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Scene(image, np.asarray(ids, np.int32), objects)
