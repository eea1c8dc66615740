"""Generation: render every split's images and write its files (JSON, JSONL, corpus, meta.json)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from openovis.data.shapes.config import COLOR_RGB, QUESTION_TYPES, REGIONS, SIZES, ShapesConfig
from openovis.data.shapes.questions import chance_accuracy
from openovis.data.shapes.samples import (
    SplitData,
    add_test_sample,
    add_train_sample,
    image_path,
    test_sample,
)
from openovis.data.shapes.scenes import render_scene, sample_scene, split_rng


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
