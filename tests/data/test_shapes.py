"""Shapes World: determinism, held-out composition, answers that follow from the scene, images."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from openovis.constants import IMAGE_PLACEHOLDER
from openovis.data.shapes import (
    COLOR_RGB,
    PLURALS,
    QUESTION_TYPES,
    SHAPE_KINDS,
    SIZES,
    Ask,
    ShapesConfig,
    ask_exist,
    ask_relation,
    generate_shapes_world,
    render_scene,
    sample_scene,
    split_rng,
)
from openovis.data.shapes.language import indefinite

SMALL = ShapesConfig(n_train=40, n_test=28)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_shapes_world(root, SMALL, progress=False)
    return root


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _load(root: Path, name: str) -> Any:
    path = root / name
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return json.loads(path.read_text(encoding="utf-8"))


def _scenes(root: Path, split: str) -> dict[str, list[dict[str, Any]]]:
    return {row["image"]: row["objects"] for row in _load(root, f"scenes_{split}.jsonl")}


# --------------------------------------------------------------------------- an independent answer key


def _resolve(ref: str, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects a referring expression ("the small red object at the top left") matches."""
    assert ref.startswith("the "), ref
    words, _, region = ref[4:].partition(" at the ")
    *attrs, noun = words.split()
    found = []
    for obj in objects:
        ok = noun == "object" or obj["shape"] == noun
        ok &= all(obj["size" if a in SIZES else "color"] == a for a in attrs)
        ok &= not region or obj["region"] == region
        found.append(obj) if ok else None
    return found


