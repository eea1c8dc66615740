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
