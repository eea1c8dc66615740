"""Questions about a scene (seven types), each with one short canonical answer that follows from the scene.

color | shape | count | position | exist | relation | mcq  ->  Question(kind, text, answer, ...)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from openovis.data.shapes.config import GRID, PLURALS, Pair, ShapesConfig
from openovis.data.shapes.language import indefinite, refer
from openovis.data.shapes.scenes import Scene, ShapeObject, pick

OPTION_LETTERS = "ABCD"
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."


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
            text = pick(rng, ("What color is {}?", "What is the color of {}?")).format(ref)
        else:
            text = pick(rng, ("What shape is {}?", "What kind of shape is {}?")).format(ref)
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
    variant = pick(rng, ("color", "shape") if ask.target is not None else ("all", "color", "shape"))
    if variant == "all":
        return Question(
            "count",
            pick(rng, ("How many shapes are there?", "How many shapes are in the image?")),
            str(len(scene)),
        )
    source = ask.target or (pick(rng, scene) if rng.random() < 0.75 else None)
    if variant == "color":
        color = source.color if source else pick(rng, ask.config.colors)
        count = sum(o.color == color for o in scene)
        return Question(
            "count", f"How many {color} shapes are there?", str(count), target_pair=source and source.pair
        )
    shape = source.shape if source else pick(rng, ask.config.shapes)
    count = sum(o.shape == shape for o in scene)
    return Question(
        "count", f"How many {PLURALS[shape]} are there?", str(count), target_pair=source and source.pair
    )


def ask_position(scene: Scene, rng: np.random.Generator, ask: Ask) -> Question | None:
    """The region of one object, named without its region."""
    for obj in ask.candidates(scene, rng):
        ref = refer(obj, scene, rng, frozenset({"region"}), composed=ask.target is not None)
        if ref is not None:
            text = pick(rng, ("Where is {}?", "In which part of the image is {}?")).format(ref)
            return Question("position", text, obj.region, target_pair=obj.pair)
    return None


def ask_exist(scene: Scene, rng: np.random.Generator, ask: Ask) -> Question | None:
    """``Is there a red circle?``; a "no" prefers a pair sharing a colour or shape with the image."""
    present = {o.pair for o in scene}
    if ask.yes(rng):
        pair = ask.target.pair if ask.target is not None else pick(rng, scene).pair
        return Question("exist", f"Is there {indefinite(pair[0])} {pair[1]}?", "yes", target_pair=pair)
    absent = [p for p in ask.negatives if p not in present]
    if not absent:
        return None
    colors, shapes = {c for c, _ in present}, {s for _, s in present}
    hard = [p for p in absent if p[0] in colors or p[1] in shapes]
    pair = pick(rng, hard if hard and rng.random() < 0.5 else absent)
    return Question("exist", f"Is there {indefinite(pair[0])} {pair[1]}?", "no", target_pair=pair)


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
        word = _relation_word(a, b, pick(rng, axes), yes)
        target = ask.target or a
        return Question(
            "relation", f"Is {ref_a} {word} {ref_b}?", "yes" if yes else "no", target_pair=target.pair
        )
    return None


def ask_mcq(scene: Scene, rng: np.random.Generator, ask: Ask) -> Question | None:
    """A colour or shape question with four lettered options; the answer is the letter."""
    values = {"color": ask.config.colors, "shape": ask.config.shapes}
    attr = pick(rng, [a for a, v in values.items() if len(v) >= len(OPTION_LETTERS)])
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
