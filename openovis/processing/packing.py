"""Sequence packing: several variable-length samples in one row, attending only within themselves.

Padding a batch to its longest sample wastes compute on pad tokens (with images of 1–10 crops, a
sample is 300–3,000 tokens long). `PackingCollator` instead lays samples end to end, in order, into
rows of at most ``max_length`` tokens (next-fit: a sample that does not fit opens a new row; one
longer than ``max_length`` gets a row of its own), and restarts ``position_ids`` at 0 for each sample::

    row:           [ s1 s1 s1 s1 | s2 s2 s2 | s3 s3 | pad pad ]
    position_ids:  [ 0  1  2  3  | 0  1  2  | 0  1  | 0   1   ]
    labels:        [ -  …        | -  …     | -  …  | -   -   ]   (a sample's first label is ignored)

transformers keeps packed samples apart from ``position_ids`` when no 2-D attention mask is given:
flash-attention-2 turns them into per-sample sequence lengths (no mask at all), SDPA/eager/flex into a
block-diagonal causal mask (``masking_utils.find_packed_sequence_indices``). So `model_inputs` passes
``position_ids`` and drops ``attention_mask`` for a packed batch. RoPE positions restart per sample,
so every sample sees exactly what it would see alone (tests/processing/test_packing.py). The label at
each sample's first position is set to ignored: after the LLM's shift it would be the target of the
previous sample's last token (alone, it is never a target).

Batch keys: as `openovis.data.collator.OvisCollator` (``input_ids``, ``attention_mask`` = 1 on real
tokens, so token counts stay right, ``labels``, ``pixel_values`` in order of appearance, ``grids``,
``num_samples``, ``skipped``), plus ``position_ids [R, L]`` and ``sample_lengths`` (per row, the
lengths of its samples).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from openovis.constants import IGNORE_INDEX
from openovis.skips import SkippedSample


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Next-fit packing of sample indices (in order) into rows of at most ``max_length`` tokens."""
    rows: list[list[int]] = []
    used = max_length + 1  # forces a first row
    for i, n in enumerate(lengths):
        if used + n > max_length or not rows:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


class PackingCollator:
    """Collates processed samples into packed rows (module docstring).

    Args:
        pad_token_id: Id written into the padding at the end of a row.
        max_length: Most tokens per row (a longer sample gets a row of its own).
        pad_to_multiple_of: Round the row length up to a multiple of this (None: no rounding).
    """

    def __init__(self, pad_token_id: int, max_length: int, pad_to_multiple_of: int | None = None) -> None:
        if max_length < 1:
            raise ValueError(f"max_length: must be >= 1, got {max_length}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of: must be >= 1, got {pad_to_multiple_of}")
        self.pad_token_id = int(pad_token_id)
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of

    @classmethod
    def from_processor(cls, processor: Any, max_length: int, **kwargs: Any) -> PackingCollator:
        return cls(processor.pad_token_id, max_length, **kwargs)

    def __call__(self, samples: Sequence[Mapping[str, Any] | SkippedSample | None]) -> dict[str, Any]:
        kept = [s for s in samples if s is not None and not isinstance(s, SkippedSample)]
        skipped = Counter(s.reason.value for s in samples if isinstance(s, SkippedSample))
        if any(s is None for s in samples):
            skipped["unknown"] += sum(s is None for s in samples)
        labelled = [s.get("labels") is not None for s in kept]
        if any(labelled) and not all(labelled):
            raise ValueError("cannot batch samples with and without labels together")
        lengths = [len(s["input_ids"]) for s in kept]
        rows = pack_rows(lengths, self.max_length)
        length = max((sum(lengths[i] for i in row) for row in rows), default=0)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        shape = (len(rows), length)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros(shape, dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                s, n = kept[i], lengths[i]
                input_ids[r, at : at + n] = s["input_ids"]
                attention_mask[r, at : at + n] = 1
                position_ids[r, at : at + n] = torch.arange(n)
                if labelled and labelled[0]:
                    labels[r, at : at + n] = s["labels"]
                    labels[r, at] = IGNORE_INDEX  # would be the previous sample's last target
                at += n
            position_ids[r, at:] = torch.arange(length - at)  # the padding is a segment of its own
        batch: dict[str, Any] = {
            "input_ids": input_ids,  # [R, L]
            "attention_mask": attention_mask,  # [R, L], 1 on real tokens (for counting; not passed on)
            "position_ids": position_ids,  # [R, L], restarting at every sample
        }
        if labelled and labelled[0]:
            batch["labels"] = labels  # [R, L]
        crops = [s["pixel_values"] for s in kept if s.get("pixel_values") is not None]
        batch["pixel_values"] = torch.cat(crops) if crops else None  # [sum C_i, 3, S, S]
        grids_thw = [s["grid_thw"] for s in kept if s.get("grid_thw") is not None]
        if grids_thw:  # NaViT: packed rows of every image, in the same order
            batch["grid_thw"] = torch.cat(grids_thw)  # [sum n_i, 3]
        batch["grids"] = [tuple(g) for s in kept for g in s.get("grids", ())]
        batch["sample_lengths"] = [[lengths[i] for i in row] for row in rows]
        batch["num_samples"] = len(samples)
        batch["skipped"] = dict(skipped)
        return batch
