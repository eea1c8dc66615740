"""Shapes World: the embedded, procedurally generated dataset (DESIGN §5b).

Each image shows a few coloured shapes (1–4 by default) on a light grey background. The image is a
3×3 grid of named regions and every shape sits inside its own cell, so shapes never overlap and every
shape's position has exactly one name. Every text is generated from the scene, so each answer is unique and checkable::

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

Files: ``config`` (vocabulary, `ShapesConfig`), ``scenes`` (sampling and rendering), ``language``
(referring expressions, captions, descriptions), ``questions`` (the seven question types),
``samples`` (the records of one image), ``writing`` (`generate_shapes_world`: every split's files).
"""

from openovis.data.shapes.config import (
    COLOR_RGB,
    GRID,
    PLURALS,
    QUESTION_TYPES,
    REGIONS,
    SHAPE_KINDS,
    SIZES,
    SPLITS,
    Pair,
    ShapesConfig,
)
from openovis.data.shapes.language import caption_text, describe, refer
from openovis.data.shapes.questions import (
    QUESTION_FNS,
    Ask,
    Question,
    ask_color,
    ask_count,
    ask_exist,
    ask_mcq,
    ask_position,
    ask_relation,
    ask_shape,
    chance_accuracy,
)
from openovis.data.shapes.scenes import Scene, ShapeObject, render_scene, sample_scene, split_rng
from openovis.data.shapes.writing import generate_shapes_world

__all__ = [
    "COLOR_RGB",
    "GRID",
    "PLURALS",
    "QUESTION_FNS",
    "QUESTION_TYPES",
    "REGIONS",
    "SHAPE_KINDS",
    "SIZES",
    "SPLITS",
    "Ask",
    "Pair",
    "Question",
    "Scene",
    "ShapeObject",
    "ShapesConfig",
    "ask_color",
    "ask_count",
    "ask_exist",
    "ask_mcq",
    "ask_position",
    "ask_relation",
    "ask_shape",
    "caption_text",
    "chance_accuracy",
    "describe",
    "generate_shapes_world",
    "refer",
    "render_scene",
    "sample_scene",
    "split_rng",
]
