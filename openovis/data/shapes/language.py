"""The language of Shapes World: referring expressions, stage-1 captions and stage-2 descriptions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from openovis.data.shapes.scenes import Scene, ShapeObject, pick

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


def indefinite(word: str) -> str:
    """``word`` with its indefinite article: ``"a red"``, ``"an orange"``."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def object_phrase(obj: ShapeObject) -> str:
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
    return _ref_text(obj, pick(rng, forms))


def _join(items: Sequence[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(text: str) -> str:
    """``text`` with its first letter capitalized."""
    return text[0].upper() + text[1:]


def caption_text(scene: Scene) -> str:
    """The short stage-1 caption: every object with its size, colour, shape and region."""
    return _join([f"{indefinite(object_phrase(o))} at the {o.region}" for o in scene]) + "."


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
    phrase = indefinite(object_phrase(obj))
    return pick(rng, templates).format(region=obj.region, phrase=phrase, Phrase=_sentence(phrase))


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
        ref_a = refer(a, scene, rng, frozenset({"region"})) or f"the {object_phrase(a)} at the {a.region}"
        ref_b = refer(b, scene, rng, frozenset({"region"})) or f"the {object_phrase(b)} at the {b.region}"
        parts.append(_sentence(f"{ref_a} is {relation_phrase(a, b)} {ref_b}."))
    return " ".join(parts)
