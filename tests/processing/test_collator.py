"""OvisCollator: padding sides, crop concatenation, skipped samples and their counts."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from openovis.constants import IGNORE_INDEX
from openovis.processing.collator import MODEL_INPUT_KEYS, OvisCollator, model_inputs
from openovis.skips import SkipCounter, SkippedSample, SkipReason

PAD = 0


def sample(ids: list[int], crops: int = 0, fill: float = 0.0, labels: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.ones(len(ids), dtype=torch.long),
        "pixel_values": torch.full((crops, 3, 4, 4), fill) if crops else None,
        "grids": [(1, crops - 1)] if crops > 1 else ([(1, 1)] if crops else []),
    }
    if labels:
        out["labels"] = torch.tensor(ids) * 10
    return out


def test_right_padding_for_training() -> None:
    batch = OvisCollator(PAD)([sample([5, 6, 7]), sample([8])])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[50, 60, 70], [80, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["pixel_values"] is None and batch["grids"] == []
    assert batch["num_samples"] == 2 and batch["skipped"] == {}


def test_left_padding_for_generation() -> None:
    batch = OvisCollator(PAD, "left")([sample([5, 6, 7], labels=False), sample([8], labels=False)])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert "labels" not in batch


def test_crops_are_concatenated_in_sample_order() -> None:
    batch = OvisCollator(PAD)([sample([1], crops=3, fill=1.0), sample([2]), sample([3], crops=1, fill=2.0)])
    pv = batch["pixel_values"]
    assert pv.shape == (4, 3, 4, 4)
    assert pv[:3].eq(1.0).all() and pv[3].eq(2.0).all()
    assert batch["grids"] == [(1, 2), (1, 1)]


def test_skipped_samples_are_dropped_and_counted() -> None:
    samples = [
        sample([1, 2]),
        SkippedSample(3, SkipReason.UNREADABLE_IMAGE, "x.png"),
        SkippedSample(7, SkipReason.UNREADABLE_IMAGE, "y.png"),
        SkippedSample(9, SkipReason.PLACEHOLDER_MISMATCH),
    ]
    batch = OvisCollator(PAD)(samples)
    assert batch["input_ids"].tolist() == [[1, 2]]
    assert batch["num_samples"] == 4
    assert batch["skipped"] == {"unreadable image": 2, "placeholder mismatch": 1}
    counter = SkipCounter()
    counter.add_batch(batch)
    assert counter.summary() == "skipped 3 of 4: 2 unreadable image, 1 placeholder mismatch"


def test_an_all_skipped_batch_is_empty() -> None:
    batch = OvisCollator(PAD)([SkippedSample(0, SkipReason.MISSING_IMAGE)])
    assert batch["input_ids"].shape == (0, 0) and batch["pixel_values"] is None
    assert batch["skipped"] == {"missing image": 1}


def test_pad_to_multiple_of_and_model_inputs() -> None:
    batch = OvisCollator(PAD, pad_to_multiple_of=8)([sample([1, 2, 3])])
    assert batch["input_ids"].shape == (1, 8) and batch["labels"][0, 3:].eq(IGNORE_INDEX).all()
    assert set(model_inputs(batch)) == set(MODEL_INPUT_KEYS)


def test_bad_arguments_and_mixed_labels() -> None:
    with pytest.raises(ValueError, match="padding_side"):
        OvisCollator(PAD, "middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels"):
        OvisCollator(PAD)([sample([1]), sample([2], labels=False)])
