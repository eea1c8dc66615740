"""The image check separates a model that reads its images from one that cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from openovis import build_model
from openovis.data.text_tokenizer import train_text_tokenizer
from openovis.evaluation.image_check import format_image_check, image_check
from openovis.processing.collator import OvisCollator, model_inputs
from openovis.processing.processor import OvisProcessor

COLOURS = {"red": (220, 30, 30), "blue": (30, 70, 220), "green": (30, 160, 50), "yellow": (240, 200, 20)}


def _world(root: Path, n: int = 16) -> list[dict]:
    """Solid-colour images; "What color is it?" is answerable only from the image."""
    records = []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        Image.new("RGB", (64, 64), COLOURS[name]).save(root / f"{i}.png")
        turns = [{"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": name}]
        records.append({"id": str(i), "image": f"{i}.png", "conversations": turns, "type": "color"})
    return records


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The `tiny` model trained a few dozen steps on the colour task (a few seconds)."""
    root = tmp_path_factory.mktemp("image_check")
    records = _world(root)
    tokenizer = train_text_tokenizer(["What color is it?", *COLOURS] * 4, vocab_size=300)
    torch.manual_seed(0)
    model = build_model("tiny", tokenizer=tokenizer, vet_impl="reference")
    processor = OvisProcessor.from_model_config(model.config, tokenizer)
    collate = OvisCollator.from_processor(processor, "right")
    batch = model_inputs(
        collate([processor(r["conversations"], [root / r["image"]], mode="train") for r in records])
    )
    before = image_check(model, processor, records, root)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, processor, records, root, before


def test_a_model_that_reads_the_image_has_a_positive_gap(trained):
    model, processor, records, root, before = trained
    after = image_check(model, processor, records, root, batch_size=5)  # batches cross record boundaries
    assert after["n"] == len(records) and after["answer_tokens"] >= len(records)
    assert after["own"] < before["own"]
    assert after["gap"] > 0.5, format_image_check(after)
    assert after["accuracy"]["color"] == 1.0
    assert after["accuracy_mismatched"]["overall"] < 0.5  # the neighbour's image has another colour
    assert "gap +" in format_image_check(after)


def test_the_same_model_given_one_constant_image_has_no_gap(trained):
    model, processor, records, root, _ = trained
    constant = [{**r, "image": records[0]["image"]} for r in records]
    result = image_check(model, processor, constant, root)
    assert result["gap"] == pytest.approx(0.0, abs=1e-6)
    assert result["accuracy"]["overall"] == pytest.approx(0.25)  # right only where the colour matches


def test_a_model_whose_visual_tokens_ignore_the_image_has_no_gap(trained):
    model, processor, records, root, _ = trained
    blind = build_model("tiny", tokenizer=processor.tokenizer, vet_impl="reference")
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():
        blind.connector.head[0].weight.zero_()  # every visual token: the same distribution
    result = image_check(blind, processor, records, root)
    assert result["gap"] == pytest.approx(0.0, abs=1e-5)


def test_training_mode_is_restored_and_bad_inputs_are_rejected(trained):
    model, processor, records, root, _ = trained
    model.train()
    image_check(model, processor, records[:2], root)
    assert model.training
    with pytest.raises(ValueError, match="at least 2"):
        image_check(model, processor, records[:1], root)
    with pytest.raises(ValueError, match="shift"):
        image_check(model, processor, records[:4], root, shift=4)