def _the(ref: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    found = _resolve(ref, objects)
    assert len(found) == 1, f"{ref!r} is ambiguous or empty: {found}"
    return found[0]


def _relation_holds(a: dict[str, Any], word: str, b: dict[str, Any]) -> bool:
    return {
        "to the left of": a["col"] < b["col"],
        "to the right of": a["col"] > b["col"],
        "above": a["row"] < b["row"],
        "below": a["row"] > b["row"],
    }[word]


def answer_key(question: str, objects: list[dict[str, Any]]) -> str:
    """Recomputes a question's answer from the scene objects (never from the generator's code)."""
    yes_no = {True: "yes", False: "no"}
    if m := re.fullmatch(r"(?:What color is|What is the color of) (the .+)\?", question):
        return _the(m[1], objects)["color"]
    if m := re.fullmatch(r"(?:What shape is|What kind of shape is) (the .+)\?", question):
        return _the(m[1], objects)["shape"]
    if m := re.fullmatch(r"(?:Where is|In which part of the image is) (the .+)\?", question):
        return _the(m[1], objects)["region"]
    if question in ("How many shapes are there?", "How many shapes are in the image?"):
        return str(len(objects))
    if m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
        return str(sum(o["color"] == m[1] for o in objects))
    if m := re.fullmatch(r"How many (\w+) are there\?", question):
        shape = {v: k for k, v in PLURALS.items()}[m[1]]
        return str(sum(o["shape"] == shape for o in objects))
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", question):
        return yes_no[any((o["color"], o["shape"]) == (m[1], m[2]) for o in objects)]
    if m := re.fullmatch(r"Is (the .+?) (to the left of|to the right of|above|below) (the .+)\?", question):
        a, b = _the(m[1], objects), _the(m[3], objects)
        return yes_no[_relation_holds(a, m[2], b)]
    lines = question.split("\n")
    if len(lines) == 6:  # mcq: question, four options, instruction
        options = dict(line.split(". ", 1) for line in lines[1:5])
        truth = answer_key(lines[0], objects)
        letters = [k for k, v in options.items() if v == truth]
        assert len(letters) == 1, question
        return letters[0]
    raise AssertionError(f"unparsed question: {question!r}")


# --------------------------------------------------------------------------- tests


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    config = ShapesConfig(n_train=12, n_test=7)
    for name in ("a", "b"):
        generate_shapes_world(tmp_path / name, config, progress=False)
    generate_shapes_world(tmp_path / "c", ShapesConfig(seed=1, n_train=12, n_test=7), progress=False)
    a, b, c = (_hashes(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".png")), "another seed must change every image"


def test_layout_and_counts(world: Path) -> None:
    meta = _load(world, "meta.json")
    for split, n in (("train", 40), ("test_id", 28), ("test_heldout", 28)):
        assert len(list((world / "images" / split).glob("*.png"))) == n
        assert meta["counts"]["images"][split] == n
    assert len(_load(world, "captions_train.jsonl")) == 40
    assert len(_load(world, "descriptions_train.json")) == 40
    assert meta["counts"]["corpus_lines"] == len((world / "corpus.txt").read_text().splitlines())
    assert ShapesConfig(**meta["config"]) == SMALL


def test_heldout_pairs_never_in_training(world: Path) -> None:
    heldout = set(SMALL.heldout_pairs)
    for objects in _scenes(world, "train").values():
        assert not heldout & {(o["color"], o["shape"]) for o in objects}
    corpus = (world / "corpus.txt").read_text()
    for color, shape in heldout:
        assert f"{color} {shape}" not in corpus
    for objects in _scenes(world, "test_id").values():
        assert not heldout & {(o["color"], o["shape"]) for o in objects}


def test_heldout_split_targets_heldout_pairs(world: Path) -> None:
    heldout = {list(p).__repr__() for p in SMALL.heldout_pairs}
    scenes = _scenes(world, "test_heldout")
    for record in _load(world, "qa_test_heldout.json"):
        assert {(o["color"], o["shape"]) for o in scenes[record["image"]]} & set(SMALL.heldout_pairs)
        assert repr(record["target_pair"]) in heldout, record


@pytest.mark.parametrize("split", ["train", "test_id", "test_heldout"])
def test_answers_follow_from_scene(world: Path, split: str) -> None:
    scenes = _scenes(world, split)
    records = _load(world, "qa_train.json" if split == "train" else f"qa_{split}.json")
    for record in records:
        turns = record["conversations"]
        assert turns[0]["value"].startswith(IMAGE_PLACEHOLDER + "\n")
        assert sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns) == 1
        for user, gpt in zip(turns[::2], turns[1::2], strict=True):
            question = user["value"].removeprefix(IMAGE_PLACEHOLDER + "\n")
            assert gpt["value"] == answer_key(question, scenes[record["image"]]), question
        if split != "train":
            assert len(turns) == 2 and record["answer"] == turns[1]["value"]
            if record["type"] == "mcq":
                assert set(record["options"]) == set("ABCD") and record["answer"] in "ABCD"


def test_simple_qa_is_single_turn_of_its_types_and_answers_follow_from_scene(world: Path) -> None:
    scenes = _scenes(world, "train")
    records = _load(world, "qa_train_simple.json")
    assert len(records) == 3 * SMALL.n_train == _load(world, "meta.json")["counts"]["qa_train_simple.json"]
    kinds = {r["id"].rsplit("-", 1)[1] for r in records}
    assert kinds == set(SMALL.simple_qa_types) == {"color", "shape", "count"}
    for record in records:
        user, gpt = record["conversations"]
        question = user["value"].removeprefix(IMAGE_PLACEHOLDER + "\n")
        assert gpt["value"] == answer_key(question, scenes[record["image"]]), question


def test_question_options_leave_the_other_files_unchanged(tmp_path: Path) -> None:
    base = ShapesConfig(n_train=12, n_test=7)
    generate_shapes_world(tmp_path / "a", base, progress=False)
    generate_shapes_world(
        tmp_path / "b", ShapesConfig(n_train=12, n_test=7, simple_qa_types=()), progress=False
    )
    a, b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert set(a) - set(b) == {"qa_train_simple.json"}
    assert all(a[k] == b[k] for k in b if k != "meta.json")
    one = ShapesConfig(n_train=30, n_test=7, qa_types=("color", "count"), qa_turns=(1, 1))
    generate_shapes_world(tmp_path / "c", one, progress=False)
    qa = _load(tmp_path / "c", "qa_train.json")
    assert all(len(r["conversations"]) == 2 for r in qa)
    counts = _load(tmp_path / "c", "meta.json")["question_type_counts"]["train"]
    assert {k for k, v in counts.items() if v} == {"color", "count"}
    assert ShapesConfig(**_load(tmp_path / "c", "meta.json")["config"]) == one


