"""Shapes World: the embedded, procedurally generated dataset (DESIGN §5b).

Each image shows a few coloured shapes (1–4 by default) on a light grey background. The image is a 3×3 grid of named
regions and every shape sits inside its own cell, so shapes never overlap and every shape's position
has exactly one name. Every text is generated from the scene, so each answer is unique and checkable::

    scene     = (ShapeObject(color, shape, size, row, col, x, y, r), ...)     1 ≤ n ≤ max_shapes ≤ 9
    image     = render_scene(scene)                                           [S, S, 3] uint8 PNG
    caption   = "a large red circle at the top left and a small blue cross at the center."
    questions = color | shape | count | position | exist | relation | mcq     (short canonical answers)

Everything is a pure function of ``(seed, split, index)``: image ``i`` of a split draws from its own
``numpy`` generator seeded with ``[seed, split id, i]``, so the files are byte-identical for the same
config, and changing ``n_train`` does not change the images it keeps.

Held-out composition: the ``(colour, shape)`` pairs in ``heldout_pairs`` never appear in a training
image nor in any training text; every ``test_heldout`` image contains at least one of them and its
question is about it whenever the question type allows (see ``docs/data-shapes.md``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from openovis.constants import IMAGE_PLACEHOLDER

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

BACKGROUND = (235, 235, 235)
SUPERSAMPLE = 4
"""Antialiasing draws at this scale, then box-filters down (interior pixels keep the exact fill)."""

SPLITS = ("train", "test_id", "test_heldout")
QUESTION_TYPES = ("color", "shape", "count", "position", "exist", "relation", "mcq")
OPTION_LETTERS = "ABCD"
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
DESCRIBE_PROMPTS = (
    "Describe the image in detail.",
    "Give a detailed description of the image.",
    "What is in this image? Describe it in detail.",
    "Describe every shape in the picture.",
)
MAX_SCENE_TRIES = 100
"""Scenes drawn for one test sample before giving up on its question type."""


# --------------------------------------------------------------------------- config


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

    def __post_init__(self) -> None:
        for name in ("colors", "shapes", "qa_types", "simple_qa_types", "qa_turns"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "heldout_pairs", tuple(tuple(p) for p in self.heldout_pairs))
        _check_ints(self)
        _check_vocab(self.colors, COLOR_RGB, "colors", minimum=4)
        _check_vocab(self.shapes, SHAPE_KINDS, "shapes", minimum=2)
        _check_heldout(self)
        _check_questions(self)

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


# --------------------------------------------------------------------------- scenes


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


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
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
        color, shape = forced if k == forced_at else _pick(rng, pairs)
        size = _pick(rng, SIZES)
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


# --------------------------------------------------------------------------- language

REF_FORMS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("color",),
    ("color", "shape"),
    ("size", "shape"),
    ("size", "color"),
    ("size", "color", "shape"),
    ("region",),
)
"""Attribute sets a referring expression may use; one is valid when no other object shares them."""


def _a(word: str) -> str:
    """``word`` with its indefinite article: ``"a red"``, ``"an orange"``."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _phrase(obj: ShapeObject) -> str:
    """``"large red circle"``."""
    return f"{obj.size} {obj.color} {obj.shape}"


def _ref_text(obj: ShapeObject, form: tuple[str, ...]) -> str:
    """The expression of ``obj`` using the attributes in ``form``."""
    if form == ("region",):
        return f"the object at the {obj.region}"
    words = [getattr(obj, a) for a in ("size", "color") if a in form]
    return "the " + " ".join([*words, obj.shape if "shape" in form else "object"])


def refer(
    obj: ShapeObject,
    scene: Scene,
    rng: np.random.Generator,
    hide: frozenset[str] = frozenset(),
    composed: bool = False,
) -> str | None:
    """A referring expression that picks out ``obj`` alone in ``scene``, e.g. ``"the red circle"``.

    Args:
        obj: The object to name.
        scene: The scene it belongs to.
        rng: Chooses among the valid expressions.
        hide: Attributes the expression must not use (the one a question asks about).
        composed: Prefer expressions naming both colour and shape (held-out questions).

    Returns:
        The expression, or None when no expression without ``hide`` is unique.
    """
    others = [o for o in scene if o is not obj]
    forms = [
        f
        for f in REF_FORMS
        if not hide.intersection(f)
        and not any(all(getattr(o, a) == getattr(obj, a) for a in f) for o in others)
    ]
    if not forms:
        return None
    if composed:
        best = max(len({"color", "shape"}.intersection(f)) for f in forms)
        forms = [f for f in forms if len({"color", "shape"}.intersection(f)) == best]
    return _ref_text(obj, _pick(rng, forms))


