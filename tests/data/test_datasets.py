"""Datasets: specs, readers, path safety, the corrupt-dataset skip accounting, and the mixture."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from openovis.data.datasets import (
    DataSource,
    MixtureDataset,
    MixtureSpec,
    OvisDataset,
    build_mixture,
    check_relative_path,
    read_records,
    resolve_image_path,
)
from openovis.processing.collator import OvisCollator
from openovis.processing.processor import OvisProcessor
from openovis.skips import SkipCounter, SkippedSample, SkipReason, SkipSample


def _processing_fixtures() -> ModuleType:
    """The tiny-tokenizer builder of tests/processing/conftest.py (conftests are not importable by name)."""
    path = Path(__file__).resolve().parents[1] / "processing" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_openovis_processing_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def processor() -> OvisProcessor:
    fixtures = _processing_fixtures()
    return OvisProcessor(fixtures.build_tiny_tokenizer(), fixtures.tiny_image_config())


def turns(question: str, answer: str = "A red circle.") -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


# --------------------------------------------------------------------------- specs


def test_data_source_from_dict(tmp_path: Path) -> None:
    source = DataSource.from_dict({"path": "a.jsonl", "format": "caption", "weight": 0.5}, base_dir=tmp_path)
    assert source.path == str(tmp_path / "a.jsonl") and source.resolved_image_root == tmp_path
    assert source.label == "a.jsonl"
    with pytest.raises(ValueError, match="^wieght"):
        DataSource.from_dict({"path": "a.jsonl", "wieght": 2})
    with pytest.raises(ValueError, match="^path"):
        DataSource.from_dict({"format": "caption"})
    for key, value in [("format", "pairs"), ("weight", 0), ("weight", "1"), ("max_samples", 0)]:
        with pytest.raises(ValueError, match=f"^{key}"):
            DataSource.from_dict({"path": "a.jsonl", key: value})


def test_mixture_spec_from_dict() -> None:
    spec = MixtureSpec.from_dict(
        {"seed": 3, "sources": [{"path": "a.json"}, {"path": "b.jsonl", "weight": 2}]}
    )
    assert spec.seed == 3 and [s.weight for s in spec.sources] == [1.0, 2]
    assert MixtureSpec.from_dict([{"path": "a.json"}]).seed == 0
    with pytest.raises(ValueError, match="^shuffle"):
        MixtureSpec.from_dict({"sources": [{"path": "a.json"}], "shuffle": True})
    with pytest.raises(ValueError, match="^sources"):
        MixtureSpec.from_dict({"sources": []})
    with pytest.raises(ValueError, match="^sources"):
        MixtureSpec.from_dict({"sources": "a.json"})


# --------------------------------------------------------------------------- files


def test_missing_and_unknown_files_are_errors(tmp_path: Path, processor: OvisProcessor) -> None:
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unknown data file type"):
        read_records(tmp_path / "data.csv")
    (tmp_path / "obj.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="list of records"):
        read_records(tmp_path / "obj.json")
    (tmp_path / "d.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="image root"):
        OvisDataset(DataSource(str(tmp_path / "d.jsonl"), image_root=str(tmp_path / "none")), processor)


def test_json_list_and_jsonl_saved_as_json(tmp_path: Path) -> None:
    rows = [{"id": 1}, {"id": 2}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_records(tmp_path / "list.json") == rows == read_records(tmp_path / "lines.json")


def test_parquet_needs_pyarrow_or_pandas(tmp_path: Path) -> None:
    if importlib.util.find_spec("pyarrow") or importlib.util.find_spec("pandas"):
        pytest.skip("a parquet reader is installed")
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match="pyarrow"):
        read_records(tmp_path / "c.parquet")


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "rel", ["../x.png", "a/../../x.png", "/etc/passwd", "\\\\server\\x.png", "C:\\x.png", ".."]
)
def test_paths_leaving_the_root_are_rejected(rel: str) -> None:
    with pytest.raises(SkipSample) as info:
        check_relative_path(rel)
    assert info.value.reason is SkipReason.PATH_ESCAPE


def test_symlinks_out_of_the_root_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "link.png")
    os.symlink(root / "sub", root / "inner")
    with pytest.raises(SkipSample) as info:
        resolve_image_path(root, "link.png")
    assert info.value.reason is SkipReason.PATH_ESCAPE
    assert resolve_image_path(root, "sub/../a.png") == (root / "a.png").resolve()
    assert resolve_image_path(root, "inner/b.png") == (root / "sub" / "b.png").resolve()


# --------------------------------------------------------------------------- the corrupt dataset


def _write_corrupt_dataset(tmp_path: Path) -> tuple[Path, Path, dict[str, int]]:
    """A JSONL conversation file with 3 good records and 14 bad ones; returns (file, image root, expected skips)."""
    root = tmp_path / "images"
    root.mkdir()
    for name in ("good0.png", "good1.png", "good2.png"):
        Image.new("RGB", (28, 28), (200, 30, 30)).save(root / name)
    Image.new("RGB", (1000, 100)).save(root / "wide.png")  # 51 image tokens > max_length 48
    png = (root / "good0.png").read_bytes()
    (root / "empty.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "garbage.png").write_bytes(b"not an image" * 20)
    Image.new("RGB", (28, 28)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "link_out.png")

    def conv(image: Any, question: str = "<image>\nWhat is in the image?") -> dict[str, Any]:
        return {"image": image, "conversations": turns(question)}

    records: list[Any] = [
        conv("good0.png", "<image>\nQuestion g0"),
        conv(["good1.png", "good2.png"], "<image> <image> Question g1"),
        {"conversations": turns("Question g2")},
        conv("missing.png"),
        conv("empty.png"),
        conv("truncated.png"),
        conv("garbage.png"),
        conv("../outside.png"),
        conv(str(tmp_path / "outside.png")),
        conv("link_out.png"),
        conv("good0.png", "No placeholder here"),
        {"image": "good0.png", "conversations": []},
        {"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]},
        conv("wide.png"),
        [1, 2, 3],
    ]
    lines = [json.dumps(r).encode() for r in records]
    lines.append(
        b'{"conversations": [{"from": "human", "value": "caf\xe9 latin-1"}, {"from": "gpt", "value": "x"}]}'
    )
    lines.append(b'{"conversations": [{"from": "human", "value": "cut off')
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    expected = {
        "missing image": 1,
        "empty image file": 1,
        "unreadable image": 2,
        "image path outside root": 3,
        "placeholder mismatch": 1,
        "empty conversation": 1,
        "unknown role": 1,
        "images exceed max length": 1,
        "malformed record": 2,
        "invalid text encoding": 1,
    }
    return data, root, expected


def _run(dataset: Dataset, processor: OvisProcessor, num_workers: int) -> tuple[SkipCounter, list[str]]:
    loader = DataLoader(
        dataset, batch_size=4, num_workers=num_workers, collate_fn=OvisCollator.from_processor(processor)
    )
    counter, texts = SkipCounter(), []
    for batch in loader:
        counter.add_batch(batch)
        texts += [
            processor.tokenizer.decode(row[mask.bool()].tolist())
            for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        ]
    return counter, texts


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_dataset_counts_every_skip_and_delivers_every_good_sample(
    tmp_path: Path, processor: OvisProcessor, num_workers: int
) -> None:
    data, root, expected = _write_corrupt_dataset(tmp_path)
    dataset = OvisDataset(DataSource(str(data), image_root=str(root)), processor, max_length=48)
    assert len(dataset) == 17
    assert dataset.record_problems.skipped == 8  # the cheap checks done when the file is read
    counter, texts = _run(dataset, processor, num_workers)
    assert counter.total == 17 and dict(counter.reasons) == expected
    assert counter.summary().startswith(
        "skipped 14 of 17: 3 image path outside root, 2 malformed record, 2 unreadable"
    )
    for marker in ("Question g0", "Question g1", "Question g2"):
        assert sum(marker in text for text in texts) == 1
    assert len(texts) == 3
    if num_workers == 0:  # in-process, the dataset's own counter saw the same
        assert dict(dataset.skips.reasons) == expected


def test_skipped_index_returns_a_skipped_sample(tmp_path: Path, processor: OvisProcessor) -> None:
    data, root, _ = _write_corrupt_dataset(tmp_path)
    dataset = OvisDataset(
        DataSource(str(data), image_root=str(root), max_samples=5), processor, max_length=48
    )
    assert len(dataset) == 5
    item = dataset[3]
    assert isinstance(item, SkippedSample) and item.reason is SkipReason.MISSING_IMAGE and item.index == 3
    assert set(dataset[0]) >= {"input_ids", "labels", "pixel_values"}


def test_caption_dataset(tmp_path: Path, processor: OvisProcessor) -> None:
    Image.new("RGB", (28, 28)).save(tmp_path / "a.png")
    rows = [
        {"image": "a.png", "caption": "A red circle."},
        {"image": "b.png", "caption": "x"},
        {"caption": "no image"},
    ]
    (tmp_path / "captions.json").write_text(json.dumps(rows))
    dataset = OvisDataset(DataSource(str(tmp_path / "captions.json"), format="caption"), processor)
    first = dataset[0]
    labels = first["labels"][first["labels"] != -100].tolist()
    assert processor.tokenizer.decode(labels) == "A red circle.<|endoftext|>"
    assert dataset[1].reason is SkipReason.MISSING_IMAGE
    assert dataset[2].reason is SkipReason.MALFORMED_RECORD


# --------------------------------------------------------------------------- mixture


class Numbers(Dataset):
    def __init__(self, tag: str, n: int) -> None:
        self.tag, self.n = tag, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> str:
        return f"{self.tag}{i}"


def test_mixture_weights_and_determinism() -> None:
    parts = [Numbers("a", 10), Numbers("b", 4)]
    mix = MixtureDataset(parts, [1.0, 2.5], seed=7)
    items = [mix[i] for i in range(len(mix))]
    assert len(mix) == 10 + 10
    assert sorted(i for i in items if i.startswith("a")) == sorted(f"a{i}" for i in range(10))
    b_items = [i for i in items if i.startswith("b")]
    assert all(b_items.count(f"b{i}") in (2, 3) for i in range(4)) and len(b_items) == 10
    assert items == [MixtureDataset(parts, [1.0, 2.5], seed=7)[i] for i in range(len(mix))]
    assert items != [MixtureDataset(parts, [1.0, 2.5], seed=8)[i] for i in range(len(mix))]
    with pytest.raises(ValueError, match="weights"):
        MixtureDataset(parts, [1.0])


def test_build_mixture_from_spec(tmp_path: Path, processor: OvisProcessor) -> None:
    Image.new("RGB", (28, 28)).save(tmp_path / "a.png")
    (tmp_path / "conv.jsonl").write_text(
        json.dumps({"image": "a.png", "conversations": turns("<image> Hi")}) + "\n"
    )
    (tmp_path / "cap.jsonl").write_text(json.dumps({"image": "a.png", "caption": "Hello there."}) + "\n")
    spec = MixtureSpec.from_dict(
        {
            "seed": 1,
            "sources": [{"path": "conv.jsonl", "weight": 2}, {"path": "cap.jsonl", "format": "caption"}],
        },
        base_dir=tmp_path,
    )
    mix = build_mixture(spec, processor)
    assert len(mix) == 3
    assert all("labels" in mix[i] for i in range(3))
    assert mix.skips.total == 3 and mix.record_problems.total == 2
    as_list = [
        {"path": str(tmp_path / "conv.jsonl")},
        {"path": str(tmp_path / "cap.jsonl"), "format": "caption"},
    ]
    assert len(build_mixture(as_list, processor, seed=5)) == 2
