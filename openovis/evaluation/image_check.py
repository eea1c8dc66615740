"""Does the model read the image? Answer loss with each question's own image vs a mismatched one.

A model that answers from the answer prior (the text alone) scores the same whatever image comes
with the question; a model that reads the image does better with its own image. The check runs the
eval set twice, teacher-forced, and compares the mean cross-entropy on the answer tokens::

    own         mean CE (nats/token) of the reference answers, each question with its own image
    mismatched  the same answers, each question given the image of the next record (images rolled by
                one over the set, so every question gets another scene of the same set)
    gap         mismatched - own: > 0 when the model uses the image, ~0 when it ignores it

Answer tokens are the supervised (``gpt``) tokens minus end-of-turn/eos tokens, which every answer
shares. The same forward pass gives teacher-forced exact-match accuracy (every answer token is the
argmax given the reference prefix, which is what greedy decoding produces up to the stop token),
overall and per question type, with the own and with the mismatched images.

Records are conversation records (``{"image", "conversations", "type"?}``, e.g. Shapes World's
``qa_test_id.json``) with exactly one image each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from openovis.constants import IGNORE_INDEX
from openovis.processing.collator import OvisCollator, model_inputs


def _messages(record: dict[str, Any]) -> list[Any]:
    from openovis.data.datasets import normalize_messages

    return list(normalize_messages(record["conversations"]))


def _image(record: dict[str, Any]) -> str:
    image = record.get("image", record.get("images"))
    if isinstance(image, (list, tuple)):
        if len(image) != 1:
            raise ValueError(f"record {record.get('id')}: the image check needs one image per record")
        image = image[0]
    if not isinstance(image, str):
        raise ValueError(f"record {record.get('id')}: no image path")
    return image


@torch.no_grad()
def _answer_stats(
    model: torch.nn.Module,
    processor: Any,
    records: Sequence[dict[str, Any]],
    images: Sequence[Any],
    batch_size: int,
    skip_ids: set[int],
) -> tuple[list[float], list[int], list[bool]]:
    """Per record: summed answer-token CE, answer-token count, teacher-forced exact match."""
    collate = OvisCollator.from_processor(processor, "right")
    device = next(model.parameters()).device
    total, count, correct = [], [], []
    for start in range(0, len(records), batch_size):
        chunk = range(start, min(start + batch_size, len(records)))
        samples = [processor(_messages(records[i]), [images[i]], mode="train") for i in chunk]
        batch = model_inputs(collate(samples))
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits[:, :-1].float()  # [B, L-1, V]
        target = labels[:, 1:]  # [B, L-1]
        mask = target != IGNORE_INDEX
        for token in skip_ids:
            mask &= target != token
        safe = target.clamp(min=0)
        ce = F.cross_entropy(logits.transpose(1, 2), safe, reduction="none")  # [B, L-1]
        total += (ce * mask).sum(1).tolist()
        count += mask.sum(1).tolist()
        supervised = target != IGNORE_INDEX
        hit = (logits.argmax(-1) == safe) | ~supervised  # [B, L-1]
        correct += [bool(row.all()) for row in hit]
    return total, count, correct


def _per_type(
    values: Sequence[float], counts: Sequence[int], types: Sequence[str | None]
) -> dict[str, float]:
    """Mean CE per answer token, per question type."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for v, c, kind in zip(values, counts, types, strict=True):
        sums[kind or "all"][0] += v
        sums[kind or "all"][1] += c
    return {k: s / max(1, c) for k, (s, c) in sorted(sums.items())}


def _accuracy(correct: Sequence[bool], types: Sequence[str | None]) -> dict[str, float]:
    by_type: dict[str, list[bool]] = defaultdict(list)
    for ok, kind in zip(correct, types, strict=True):
        by_type[kind or "all"].append(ok)
    out = {k: sum(v) / len(v) for k, v in sorted(by_type.items())}
    out["overall"] = sum(correct) / max(1, len(correct))
    return out


def image_check(
    model: torch.nn.Module,
    processor: Any,
    records: Sequence[dict[str, Any]],
    image_root: str | Path = ".",
    batch_size: int = 64,
    shift: int = 1,
) -> dict[str, Any]:
    """Answer loss with each question's own image vs a mismatched one.

    Args:
        model: An `OvisForConditionalGeneration` (put in eval mode here, restored after).
        processor: Its `OvisProcessor`.
        records: Conversation records with one image each, ending with the reference answer.
        image_root: Folder the records' image paths are relative to.
        batch_size: Records per forward pass.
        shift: Record i gets the image of record ``(i + shift) % n`` in the mismatched pass.

    Returns:
        ``own``, ``mismatched``, ``gap`` (nats per answer token), ``own_per_type`` and
        ``gap_per_type`` (the same per question type), ``answer_tokens``, ``n`` and the teacher-forced exact-match ``accuracy`` / ``accuracy_mismatched`` (per type + ``overall``).
    """
    if len(records) < 2:
        raise ValueError("image check: need at least 2 records to mismatch images")
    if shift % len(records) == 0:
        raise ValueError(f"shift: {shift} maps every record to its own image")
    root = Path(image_root)
    images = [root / _image(r) for r in records]
    rolled = [images[(i + shift) % len(images)] for i in range(len(images))]
    skip = set(processor.stop_token_ids)
    was_training = model.training
    model.eval()
    try:
        own, n_tok, ok = _answer_stats(model, processor, records, images, batch_size, skip)
        mis, _, ok_mis = _answer_stats(model, processor, records, rolled, batch_size, skip)
    finally:
        model.train(was_training)
    types = [r.get("type") for r in records]
    own_type, mis_type = _per_type(own, n_tok, types), _per_type(mis, n_tok, types)
    tokens = max(1, sum(n_tok))
    return {
        "own": sum(own) / tokens,
        "mismatched": sum(mis) / tokens,
        "gap": (sum(mis) - sum(own)) / tokens,
        "gap_per_type": {k: mis_type[k] - own_type[k] for k in own_type},
        "own_per_type": own_type,
        "answer_tokens": sum(n_tok),
        "n": len(records),
        "accuracy": _accuracy(ok, types),
        "accuracy_mismatched": _accuracy(ok_mis, types),
    }


def format_image_check(result: dict[str, Any]) -> str:
    """One line: ``own 0.512  mismatched 0.873  gap +0.361  acc 0.74 (mismatched 0.41)``."""
    return (
        f"own {result['own']:.3f}  mismatched {result['mismatched']:.3f}  gap {result['gap']:+.3f}  "
        f"acc {result['accuracy']['overall']:.3f} (mismatched {result['accuracy_mismatched']['overall']:.3f})"
    )
