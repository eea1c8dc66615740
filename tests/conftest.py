"""Shared fixtures: tiny random models built from the same presets users build."""

from __future__ import annotations

import pytest
import torch

from openovis import build_model


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_model():
    """The `tiny` preset, fp32, eval mode, reference VET path (the fused op is tested on its own)."""
    return build_model("tiny", vet_impl="reference").eval()


def image_span(config, crops: int = 1) -> list[int]:
    """Token ids of one image with ``crops`` crops in a 1×crops grid (transformers-Ovis2 layout)."""
    atoms = [config.image_atom_id] * config.visual_tokens_per_crop
    start, grid, col, _row, end = config.indicator_token_ids
    ids = [start, *atoms, grid]
    if crops > 1:
        for c in range(crops - 1):
            ids += atoms + ([col] if c < crops - 2 else [])
    return [*ids, end]