def test_captions_and_descriptions_name_every_object(world: Path) -> None:
    scenes = _scenes(world, "train")
    descriptions = {
        r["image"]: r["conversations"][1]["value"] for r in _load(world, "descriptions_train.json")
    }
    for row in _load(world, "captions_train.jsonl"):
        objects = scenes[row["image"]]
        for o in objects:
            phrase = f"{o['size']} {o['color']} {o['shape']}"
            assert f"{phrase} at the {o['region']}" in row["caption"]
            assert phrase in descriptions[row["image"]] and o["region"] in descriptions[row["image"]]
        assert f"{len(objects)} shape" in descriptions[row["image"]]


def _caption_items(caption: str) -> list[str]:
    """``"a large red circle at the top left"``, … of a caption, in its order."""
    return re.split(r", | and (?=an? )", caption.removesuffix("."))


def test_random_caption_order_shuffles_the_objects_and_nothing_else(world: Path, tmp_path: Path) -> None:
    config = ShapesConfig(n_train=40, n_test=28, caption_order="random")
    generate_shapes_world(tmp_path, config, progress=False)
    reading, shuffled = _hashes(world), _hashes(tmp_path)
    assert {k for k in reading if reading[k] != shuffled[k]} == {
        "captions_train.jsonl",
        "corpus.txt",
        "meta.json",
    }
    scenes, moved = _scenes(world, "train"), 0
    pairs = zip(_load(world, "captions_train.jsonl"), _load(tmp_path, "captions_train.jsonl"), strict=True)
    for before, after in pairs:
        objects = scenes[after["image"]]
        want = [
            f"{indefinite(o['size'] + ' ' + o['color'] + ' ' + o['shape'])} at the {o['region']}"
            for o in objects
        ]
        assert _caption_items(before["caption"]) == want
        assert sorted(_caption_items(after["caption"])) == sorted(want)
        moved += _caption_items(after["caption"]) != want
    assert moved > 10  # 40 scenes of 1-4 objects: most with two or more are reordered


def test_test_splits_are_balanced(world: Path) -> None:
    meta = _load(world, "meta.json")
    for split in ("test_id", "test_heldout"):
        records = _load(world, f"qa_{split}.json")
        assert meta["question_type_counts"][split] == {t: 4 for t in QUESTION_TYPES}
        for kind in ("exist", "relation"):
            answers = [r["answer"] for r in records if r["type"] == kind]
            assert answers.count("yes") == answers.count("no") == 2
        assert sorted(r["answer"] for r in records if r["type"] == "mcq") == list("ABCD")


def test_train_yes_no_balance() -> None:
    config = ShapesConfig()
    ask = Ask(config, negatives=config.train_pairs)
    for fn in (ask_exist, ask_relation):
        answers = []
        for i in range(2000):
            rng = split_rng(0, "train", i)
            question = fn(sample_scene(rng, config, config.train_pairs), rng, ask)
            answers += [question.answer] if question else []
        assert 0.45 < answers.count("yes") / len(answers) < 0.55, fn.__name__