def _join(items: Sequence[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(text: str) -> str:
    """``text`` with its first letter capitalized."""
    return text[0].upper() + text[1:]


def caption_text(scene: Scene) -> str:
    """The short stage-1 caption: every object with its size, colour, shape and region."""
    return _join([f"{_a(_phrase(o))} at the {o.region}" for o in scene]) + "."


def relation_phrase(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b``: ``"above and to the left of"``, ``"below"``, …"""
    vertical = "above" if a.row < b.row else "below" if a.row > b.row else ""
    horizontal = "to the left of" if a.col < b.col else "to the right of" if a.col > b.col else ""
    if vertical and horizontal:
        return f"{vertical} and {horizontal}"
    return vertical or horizontal


def _object_sentence(obj: ShapeObject, rng: np.random.Generator) -> str:
    templates = (
        "At the {region} there is {phrase}.",
        "{Phrase} is at the {region}.",
        "There is {phrase} at the {region}.",
    )
    phrase = _a(_phrase(obj))
    return _pick(rng, templates).format(region=obj.region, phrase=phrase, Phrase=_sentence(phrase))


def describe(scene: Scene, rng: np.random.Generator) -> str:
    """The stage-2 detailed description: count, every object, and one relation."""
    n = len(scene)
    parts = [f"There {'is' if n == 1 else 'are'} {n} shape{'' if n == 1 else 's'} in the image."]
    parts += [_object_sentence(o, rng) for o in scene]
    if n == 1:
        parts.append("It is the only shape in the image.")
    else:
        i, j = (int(k) for k in rng.choice(n, size=2, replace=False))
        a, b = scene[i], scene[j]
        ref_a = refer(a, scene, rng, frozenset({"region"})) or f"the {_phrase(a)} at the {a.region}"
        ref_b = refer(b, scene, rng, frozenset({"region"})) or f"the {_phrase(b)} at the {b.region}"
        parts.append(_sentence(f"{ref_a} is {relation_phrase(a, b)} {ref_b}."))
    return " ".join(parts)


# --------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    """One question about a scene with its canonical answer.

    Attributes:
        kind: One of ``QUESTION_TYPES``.
        text: The question as the user writes it (without the image placeholder).
        answer: Lowercase canonical answer, or the option letter for ``mcq``.
        options: Letter → option text, for ``mcq``.
        target_pair: The ``(colour, shape)`` the question is about, when it is about one.
    """

    kind: str
    text: str
    answer: str
    options: dict[str, str] | None = None
    target_pair: Pair | None = None


@dataclass(frozen=True)
class Ask:
    """How to ask: fixed by the test splits (for balance and targeting), free in training.

    Attributes:
        config: The dataset config.
        negatives: Pairs an ``exist`` question may ask about when they are absent from the image.
        target: The object the question must be about (held-out split), if the type allows.
        want_yes: The yes/no answer to produce; None draws it.
        slot: Index of the correct ``mcq`` option; None draws it.
    """

    config: ShapesConfig
    negatives: tuple[Pair, ...]
    target: ShapeObject | None = None
    want_yes: bool | None = None
    slot: int | None = None

    def candidates(self, scene: Scene, rng: np.random.Generator) -> list[ShapeObject]:
        """The objects a question may be about, in the order to try them."""
        return (
            [self.target] if self.target is not None else [scene[int(k)] for k in rng.permutation(len(scene))]
        )

    def yes(self, rng: np.random.Generator) -> bool:
        """The yes/no answer to produce."""
        return bool(rng.integers(2)) if self.want_yes is None else self.want_yes


QuestionFn = Callable[[Scene, np.random.Generator, Ask], Question | None]


def _ask_attribute(scene: Scene, rng: np.random.Generator, ask: Ask, attr: str) -> Question | None:
    """``What color is …?`` / ``What shape is …?``, naming the object without ``attr``."""
    for obj in ask.candidates(scene, rng):
        ref = refer(obj, scene, rng, frozenset({attr}), composed=ask.target is not None)
        if ref is None:
            continue
        if attr == "color":
            text = _pick(rng, ("What color is {}?", "What is the color of {}?")).format(ref)
        else:
            text = _pick(rng, ("What shape is {}?", "What kind of shape is {}?")).format(ref)
        return Question(attr, text, getattr(obj, attr), target_pair=obj.pair)
    return None


def ask_color(scene: Scene, rng: np.random.Generator, ask: Ask) -> Question | None:
    """The colour of one object."""
    return _ask_attribute(scene, rng, ask, "color")


def ask_shape(scene: Scene, rng: np.random.Generator, ask: Ask) -> Question | None:
    """The shape of one object."""
    return _ask_attribute(scene, rng, ask, "shape")


def ask_count(scene: Scene, rng: np.random.Generator, ask: Ask) -> Question | None:
    """How many shapes: in all, of one colour, or of one kind (answer ``"0"`` … ``"9"``)."""
    variant = _pick(rng, ("color", "shape") if ask.target is not None else ("all", "color", "shape"))
    if variant == "all":
        return Question(
            "count",
            _pick(rng, ("How many shapes are there?", "How many shapes are in the image?")),
            str(len(scene)),
        )
    source = ask.target or (_pick(rng, scene) if rng.random() < 0.75 else None)
    if variant == "color":
        color = source.color if source else _pick(rng, ask.config.colors)
        count = sum(o.color == color for o in scene)
        return Question(
            "count", f"How many {color} shapes are there?", str(count), target_pair=source and source.pair
        )
    shape = source.shape if source else _pick(rng, ask.config.shapes)
    count = sum(o.shape == shape for o in scene)
    return Question(
        "count", f"How many {PLURALS[shape]} are there?", str(count), target_pair=source and source.pair
    )


def ask_position(scene: Scene, rng: np.random.Generator, ask: Ask) -> Question | None:
    """The region of one object, named without its region."""
    for obj in ask.candidates(scene, rng):
        ref = refer(obj, scene, rng, frozenset({"region"}), composed=ask.target is not None)
        if ref is not None:
            text = _pick(rng, ("Where is {}?", "In which part of the image is {}?")).format(ref)
            return Question("position", text, obj.region, target_pair=obj.pair)
    return None


def ask_exist(scene: Scene, rng: np.random.Generator, ask: Ask) -> Question | None:
    """``Is there a red circle?``; a "no" prefers a pair sharing a colour or shape with the image."""
    present = {o.pair for o in scene}
    if ask.yes(rng):
        pair = ask.target.pair if ask.target is not None else _pick(rng, scene).pair
        return Question("exist", f"Is there {_a(pair[0])} {pair[1]}?", "yes", target_pair=pair)
    absent = [p for p in ask.negatives if p not in present]
    if not absent:
        return None
    colors, shapes = {c for c, _ in present}, {s for _, s in present}
    hard = [p for p in absent if p[0] in colors or p[1] in shapes]
    pair = _pick(rng, hard if hard and rng.random() < 0.5 else absent)
    return Question("exist", f"Is there {_a(pair[0])} {pair[1]}?", "no", target_pair=pair)


def _relation_word(a: ShapeObject, b: ShapeObject, axis: str, yes: bool) -> str:
    """A relation that holds between ``a`` and ``b`` along ``axis`` when ``yes``, else its opposite."""
    if axis == "h":
        words, first = ("to the left of", "to the right of"), a.col < b.col
    else:
        words, first = ("above", "below"), a.row < b.row
    return words[0] if first == yes else words[1]


def ask_relation(scene: Scene, rng: np.random.Generator, ask: Ask) -> Question | None:
    """``Is the red circle to the left of the blue square?`` between objects differing on that axis."""
    pairs = [(a, b) for a in scene for b in scene if a is not b and ask.target in (None, a, b)]
    yes = ask.yes(rng)
    for k in rng.permutation(len(pairs)):
        a, b = pairs[int(k)]
        ref_a = refer(a, scene, rng, frozenset({"region"}), composed=ask.target is not None)
        ref_b = refer(b, scene, rng, frozenset({"region"}), composed=ask.target is not None)
        axes = [ax for ax, differs in (("h", a.col != b.col), ("v", a.row != b.row)) if differs]
        if ref_a is None or ref_b is None or not axes:
            continue
        word = _relation_word(a, b, _pick(rng, axes), yes)
        target = ask.target or a
        return Question(
            "relation", f"Is {ref_a} {word} {ref_b}?", "yes" if yes else "no", target_pair=target.pair
        )
    return None


def ask_mcq(scene: Scene, rng: np.random.Generator, ask: Ask) -> Question | None:
    """A colour or shape question with four lettered options; the answer is the letter."""
    values = {"color": ask.config.colors, "shape": ask.config.shapes}
    attr = _pick(rng, [a for a, v in values.items() if len(v) >= len(OPTION_LETTERS)])
    base = _ask_attribute(scene, rng, ask, attr)
    if base is None:
        return None
    others = [v for v in values[attr] if v != base.answer]
    distractors = [others[int(k)] for k in rng.permutation(len(others))[: len(OPTION_LETTERS) - 1]]
    slot = int(rng.integers(len(OPTION_LETTERS))) if ask.slot is None else ask.slot
    options = dict(zip(OPTION_LETTERS, [*distractors[:slot], base.answer, *distractors[slot:]], strict=True))
    listing = "\n".join(f"{letter}. {value}" for letter, value in options.items())
    text = f"{base.text}\n{listing}\n{MCQ_SUFFIX}"
    return Question("mcq", text, OPTION_LETTERS[slot], options=options, target_pair=base.target_pair)


QUESTION_FNS: dict[str, QuestionFn] = {
    "color": ask_color,
    "shape": ask_shape,
    "count": ask_count,
    "position": ask_position,
    "exist": ask_exist,
    "relation": ask_relation,
    "mcq": ask_mcq,
}


def chance_accuracy(config: ShapesConfig) -> dict[str, float]:
    """Expected accuracy of a uniform random guess over each type's answer set."""
    answers = {
        "color": len(config.colors),
        "shape": len(config.shapes),
        "count": config.max_shapes + 1,  # "0" … max_shapes (colour and kind counts can be 0)
        "position": GRID * GRID,
        "exist": 2,
        "relation": 2,
        "mcq": len(OPTION_LETTERS),
    }
    return {kind: 1.0 / n for kind, n in answers.items()}


# --------------------------------------------------------------------------- samples


def _user(text: str, with_image: bool) -> dict[str, str]:
    return {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{text}" if with_image else text}


def _gpt(text: str) -> dict[str, str]:
    return {"from": "gpt", "value": text}


@dataclass
class SplitData:
    """The records of one split, filled image by image.

    Attributes:
        scenes: ``{"image", "objects"}`` rows.
        captions: Caption rows (train).
        descriptions: Description conversations (train).
        qa: Question conversations (train: multi-turn; test: one question with its answer fields).
        corpus: Training text, one item per line.
        kinds: Type of every training question, in order.
        simple_qa: Single-turn conversations of ``qa_train_simple.json`` (train, when configured).
    """

    scenes: list[dict[str, Any]] = field(default_factory=list)
    captions: list[dict[str, str]] = field(default_factory=list)
    descriptions: list[dict[str, Any]] = field(default_factory=list)
    qa: list[dict[str, Any]] = field(default_factory=list)
    corpus: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    simple_qa: list[dict[str, Any]] = field(default_factory=list)


def image_path(split: str, index: int) -> str:
    """Path of an image relative to the dataset root."""
    return f"images/{split}/{index:06d}.png"


def train_questions(scene: Scene, rng: np.random.Generator, config: ShapesConfig) -> list[Question]:
    """``qa_turns`` (default 1–3) questions of distinct ``qa_types`` about a training scene."""
    ask = Ask(config, negatives=config.train_pairs)
    types, (low, high) = config.qa_types, config.qa_turns
    kinds = [types[int(k)] for k in rng.permutation(len(types))[: int(rng.integers(low, high + 1))]]
    questions = [q for kind in kinds if (q := QUESTION_FNS[kind](scene, rng, ask)) is not None]
    return questions or [ask_count(scene, rng, ask)]  # count always applies


def add_train_sample(
    data: SplitData, scene: Scene, rng: np.random.Generator, index: int, config: ShapesConfig
) -> None:
    """Appends the caption, description and QA conversation of training image ``index``."""
    path = image_path("train", index)
    caption = caption_text(scene)
    prompt, description = _pick(rng, DESCRIBE_PROMPTS), describe(scene, rng)
    questions = train_questions(scene, rng, config)
    turns = []
    for k, q in enumerate(questions):
        turns += [_user(q.text, with_image=k == 0), _gpt(q.answer)]
    data.captions.append({"image": path, "caption": caption})
    desc_turns = [_user(prompt, with_image=True), _gpt(description)]
    data.descriptions.append({"id": f"desc-train-{index:06d}", "image": path, "conversations": desc_turns})
    data.qa.append({"id": f"qa-train-{index:06d}", "image": path, "conversations": turns})
    data.corpus += [caption, prompt, description]
    for q in questions:
        data.corpus += [q.text.replace("\n", " "), q.answer]
    data.kinds += [q.kind for q in questions]
    if config.simple_qa_types:
        add_simple_samples(data, scene, index, config)


SIMPLE_STREAM = 1
"""Extra seed word of the random stream of ``qa_train_simple.json`` (independent of every other file)."""


def add_simple_samples(data: SplitData, scene: Scene, index: int, config: ShapesConfig) -> None:
    """One single-turn sample per ``simple_qa_types`` type about training image ``index``."""
    rng = np.random.default_rng([config.seed, SPLITS.index("train"), index, SIMPLE_STREAM])
    ask = Ask(config, negatives=config.train_pairs)
    for kind in config.simple_qa_types:
        q = QUESTION_FNS[kind](scene, rng, ask)
        if q is None:
            continue
        turns = [_user(q.text, with_image=True), _gpt(q.answer)]
        data.simple_qa.append(
            {"id": f"qa-simple-{index:06d}-{kind}", "image": image_path("train", index), "conversations": turns}
        )


def test_sample(
    rng: np.random.Generator, index: int, split: str, config: ShapesConfig
) -> tuple[Scene, Question]:
    """A test scene with one question; types go round-robin and yes/no and letters alternate.

    Raises:
        RuntimeError: No scene admitted the question type within ``MAX_SCENE_TRIES`` draws.
    """
    kind = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    turn = index // len(QUESTION_TYPES)  # how many earlier questions of this type the split has
    heldout = split == "test_heldout"
    for _ in range(MAX_SCENE_TRIES):
        forced = _pick(rng, config.heldout_pairs) if heldout else None
        pairs = config.all_pairs if heldout else config.train_pairs
        scene = sample_scene(rng, config, pairs, forced)
        target = next((o for o in scene if o.pair == forced), None)
        negatives = config.heldout_pairs if heldout else config.train_pairs
        ask = Ask(config, negatives, target, want_yes=turn % 2 == 0, slot=turn % len(OPTION_LETTERS))
        question = QUESTION_FNS[kind](scene, rng, ask)
        if question is not None:
            return scene, question
    raise RuntimeError(f"{split} sample {index}: no scene admitted a {kind!r} question")


def add_test_sample(data: SplitData, scene: Scene, question: Question, split: str, index: int) -> None:
    """Appends the one-question conversation of test image ``index``."""
    record: dict[str, Any] = {
        "id": f"{split}-{index:06d}",
        "image": image_path(split, index),
        "conversations": [_user(question.text, with_image=True), _gpt(question.answer)],
        "answer": question.answer,
        "type": question.kind,
    }
    if question.options is not None:
        record["options"] = question.options
    record["target_pair"] = list(question.target_pair) if question.target_pair else None
    data.qa.append(record)


# --------------------------------------------------------------------------- generation


def _save_png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG", optimize=False, compress_level=6)


def _remove_stale(directory: Path, keep: int) -> None:
    """Deletes generated images numbered ``keep`` or above (left by a larger earlier run)."""
    for path in directory.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):
        if int(path.stem) >= keep:
            path.unlink()


def generate_split(root: Path, split: str, count: int, config: ShapesConfig, bar: tqdm) -> SplitData:
    """Renders the images of one split and returns its records."""
    directory = root / "images" / split
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale(directory, count)
    data = SplitData()
    for index in range(count):
        rng = split_rng(config.seed, split, index)
        if split == "train":
            scene = sample_scene(rng, config, config.train_pairs)
            add_train_sample(data, scene, rng, index, config)
        else:
            scene, question = test_sample(rng, index, split, config)
            add_test_sample(data, scene, question, split, index)
        _save_png(render_scene(scene, config.image_size, config.antialias), root / image_path(split, index))
        data.scenes.append({"image": image_path(split, index), "objects": [o.to_json() for o in scene]})
        bar.update()
    return data


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _type_counts(kinds: Iterable[str]) -> dict[str, int]:
    counts = Counter(kinds)
    return {kind: counts.get(kind, 0) for kind in QUESTION_TYPES}


def _majority(records: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Accuracy of always giving each type's most frequent answer in the split (None: no question)."""
    out = {}
    for kind in QUESTION_TYPES:
        answers = Counter(r["answer"] for r in records if r["type"] == kind)
        out[kind] = max(answers.values()) / sum(answers.values()) if answers else None
    return out


def build_meta(config: ShapesConfig, train: SplitData, tests: dict[str, SplitData]) -> dict[str, Any]:
    """The contents of ``meta.json``: config, vocabularies, counts and chance levels."""
    return {
        "config": asdict(config),
        "colors": {c: list(COLOR_RGB[c]) for c in config.colors},
        "shapes": list(config.shapes),
        "sizes": list(SIZES),
        "regions": list(REGIONS),
        "heldout_pairs": [list(p) for p in config.heldout_pairs],
        "question_types": list(QUESTION_TYPES),
        "counts": {
            "images": {"train": len(train.scenes), **{s: len(d.scenes) for s, d in tests.items()}},
            "captions_train.jsonl": len(train.captions),
            "descriptions_train.json": len(train.descriptions),
            "qa_train.json": len(train.qa),
            "qa_train_questions": len(train.kinds),
            **({"qa_train_simple.json": len(train.simple_qa)} if config.simple_qa_types else {}),
            "corpus_lines": len(train.corpus),
            **{f"qa_{s}.json": len(d.qa) for s, d in tests.items()},
        },
        "question_type_counts": {
            "train": _type_counts(train.kinds),
            **{s: _type_counts(r["type"] for r in d.qa) for s, d in tests.items()},
        },
        "chance_accuracy": chance_accuracy(config),
        "majority_accuracy": {s: _majority(d.qa) for s, d in tests.items()},
    }


def write_outputs(root: Path, config: ShapesConfig, data: dict[str, SplitData]) -> dict[str, Path]:
    """Writes the text files of every split; returns name → path."""
    train, tests = data["train"], {s: d for s, d in data.items() if s != "train"}
    files = {
        name: root / name for name in ("captions_train.jsonl", "descriptions_train.json", "qa_train.json")
    }
    _write_jsonl(files["captions_train.jsonl"], train.captions)
    _write_json(files["descriptions_train.json"], train.descriptions)
    _write_json(files["qa_train.json"], train.qa)
    if config.simple_qa_types:
        files["qa_train_simple.json"] = root / "qa_train_simple.json"
        _write_json(files["qa_train_simple.json"], train.simple_qa)
    for split, d in tests.items():
        files[f"qa_{split}.json"] = root / f"qa_{split}.json"
        _write_json(files[f"qa_{split}.json"], d.qa)
    for split, d in data.items():
        files[f"scenes_{split}.jsonl"] = root / f"scenes_{split}.jsonl"
        _write_jsonl(files[f"scenes_{split}.jsonl"], d.scenes)
    files["corpus.txt"] = root / "corpus.txt"
    files["corpus.txt"].write_text("".join(line + "\n" for line in train.corpus), encoding="utf-8")
    files["meta.json"] = root / "meta.json"
    _write_json(files["meta.json"], build_meta(config, train, tests))
    return files


def generate_shapes_world(
    out_dir: str | Path, config: ShapesConfig = ShapesConfig(), progress: bool = True
) -> dict[str, Any]:
    """Generates Shapes World into ``out_dir`` (the image root of every file it writes).

    Args:
        out_dir: Output folder, created if needed; earlier generated files are overwritten.
        config: What to generate.
        progress: Show a progress bar over the images.

    Returns:
        A summary: ``root``, ``files`` (name → path), ``counts`` (as in ``meta.json``) and ``seconds``.
    """
    start = time.perf_counter()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    sizes = {"train": config.n_train, "test_id": config.n_test, "test_heldout": config.n_test}
    if not config.heldout_pairs:
        sizes["test_heldout"] = 0
    with tqdm(total=sum(sizes.values()), desc="shapes world", disable=not progress, unit="img") as bar:
        data = {split: generate_split(root, split, n, config, bar) for split, n in sizes.items()}
    files = write_outputs(root, config, data)
    meta = json.loads(files["meta.json"].read_text(encoding="utf-8"))
    return {
        "root": str(root),
        "files": {k: str(v) for k, v in files.items()},
        "counts": meta["counts"],
        "seconds": time.perf_counter() - start,
    }
