"""The Ovis2.5 golden fixture (tests/fixtures/official/ovis25) and the inputs its script made."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official" / "ovis25"
META = json.loads((FIXTURES / "meta.json").read_text())
IMAGE_SIZES = [(1, 1), (3, 50), (37, 100), (100, 37), (640, 480), (448, 1344)]
"""Heights x widths of the fixture's test images; an image's seed is its index here."""


def make_image(h: int, w: int, seed: int) -> Image.Image:
    """The fixture script's deterministic test image (tests/fixtures/official/make_fixtures.py)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    img = np.stack([255 * yy, 255 * xx, 255 * (0.5 + 0.5 * np.sin(7 * xx + 5 * yy))], axis=-1)
    img = img + rng.randint(-20, 21, size=img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def sha(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's values as little-endian fp32 (how the fixture stores pixel hashes)."""
    return hashlib.sha256(np.ascontiguousarray(t.numpy().astype("<f4")).tobytes()).hexdigest()
