"""Dataset readers, mixture specs and the map-style datasets that feed training.

Formats (docs/data-formats.md):

- conversation: a JSON list or JSONL of ``{"id", "image": path | [paths], "conversations": [turns]}``
  (LLaVA ``from``/``value`` turns, or ``messages`` with ``role``/``content``);
- caption: JSONL / JSON list / parquet rows ``{"image": path, "caption": text}``.

Image paths are relative to the source's image root and may not leave it (``..``, absolute paths and
symlinks pointing outside are rejected).

Skips: records are parsed and validated when the file is read (cheap checks: structure, roles, turn
order, text encoding, placeholder count, path shape); images are opened lazily in ``__getitem__``.
Either way a bad record stays at its index and ``__getitem__`` returns a
:class:`~openovis.skips.SkippedSample` for it, so every skip is counted through the same path
(the collator drops it and reports it in the batch). ``dataset.record_problems`` holds the
load-time counts, ``dataset.skips`` the counts of this process's ``__getitem__`` calls.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from torch.utils.data import Dataset

from openovis.constants import IMAGE_PLACEHOLDER
from openovis.processing.conversation import Message, check_text, check_turn_order, normalize_messages
from openovis.processing.image import load_image
from openovis.skips import SkipCounter, SkippedSample, SkipReason, SkipSample

logger = logging.getLogger(__name__)

Format = Literal["conversation", "caption"]
_SUFFIXES = (".json", ".jsonl", ".parquet")


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class DataSource:
    """One data file of a mixture.

    Attributes:
        path: The data file (``.json``, ``.jsonl`` or ``.parquet``).
        format: ``conversation`` (labels on assistant turns) or ``caption`` (caption template).
        image_root: Directory image paths are relative to (default: the data file's directory).
        weight: Times each record appears per mixture epoch; fractions take a seeded subset
            (2.5 = every record twice plus half of them once more).
        max_samples: Use only the first ``max_samples`` records of the file (None: all).
        name: A label for logs (default: the file name).
    """

    path: str
    format: Format = "conversation"
    image_root: str | None = None
    weight: float = 1.0
    max_samples: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise ValueError(f"path: must be a non-empty path, got {self.path!r}")
        if self.format not in get_args(Format):
            raise ValueError(f"format: must be one of {get_args(Format)}, got {self.format!r}")
        if self.image_root is not None and not isinstance(self.image_root, (str, os.PathLike)):
            raise ValueError(f"image_root: must be a path, got {self.image_root!r}")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"weight: must be a number > 0, got {weight!r}")
        max_samples = self.max_samples
        if max_samples is not None and (
            isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
        ):
            raise ValueError(f"max_samples: must be a positive integer or None, got {max_samples!r}")

    @property
    def label(self) -> str:
        """The name used in logs."""
        return self.name or Path(self.path).name

    @property
    def resolved_image_root(self) -> Path:
        """The image root (the data file's directory when not given)."""
        return Path(self.image_root) if self.image_root is not None else Path(self.path).parent

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> DataSource:
        """Parses one source from a plain dict (e.g. a YAML recipe); unknown keys are an error.

        Args:
            data: The source's fields.
            base_dir: Relative ``path`` / ``image_root`` are taken relative to this (e.g. the recipe's directory).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"sources: each source must be a mapping, got {data!r}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ValueError(f"{key}: unknown data source key (known: {sorted(known)})")
        if "path" not in data:
            raise ValueError("path: every data source needs a path")
        values = dict(data)
        if base_dir is not None:
            for key in ("path", "image_root"):
                if isinstance(values.get(key), (str, os.PathLike)):
                    values[key] = str(Path(base_dir) / values[key])
        return cls(**values)


@dataclass(frozen=True)
class MixtureSpec:
    """A weighted mixture of data sources.

    Attributes:
        sources: The sources, in order.
        seed: Seed of the fractional-weight subsets and of the mixture's shuffle.
    """

    sources: tuple[DataSource, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources: a mixture needs at least one source")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: must be an integer, got {self.seed!r}")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | Sequence[Any], base_dir: str | os.PathLike[str] | None = None
    ) -> MixtureSpec:
        """Parses ``{"sources": [...], "seed": 0}`` (or a bare list of sources); unknown keys are an error."""
        if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
            data = {"sources": data}
        if not isinstance(data, Mapping):
            raise ValueError(f"mixture: expected a mapping or a list of sources, got {data!r}")
        for key in data:
            if key not in ("sources", "seed"):
                raise ValueError(f"{key}: unknown mixture key (known: ['seed', 'sources'])")
        sources = data.get("sources")
        if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
            raise ValueError(f"sources: expected a list of sources, got {sources!r}")
        parsed = tuple(DataSource.from_dict(s, base_dir) for s in sources)
        return cls(parsed, data.get("seed", 0))


# --------------------------------------------------------------------------- reading files


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SkipSample(SkipReason.MALFORMED_RECORD, f"{where}: {err}") from err


def _read_jsonl(text: str) -> list[Any]:
    """One record per non-empty line; a bad line becomes a :class:`SkipSample` in its place."""
    records: list[Any] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(_loads(line, f"line {n}"))
        except SkipSample as skip:
            records.append(skip)
    return records


def _read_parquet(path: Path) -> list[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        return pq.read_table(path).to_pylist()
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError(f"{path}: reading parquet needs pyarrow or pandas (pip install pyarrow)") from err
    return pd.read_parquet(path).to_dict("records")


def read_records(path: str | os.PathLike[str]) -> list[Any]:
    """Reads a data file into raw records (``SkipSample`` entries where a JSONL line is unparseable).

    Text is decoded as UTF-8 with ``surrogateescape``: invalid bytes survive as lone surrogates and
    the record holding them is skipped (INVALID_TEXT) instead of failing the whole file.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Unknown extension, or a ``.json`` file that is neither a JSON list nor JSONL.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"{path}: unknown data file type {suffix!r} (expected one of {_SUFFIXES})")
    if suffix == ".parquet":
        return _read_parquet(path)
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if suffix == ".jsonl":
        return _read_jsonl(text)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("{"):  # JSON Lines saved as .json
            return _read_jsonl(text)
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(records, list):
        raise ValueError(
            f"{path}: a .json data file must hold a list of records, got {type(records).__name__}"
        )
    return records


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Sample:
    """A validated record, images not yet opened.

    Attributes:
        id: The record's id (its index when it has none).
        images: Image paths relative to the image root, in placeholder order.
        messages: The conversation (conversation format).
        caption: The caption (caption format).
    """

    id: str
    images: tuple[str, ...]
    messages: tuple[Message, ...] = ()
    caption: str | None = None


_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative_path(rel: Any) -> str:
    """Lexical check of an image path: relative, no way up out of the root.

    Raises:
        SkipSample: MALFORMED_RECORD (not a non-empty string) or PATH_ESCAPE.
    """
    rel = check_text(rel, "image path")
    if not rel or "\x00" in rel:
        raise SkipSample(SkipReason.MALFORMED_RECORD, f"bad image path {rel!r}")
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(rel):
        raise SkipSample(SkipReason.PATH_ESCAPE, f"absolute path {rel!r}")
    normalized = os.path.normpath(rel.replace("\\", "/"))
    if normalized == ".." or normalized.startswith("../"):
        raise SkipSample(SkipReason.PATH_ESCAPE, f"{rel!r} leaves the image root")
    return rel


def resolve_image_path(root: str | os.PathLike[str], rel: str) -> Path:
    """``root / rel`` with symlinks resolved; it must stay inside ``root``.

    Raises:
        SkipSample: PATH_ESCAPE (lexically, or through a symlink) or MALFORMED_RECORD.
    """
    real_root = Path(root).resolve()
    real = (real_root / check_relative_path(rel)).resolve()
    if not real.is_relative_to(real_root):
        raise SkipSample(SkipReason.PATH_ESCAPE, f"{rel!r} resolves outside the image root")
    return real


def _image_list(raw: Mapping[str, Any]) -> tuple[str, ...]:
    value = raw.get("image", raw.get("images"))
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence):
        raise SkipSample(
            SkipReason.MALFORMED_RECORD, f"image: expected a path or a list, got {type(value).__name__}"
        )
    return tuple(check_relative_path(v) for v in value)


