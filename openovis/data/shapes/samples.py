"""The records of one image: a training sample (caption, description, QA) or a one-question test sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from openovis.constants import IMAGE_PLACEHOLDER
from openovis.data.shapes.config import QUESTION_TYPES, SPLITS, ShapesConfig
from openovis.data.shapes.language import caption_text, describe
from openovis.data.shapes.questions import (
    OPTION_LETTERS,
    QUESTION_FNS,
    Ask,
    Question,
    ask_count,
)
from openovis.data.shapes.scenes import Scene, pick, sample_scene

DESCRIBE_PROMPTS = (
    "Describe the image in detail.",
    "Give a detailed description of the image.",
    "What is in this image? Describe it in detail.",
    "Describe every shape in the picture.",
)
MAX_SCENE_TRIES = 100
"""Scenes drawn for one test sample before giving up on its question type."""


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
    caption = caption_text(caption_scene(scene, index, config))
    prompt, description = pick(rng, DESCRIBE_PROMPTS), describe(scene, rng)
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
CAPTION_STREAM = 2
"""Extra seed word of the random stream of shuffled caption orders (independent of every other file)."""


def caption_scene(scene: Scene, index: int, config: ShapesConfig) -> Scene:
    """The objects of training image ``index`` in the order its caption names them."""
    if config.caption_order == "reading":
        return scene
    rng = np.random.default_rng([config.seed, SPLITS.index("train"), index, CAPTION_STREAM])
    return tuple(scene[int(k)] for k in rng.permutation(len(scene)))


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
            {
                "id": f"qa-simple-{index:06d}-{kind}",
                "image": image_path("train", index),
                "conversations": turns,
            }
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
        forced = pick(rng, config.heldout_pairs) if heldout else None
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
