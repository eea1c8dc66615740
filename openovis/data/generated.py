"""Datasets generated from code, by name: what a recipe's ``generate: {source, config}`` refers to.

A generator writes a whole dataset into a folder (its image root) from a typed, validated config.
`generate_if_changed` is the one way to make such a folder: it writes ``generated.json`` (source
and config) after the generator finishes, and regenerates when the folder holds no such record,
one of another source or config, or an interrupted run's files::

    GENERATORS["shapes"]                                  Shapes World (DESIGN §5b), `ShapesConfig`
    generate_if_changed("data/shapes", "shapes", {"seed": 0})   -> True (written) | False (up to date)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openovis.data.shapes import ShapesConfig, generate_shapes_world

RECORD = "generated.json"
"""File in a generated folder naming the source and config it was made with."""


@dataclass(frozen=True)
class DataGenerator:
    """A registered dataset generator."""

    config: type
    """Dataclass of its settings, validated on construction."""
    generate: Callable[..., Any]
    """``generate(folder, config, progress=...)``: writes the dataset into ``folder``."""
    description: str
    """One line for listings."""


GENERATORS: dict[str, DataGenerator] = {
    "shapes": DataGenerator(
        ShapesConfig,
        generate_shapes_world,
        "Shapes World: coloured shapes with captions, descriptions, QA and test splits",
    ),
}
"""Registered generators by name."""


def generator_config(source: str, config: dict[str, Any]) -> Any:
    """The validated config object of generator ``source``.

    Raises:
        ValueError: Unknown source, unknown config field or a bad value; the message starts with
            ``source`` or ``config.<field>``.
    """
    if source not in GENERATORS:
        raise ValueError(f"source: unknown generator {source!r}; registered: {', '.join(GENERATORS)}")
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a mapping of settings, got {type(config).__name__}")
    cls = GENERATORS[source].config
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(f"config.{unknown[0]}: unknown setting of {source}; known: {', '.join(known)}")
    try:
        return cls(**config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config.{e}") from None


def _recorded(folder: Path) -> tuple[str, Any] | None:
    """The source and config a folder was generated with, if it says so readably."""
    try:
        record = json.loads((folder / RECORD).read_text())
        return record["source"], generator_config(record["source"], record["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def generate_if_changed(
    folder: str | Path, source: str, config: dict[str, Any], progress: bool = True
) -> bool:
    """Generates dataset ``source`` with ``config`` into ``folder`` unless it is already there.

    Args:
        folder: The dataset's folder (created if needed).
        source: A name in `GENERATORS`.
        config: The generator's settings (plain data, e.g. from a recipe).
        progress: Show the generator's progress bar.

    Returns:
        True when the dataset was (re)generated, False when the folder was up to date.
    """
    folder = Path(folder)
    wanted = generator_config(source, config)
    if _recorded(folder) == (source, wanted):
        return False
    (folder / RECORD).unlink(missing_ok=True)  # an interrupted generation leaves no record
    GENERATORS[source].generate(folder, wanted, progress=progress)
    record = {"source": source, "config": dataclasses.asdict(wanted)}
    (folder / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return True
