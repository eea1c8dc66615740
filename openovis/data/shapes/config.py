"""Shapes World's vocabulary and its config (`ShapesConfig`, every field checked on construction)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Pair = tuple[str, str]
"""A ``(colour, shape)`` combination."""

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 190),
    "orange": (245, 130, 20),
    "pink": (245, 110, 190),
    "cyan": (20, 200, 220),
    "brown": (120, 70, 30),
    "black": (20, 20, 20),
}
"""Every colour name a config may use, with its fill."""

SHAPE_KINDS = ("circle", "square", "triangle", "cross", "diamond", "star")
"""Every shape a config may use."""

PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
PLURALS |= {"diamond": "diamonds", "star": "stars"}

SIZES = ("small", "large")
SIZE_RADIUS = {"small": 0.25, "large": 0.42}
"""Half-extent of a shape as a fraction of a grid cell's side."""

CELL_MARGIN = 0.06
"""Minimum gap between a shape and its cell's border, as a fraction of the cell's side."""

GRID = 3
ROW_NAMES = ("top", "center", "bottom")
COL_NAMES = ("left", "center", "right")
REGIONS = tuple(f"{r} {c}" if r != c else r for r in ROW_NAMES for c in COL_NAMES)
"""Region names in row-major order: "top left", "top center", …, "center", …, "bottom right"."""


QUESTION_TYPES = ("color", "shape", "count", "position", "exist", "relation", "mcq")
"""Every question type, in the order of the test splits' round-robin."""

CAPTION_ORDERS = ("reading", "random")
"""Orders of the objects in a training caption (``ShapesConfig.caption_order``)."""

SPLITS = ("train", "test_id", "test_heldout")
"""The splits, in the order of their generator ids (`split_rng`)."""


@dataclass(frozen=True)
class ShapesConfig:
    """What to generate; every field is checked on construction."""

    seed: int = 0
    """Seed of every random choice (same seed and config → byte-identical files)."""
    image_size: int = 64
    """Side of the square PNG images, in pixels (32..256)."""
    n_train: int = 4000
    """Number of training images (each gets a caption, a description and a QA conversation)."""
    n_test: int = 350
    """Number of images (one question each) in each test split; a multiple of 7 balances the types."""
    min_shapes: int = 1
    """Fewest shapes in an image."""
    max_shapes: int = 4
    """Most shapes in an image (2..9; one per grid cell, relations need two)."""
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    """Colour names used (from ``COLOR_RGB``); at least 4, for the multiple-choice options."""
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    """Shape names used (from ``SHAPE_KINDS``); at least 2."""
    heldout_pairs: tuple[Pair, ...] = (
        ("red", "triangle"),
        ("green", "cross"),
        ("blue", "circle"),
        ("yellow", "square"),
    )
    """``(colour, shape)`` pairs never shown or named in training; they populate ``test_heldout``."""
    antialias: bool = True
    """Draw at 4× and box-filter down; False draws aliased shapes directly."""
    qa_types: tuple[str, ...] = QUESTION_TYPES
    """Question types of ``qa_train.json`` (from ``QUESTION_TYPES``); the test splits always use all seven."""
    qa_turns: tuple[int, int] = (1, 3)
    """Fewest and most questions (of distinct types) per ``qa_train.json`` conversation."""
    simple_qa_types: tuple[str, ...] = ("color", "shape", "count")
    """Types of ``qa_train_simple.json`` (none: the file is not written): for every training image one
    single-turn sample per listed type, the first QA stage of a curriculum. Drawn from a random stream
    of its own, so the other files do not depend on it."""
    caption_order: str = "reading"
    """Order of the objects in ``captions_train.jsonl``: ``"reading"`` (row, then column) or ``"random"``
    (a random stream of its own). In reading order a caption's regions follow from the order alone;
    shuffled, each region word must be read from where its object is in the image."""

    def __post_init__(self) -> None:
        for name in ("colors", "shapes", "qa_types", "simple_qa_types", "qa_turns"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "heldout_pairs", tuple(tuple(p) for p in self.heldout_pairs))
        _check_ints(self)
        _check_vocab(self.colors, COLOR_RGB, "colors", minimum=4)
        _check_vocab(self.shapes, SHAPE_KINDS, "shapes", minimum=2)
        _check_heldout(self)
        _check_questions(self)
        if self.caption_order not in CAPTION_ORDERS:
            raise ValueError(f"caption_order: one of {list(CAPTION_ORDERS)}, got {self.caption_order!r}")

    @property
    def all_pairs(self) -> tuple[Pair, ...]:
        """Every colour × shape combination."""
        return tuple((c, s) for c in self.colors for s in self.shapes)

    @property
    def train_pairs(self) -> tuple[Pair, ...]:
        """The combinations training images may show."""
        return tuple(p for p in self.all_pairs if p not in self.heldout_pairs)


