"""Scenes (one shape per cell of a 3×3 grid, drawn from a per-image generator) and their rendering.

scene = (ShapeObject(color, shape, size, row, col, x, y, r), ...)     1 ≤ n ≤ max_shapes ≤ 9
image = render_scene(scene, S)                                        [S, S, 3] uint8
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from openovis.data.shapes.config import (
    CELL_MARGIN,
    COLOR_RGB,
    GRID,
    REGIONS,
    SIZE_RADIUS,
    SIZES,
    SPLITS,
    Pair,
    ShapesConfig,
)

BACKGROUND = (235, 235, 235)
SUPERSAMPLE = 4
"""Antialiasing draws at this scale, then box-filters down (interior pixels keep the exact fill)."""


@dataclass(frozen=True)
class ShapeObject:
    """One shape of a scene.

    Attributes:
        color: Colour name.
        shape: Shape name.
        size: ``small`` or ``large``.
        row: Grid row, 0 (top) to 2 (bottom).
        col: Grid column, 0 (left) to 2 (right).
        x: Centre, in pixels from the left edge of the image.
        y: Centre, in pixels from the top edge.
        r: Half-extent in pixels (circle radius, half the cross's span, …).
    """

    color: str
    shape: str
    size: str
    row: int
    col: int
    x: float
    y: float
    r: float

    @property
    def region(self) -> str:
        """The named grid cell, e.g. ``"top left"``."""
        return REGIONS[self.row * GRID + self.col]

    @property
    def pair(self) -> Pair:
        """``(colour, shape)``."""
        return (self.color, self.shape)

    def to_json(self) -> dict[str, Any]:
        """A JSON row, with the region name."""
        return {**asdict(self), "region": self.region}


Scene = tuple[ShapeObject, ...]
"""The objects of one image, in reading order (row, then column)."""


def split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of every other image and of the split sizes."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    """A uniformly chosen element (keeps Python types, unlike ``rng.choice``)."""
    return items[int(rng.integers(len(items)))]


def _place(
    rng: np.random.Generator, cell: int, size: str, image_size: int
) -> tuple[int, int, float, float, float]:
    """Row, column, centre and half-extent of a shape jittered inside grid cell ``cell``."""
    side = image_size / GRID
    r = SIZE_RADIUS[size] * side
    jitter = max(side / 2 - r - CELL_MARGIN * side, 0.0)
    row, col = divmod(cell, GRID)
    x = (col + 0.5) * side + rng.uniform(-jitter, jitter)
    y = (row + 0.5) * side + rng.uniform(-jitter, jitter)
    return row, col, round(x, 2), round(y, 2), round(r, 2)


def sample_scene(
    rng: np.random.Generator, config: ShapesConfig, pairs: Sequence[Pair], forced: Pair | None = None
) -> Scene:
    """Draws a scene whose objects use ``pairs``; ``forced`` (if given) is one of its objects.

    One object per grid cell, so no two shapes overlap and each region names one object.
    """
    n = int(rng.integers(config.min_shapes, config.max_shapes + 1))
    cells = sorted(int(c) for c in rng.choice(GRID * GRID, size=n, replace=False))
    forced_at = int(rng.integers(n)) if forced is not None else -1
    objects = []
    for k, cell in enumerate(cells):
        color, shape = forced if k == forced_at else pick(rng, pairs)
        size = pick(rng, SIZES)
        objects.append(ShapeObject(color, shape, size, *_place(rng, cell, size, config.image_size)))
    return tuple(objects)


# --------------------------------------------------------------------------- rendering


def _polygon(x: float, y: float, radii: Sequence[float], start_deg: float) -> list[tuple[float, float]]:
    """Vertices at evenly spaced angles around ``(x, y)``, cycling through ``radii``."""
    n = len(radii)
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return [(x + rad * np.cos(a), y + rad * np.sin(a)) for rad, a in zip(radii, angles, strict=True)]


def _draw_shape(draw: ImageDraw.ImageDraw, obj: ShapeObject, scale: int) -> None:
    """Draws one object on a canvas ``scale`` times the image size."""
    x, y, r = obj.x * scale, obj.y * scale, obj.r * scale
    fill = COLOR_RGB[obj.color]
    if obj.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif obj.shape == "square":
        h = 0.85 * r  # about the circle's area
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    elif obj.shape == "cross":
        w = 0.35 * r
        draw.rectangle([x - r, y - w, x + r, y + w], fill=fill)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=fill)
    elif obj.shape == "triangle":
        # Equilateral, circumradius 1.15 r, its bounding box centred on (x, y) (centroid 0.29 r lower).
        draw.polygon(_polygon(x, y + 0.2875 * r, [1.15 * r] * 3, -90.0), fill=fill)
    elif obj.shape == "diamond":
        draw.polygon(_polygon(x, y, [r] * 4, -90.0), fill=fill)
    elif obj.shape == "star":
        draw.polygon(_polygon(x, y, [r, 0.5 * r] * 5, -90.0), fill=fill)
    else:
        raise ValueError(f"shape: unknown {obj.shape!r}")


def render_scene(scene: Scene, image_size: int, antialias: bool = True) -> Image.Image:
    """The RGB image of a scene."""
    scale = SUPERSAMPLE if antialias else 1
    image = Image.new("RGB", (image_size * scale, image_size * scale), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene:
        _draw_shape(draw, obj, scale)
    if scale > 1:
        image = image.resize((image_size, image_size), Image.Resampling.BOX)
    return image
