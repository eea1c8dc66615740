"""Shapes World as the experiments use it: its settings, its test splits and its preparation.

The experiments train on a generated Shapes World and evaluate on its two test splits; a workspace
holds one full-size copy and one quick (smaller) copy, made by `prepare_shapes_world`, which only
(re)generates when the folder was made with other settings (`openovis.data.generated`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SOURCE = "shapes"
"""The generator name (`openovis.data.generated.GENERATORS`) of the experiments' data."""

SPLITS = {"in-distribution": "qa_test_id.json", "held-out composition": "qa_test_heldout.json"}
"""Evaluation splits of Shapes World: display name -> file in the data folder."""

QUICK_SHAPES = {"n_train": 1000, "n_test": 70}
"""Shapes World settings of quick runs (smoke runs of the whole pipeline, not measurements)."""


def shapes_settings(quick: bool, seed: int = 0) -> dict[str, Any]:
    """The `ShapesConfig` fields of a workspace: the defaults, smaller when ``quick``."""
    return {"seed": seed, **(QUICK_SHAPES if quick else {})}


def prepare_shapes_world(folder: Path, settings: dict[str, Any], progress: bool = True) -> None:
    """Generates Shapes World into ``folder`` unless it is already there with these settings."""
    from openovis.data.generated import generate_if_changed

    generate_if_changed(folder, SOURCE, settings, progress=progress)


def in_distribution_images(folder: Path, n: int) -> list[Path]:
    """The first ``n`` in-distribution test images of a generated Shapes World."""
    return sorted((folder / "images" / "test_id").glob("*.png"))[:n]
