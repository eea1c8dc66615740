"""Batches processed samples: pads text, concatenates crops, drops skipped samples and counts them.

Per sample (from :class:`~openovis.processing.processor.OvisProcessor`)::

    input_ids [L_i]  attention_mask [L_i]  labels [L_i] (training)  pixel_values [C_i, 3, S, S] | None
    grid_thw [n_i, 3] (NaViT models only; then pixel_values are packed rows [N_i, C·T·p²])

Batch::

    input_ids [B, L]  attention_mask [B, L]  labels [B, L]   L = max L_i (rounded up to pad_to_multiple_of)
    pixel_values [sum C_i, 3, S, S] | None    crops in order of appearance, batch-major
    grid_thw     [sum n_i, 3], only when the samples have it (NaViT: pixel_values [sum N_i, C·T·p²])
    grids        list of (rows, cols) per image, same order
    num_samples  int, samples given to the collator, skipped ones included
    skipped      {reason phrase: count} of the skipped ones

Training pads on the right; generation pads on the left so that every prompt ends at the last
column. Padded positions have ``attention_mask`` 0 and label ``IGNORE_INDEX``. A batch in which
every sample was skipped has ``B = 0``; the training loop skips it (after counting it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from openovis.constants import IGNORE_INDEX
from openovis.skips import SkippedSample

PaddingSide = Literal["right", "left"]

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "labels", "pixel_values")
"""Batch keys the model consumes; the others are bookkeeping."""


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a batch to pass to the model (``model(**model_inputs(batch))``)."""
    inputs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}
    if batch.get("grid_thw") is not None:  # NaViT models (Ovis2.5): the grids of the packed rows
        inputs["grid_thw"] = batch["grid_thw"]
    if "position_ids" in batch:  # packed rows (processing/packing.py): transformers keeps the samples
        inputs.pop("attention_mask", None)  # apart by their position ids only with no 2-D mask and no cache
        inputs |= {"position_ids": batch["position_ids"], "use_cache": False}
    return inputs


def pad_sequences(
    rows: Sequence[torch.Tensor], value: int, side: PaddingSide, length: int | None = None
) -> torch.Tensor:
    """Stacks 1-D tensors into ``[B, length]``, padding each on ``side`` with ``value``."""
    length = max((len(r) for r in rows), default=0) if length is None else length
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if side == "right":
            out[i, : len(row)] = row
        else:
            out[i, length - len(row) :] = row
    return out


class OvisCollator:
    """Collates processed samples, dropping :class:`~openovis.skips.SkippedSample` entries.

    Args:
        pad_token_id: Id written into padded ``input_ids`` positions.
        padding_side: ``"right"`` for training, ``"left"`` for generation.
        pad_to_multiple_of: Round the padded length up to a multiple of this (None: no rounding).
    """

    def __init__(
        self, pad_token_id: int, padding_side: PaddingSide = "right", pad_to_multiple_of: int | None = None
    ) -> None:
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side: must be 'right' or 'left', got {padding_side!r}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of: must be >= 1, got {pad_to_multiple_of}")
        self.pad_token_id = int(pad_token_id)
        self.padding_side: PaddingSide = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    @classmethod
    def from_processor(
        cls, processor: Any, padding_side: PaddingSide = "right", **kwargs: Any
    ) -> OvisCollator:
        """A collator using the processor's pad id."""
        return cls(processor.pad_token_id, padding_side, **kwargs)

    def _length(self, samples: Sequence[Mapping[str, Any]]) -> int:
        length = max((len(s["input_ids"]) for s in samples), default=0)
        m = self.pad_to_multiple_of
        return -(-length // m) * m if m else length

    def __call__(self, samples: Sequence[Mapping[str, Any] | SkippedSample | None]) -> dict[str, Any]:
        """Collates a list of samples; see the module docstring for the keys."""
        kept = [s for s in samples if s is not None and not isinstance(s, SkippedSample)]
        skipped = Counter(s.reason.value for s in samples if isinstance(s, SkippedSample))
        if any(s is None for s in samples):
            skipped["unknown"] += sum(s is None for s in samples)
        length = self._length(kept)
        side = self.padding_side
        batch: dict[str, Any] = {
            "input_ids": pad_sequences([s["input_ids"] for s in kept], self.pad_token_id, side, length),
            "attention_mask": pad_sequences([s["attention_mask"] for s in kept], 0, side, length),
        }
        with_labels = [s for s in kept if s.get("labels") is not None]
        if with_labels and len(with_labels) != len(kept):
            raise ValueError("cannot batch samples with and without labels together")
        if with_labels:
            batch["labels"] = pad_sequences([s["labels"] for s in kept], IGNORE_INDEX, side, length)
        crops = [s["pixel_values"] for s in kept if s.get("pixel_values") is not None]
        batch["pixel_values"] = torch.cat(crops) if crops else None  # [sum C_i, 3, S, S]
        grids_thw = [s["grid_thw"] for s in kept if s.get("grid_thw") is not None]
        if grids_thw:
            batch["grid_thw"] = torch.cat(grids_thw)  # [sum n_i, 3]
        batch["grids"] = [tuple(g) for s in kept for g in s.get("grids", ())]
        batch["num_samples"] = len(samples)
        batch["skipped"] = dict(skipped)
        return batch