def test_chance_levels(world: Path) -> None:
    meta = _load(world, "meta.json")
    chance = meta["chance_accuracy"]
    assert set(chance) == set(QUESTION_TYPES)
    assert chance["color"] == pytest.approx(1 / len(SMALL.colors))
    assert chance["shape"] == pytest.approx(1 / len(SMALL.shapes))
    assert chance["exist"] == chance["relation"] == 0.5 and chance["mcq"] == 0.25
    assert chance["count"] == pytest.approx(1 / (SMALL.max_shapes + 1))
    assert chance["position"] == pytest.approx(1 / 9)
    for split in ("test_id", "test_heldout"):
        assert set(meta["majority_accuracy"][split]) == set(QUESTION_TYPES)
        assert meta["majority_accuracy"][split]["exist"] == 0.5


def test_images_are_pngs_with_shapes_at_their_centres(world: Path) -> None:
    for split in ("train", "test_heldout"):
        for image, objects in _scenes(world, split).items():
            with Image.open(world / image) as im:
                assert im.format == "PNG" and im.mode == "RGB" and im.size == (64, 64)
                pixels = np.asarray(im)
            for o in objects:
                assert tuple(pixels[int(o["y"]), int(o["x"])]) == COLOR_RGB[o["color"]], (image, o)


@pytest.mark.parametrize("image_size", [64, 128])
def test_every_shape_kind_is_filled_at_its_centre(image_size: int) -> None:
    config = ShapesConfig(image_size=image_size, shapes=SHAPE_KINDS, heldout_pairs=(), min_shapes=4)
    for i in range(30):
        scene = sample_scene(split_rng(0, "train", i), config, config.all_pairs)
        pixels = np.asarray(render_scene(scene, image_size))
        for o in scene:
            assert tuple(pixels[int(o.y), int(o.x)]) == COLOR_RGB[o.color], o


def test_shapes_do_not_overlap(world: Path) -> None:
    for objects in _scenes(world, "train").values():
        cells = [(o["row"], o["col"]) for o in objects]
        assert len(set(cells)) == len(cells)
        side = 64 / 3
        for o in objects:  # each shape stays inside its own cell
            assert o["col"] * side <= o["x"] - o["r"] and o["x"] + o["r"] <= (o["col"] + 1) * side
            assert o["row"] * side <= o["y"] - o["r"] and o["y"] + o["r"] <= (o["row"] + 1) * side


def test_regeneration_removes_stale_images(tmp_path: Path) -> None:
    generate_shapes_world(tmp_path, ShapesConfig(n_train=10, n_test=7), progress=False)
    generate_shapes_world(tmp_path, ShapesConfig(n_train=5, n_test=7), progress=False)
    assert len(list((tmp_path / "images" / "train").glob("*.png"))) == 5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", -1),
        ("image_size", 16),
        ("image_size", 300),
        ("n_train", 0),
        ("n_test", -1),
        ("min_shapes", 0),
        ("max_shapes", 10),
        ("max_shapes", 1),
        ("colors", ("red", "mauve", "blue", "green")),
        ("colors", ("red", "blue", "green")),
        ("shapes", ("circle",)),
        ("heldout_pairs", (("red", "hexagon"),)),
        ("heldout_pairs", tuple(("red", s) for s in ShapesConfig().shapes)),
        ("antialias", "yes"),
        ("qa_types", ("color", "colour")),
        ("qa_types", ()),
        ("qa_turns", (2, 1)),
        ("qa_turns", (1, 8)),
        ("simple_qa_types", ("count", "count")),
        ("caption_order", "shuffled"),
    ],
)
def test_config_validation_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        ShapesConfig(**{field: value})


def test_min_above_max_is_rejected() -> None:
    with pytest.raises(ValueError, match="^min_shapes"):
        ShapesConfig(min_shapes=3, max_shapes=2)


def test_config_accepts_lists() -> None:
    config = ShapesConfig(heldout_pairs=[["red", "triangle"]], colors=["red", "green", "blue", "yellow"])
    assert config.heldout_pairs == (("red", "triangle"),) and isinstance(config.colors, tuple)


@pytest.mark.slow
def test_default_generation_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    summary = generate_shapes_world(tmp_path, progress=False)
    assert time.perf_counter() - start < 60
    assert summary["counts"]["images"]["train"] == ShapesConfig().n_train