def parse_record(raw: Any, fmt: Format, index: int) -> Sample:
    """Validates one raw record (no file access).

    Raises:
        SkipSample: Anything wrong with the record.
    """
    if isinstance(raw, SkipSample):
        raise raw
    if not isinstance(raw, Mapping):
        raise SkipSample(SkipReason.MALFORMED_RECORD, f"record is a {type(raw).__name__}, not an object")
    record_id = check_text(str(raw.get("id", index)), "id")
    images = _image_list(raw)
    if fmt == "caption":
        if len(images) != 1:
            raise SkipSample(
                SkipReason.MALFORMED_RECORD, f"a caption record needs one image, got {len(images)}"
            )
        return Sample(record_id, images, caption=check_text(raw.get("caption"), "caption"))
    turns = raw.get("conversations", raw.get("messages"))
    if turns is None:
        raise SkipSample(SkipReason.MALFORMED_RECORD, "no 'conversations' (or 'messages')")
    messages = normalize_messages(turns)
    check_turn_order(messages, "train")
    placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    if placeholders != len(images):
        raise SkipSample(
            SkipReason.PLACEHOLDER_MISMATCH,
            f"{placeholders} {IMAGE_PLACEHOLDER} placeholders, {len(images)} images",
        )
    return Sample(record_id, images, messages=tuple(messages))


# --------------------------------------------------------------------------- datasets


