"""Token layouts for model tests that build input ids by hand."""

from __future__ import annotations


def image_span(config, crops: int = 1) -> list[int]:
    """Token ids of one image with ``crops`` crops in a 1×crops grid (transformers-Ovis2 layout)."""
    atoms = [config.image_atom_id] * config.visual_tokens_per_crop
    start, grid, col, _row, end = config.indicator_token_ids
    ids = [start, *atoms, grid]
    if crops > 1:
        for c in range(crops - 1):
            ids += atoms + ([col] if c < crops - 2 else [])
    return [*ids, end]