def _check_ints(config: ShapesConfig) -> None:
    """Range checks of the integer fields."""
    limits = {
        "seed": (0, None),
        "image_size": (32, 256),
        "n_train": (1, 999_999),
        "n_test": (0, 999_999),
        "min_shapes": (1, GRID * GRID),
        "max_shapes": (2, GRID * GRID),  # relation questions need two shapes
    }
    for name, (lo, hi) in limits.items():
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name}: must be an int, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            raise ValueError(f"{name}: must be in [{lo}, {hi if hi is not None else '∞'}], got {value}")
    if config.min_shapes > config.max_shapes:
        raise ValueError(f"min_shapes: {config.min_shapes} > max_shapes {config.max_shapes}")
    if not isinstance(config.antialias, bool):
        raise ValueError(f"antialias: must be a bool, got {config.antialias!r}")


def _check_questions(config: ShapesConfig) -> None:
    """Known question types, and a valid range of turns per training conversation."""
    for name in ("qa_types", "simple_qa_types"):
        values = getattr(config, name)
        unknown = [v for v in values if v not in QUESTION_TYPES]
        if unknown or len(set(values)) != len(values):
            raise ValueError(f"{name}: distinct names from {list(QUESTION_TYPES)}, got {list(values)}")
    if not config.qa_types:
        raise ValueError("qa_types: need at least one question type")
    turns = config.qa_turns
    if len(turns) != 2 or not all(isinstance(t, int) and not isinstance(t, bool) for t in turns):
        raise ValueError(f"qa_turns: expected (min, max) ints, got {turns!r}")
    if not 1 <= turns[0] <= turns[1] <= len(config.qa_types):
        raise ValueError(f"qa_turns: need 1 <= min <= max <= {len(config.qa_types)} (qa_types), got {turns}")


def _check_vocab(values: tuple[str, ...], known: Iterable[str], name: str, minimum: int) -> None:
    """``values`` are distinct known names, at least ``minimum`` of them."""
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ValueError(f"{name}: unknown {unknown}, choose from {list(known)}")
    if len(set(values)) != len(values) or len(values) < minimum:
        raise ValueError(f"{name}: need at least {minimum} distinct names, got {list(values)}")


def _check_heldout(config: ShapesConfig) -> None:
    """Held-out pairs are distinct known pairs, and training still shows every colour and shape."""
    pairs = config.heldout_pairs
    if any(len(p) != 2 or p not in config.all_pairs for p in pairs) or len(set(pairs)) != len(pairs):
        raise ValueError(f"heldout_pairs: must be distinct (colour, shape) pairs of the config, got {pairs}")
    seen_colors = {c for c, _ in config.train_pairs}
    seen_shapes = {s for _, s in config.train_pairs}
    missing = [c for c in config.colors if c not in seen_colors] + [
        s for s in config.shapes if s not in seen_shapes
    ]
    if missing:
        raise ValueError(f"heldout_pairs: {missing} would never appear in training")