class OvisDataset(Dataset):
    """One data source as a map-style dataset of processed samples (images opened lazily).

    ``__getitem__`` returns the processor's dict, or a :class:`SkippedSample` for a bad record.

    Args:
        source: The data source.
        processor: An :class:`~openovis.processing.processor.OvisProcessor`.
        max_length: Truncation length (default: the processor's).
    """

    def __init__(self, source: DataSource, processor: Any, max_length: int | None = None) -> None:
        self.source = source
        self.processor = processor
        self.max_length = max_length
        self.image_root = source.resolved_image_root
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"{source.label}: image root not found: {self.image_root}")
        raw = read_records(source.path)[: source.max_samples]
        self.entries: list[Sample | SkipSample] = [self._parse(r, i) for i, r in enumerate(raw)]
        self.record_problems = SkipCounter()
        for entry in self.entries:
            if isinstance(entry, SkipSample):
                self.record_problems.record_skip(entry.reason, entry.detail, log=False)
            else:
                self.record_problems.record_ok()
        if self.record_problems.skipped:
            logger.warning("%s: %s records at load", source.label, self.record_problems.summary())
        self.skips = SkipCounter()

    def _parse(self, raw: Any, index: int) -> Sample | SkipSample:
        try:
            return parse_record(raw, self.source.format, index)
        except SkipSample as skip:
            return skip

    def __len__(self) -> int:
        return len(self.entries)

    def _skip(self, index: int, skip: SkipSample) -> SkippedSample:
        self.skips.record_skip(skip.reason, f"{self.source.label}[{index}]: {skip.detail}")
        return SkippedSample(index, skip.reason, skip.detail)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        entry = self.entries[index]
        if isinstance(entry, SkipSample):
            return self._skip(index, entry)
        try:
            images = [load_image(resolve_image_path(self.image_root, rel)) for rel in entry.images]
            if self.source.format == "caption":
                out = self.processor(entry.caption, images, mode="caption", max_length=self.max_length)
            else:
                out = self.processor(list(entry.messages), images, mode="train", max_length=self.max_length)
        except SkipSample as skip:
            return self._skip(index, skip)
        self.skips.record_ok()
        return out


class MixtureDataset(Dataset):
    """Several datasets mixed by weight, in a fixed order determined by ``seed``.

    Each dataset contributes ``weight * len(dataset)`` items: whole passes, plus a seeded subset for
    the fractional part; the combined list is shuffled with the same seed.

    Args:
        datasets: The parts.
        weights: One per part, > 0 (default: all 1).
        seed: Makes the subsets and the order reproducible.
    """

    def __init__(
        self, datasets: Sequence[Dataset], weights: Sequence[float] | None = None, seed: int = 0
    ) -> None:
        weights = [1.0] * len(datasets) if weights is None else list(weights)
        if len(weights) != len(datasets):
            raise ValueError(f"weights: {len(weights)} weights for {len(datasets)} datasets")
        self.datasets = list(datasets)
        rng = np.random.default_rng(seed)
        parts = [
            self._draw(i, len(ds), w, rng) for i, (ds, w) in enumerate(zip(datasets, weights, strict=True))
        ]
        table = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
        if len(table) == 0:
            raise ValueError("mixture: the datasets and weights give no samples")
        self.table = table[rng.permutation(len(table))]  # [N, 2]: (dataset, index)

    @staticmethod
    def _draw(part: int, n: int, weight: float, rng: np.random.Generator) -> np.ndarray:
        if weight <= 0:
            raise ValueError(f"weights: must be > 0, got {weight}")
        whole, frac = int(weight), weight - int(weight)
        chunks = [np.arange(n)] * whole + [np.sort(rng.choice(n, size=round(frac * n), replace=False))]
        idx = np.concatenate(chunks).astype(np.int64)
        return np.stack([np.full_like(idx, part), idx], axis=1)  # [n_part, 2]

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> Any:
        part, inner = self.table[index]
        return self.datasets[int(part)][int(inner)]

    @property
    def record_problems(self) -> SkipCounter:
        """Load-time record counts of all parts that have them."""
        return SkipCounter().merge(d.record_problems for d in self.datasets if hasattr(d, "record_problems"))

    @property
    def skips(self) -> SkipCounter:
        """This process's ``__getitem__`` counts of all parts that have them."""
        return SkipCounter().merge(d.skips for d in self.datasets if hasattr(d, "skips"))


def build_mixture(
    spec: MixtureSpec | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    processor: Any,
    max_length: int | None = None,
    seed: int | None = None,
) -> MixtureDataset:
    """One :class:`OvisDataset` per source, mixed by the sources' weights.

    Args:
        spec: A :class:`MixtureSpec`, or the plain dict / list of source dicts it parses from.
        processor: The :class:`~openovis.processing.processor.OvisProcessor`.
        max_length: Truncation length (default: the processor's).
        seed: Overrides the spec's seed.
    """
    if not isinstance(spec, MixtureSpec):
        spec = MixtureSpec.from_dict(spec)
    datasets = [OvisDataset(source, processor, max_length) for source in spec.sources]
    return MixtureDataset(datasets, [s.weight for s in spec.sources], spec.seed if seed is None else seed)
