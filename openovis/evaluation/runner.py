"""`openovis eval`: batched greedy answers over a test set, scored overall and per question type.

Inputs:
- the conversation format (a JSON list or JSONL): the last ``human`` turn is the question; a final
  ``gpt`` turn, if any, is dropped, and is the reference when the record has no ``answer`` (the
  LLaVA convention); ``answer``, ``type`` and ``options`` give the reference, the question type and
  multiple-choice options; image paths are relative to the image root (default: the data file's
  folder) and may not leave it;
- VLMEvalKit-style TSV: ``index, image (base64), question, answer, A, B, C, D, ... [, category]``;
  an ``image`` cell may hold a JSON list of base64 images, or the ``index`` of an earlier row whose
  image it reuses.

Bad rows never stop an evaluation: each is skipped with a :class:`~openovis.skips.SkipReason`
(a malformed record, a bad role, no reference answer, a placeholder mismatch, a path leaving the
image root, a missing, empty, corrupt or too large image, a prompt too long for the model, ...),
counted in the result's ``skipped`` (reason -> count) and listed in ``skipped_rows``; every other
row is scored. Cheap checks run when the file is read, images are decoded when their row is
processed, just before its batch is generated.

Chance levels come from a ``meta.json`` beside the data (Shapes World writes one).
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from openovis.constants import IMAGE_PLACEHOLDER
from openovis.data.datasets import read_records
from openovis.evaluation.scoring import LETTERS, is_correct, score
from openovis.processing.conversation import check_text, check_turn_order, normalize_messages
from openovis.processing.image import resolve_image_path
from openovis.skips import SkipCounter, SkipReason, SkipSample

logger = logging.getLogger(__name__)

MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
SKIP_KEY = "skip"
"""Key of a record that was refused at load: its :class:`SkipSample`."""


def _skipped_record(index: int, record_id: Any, skip: SkipSample) -> dict[str, Any]:
    return {"index": index, "id": record_id, SKIP_KEY: skip}


def _row_id(row: Any, index: int) -> Any:
    value = row.get("id", index) if isinstance(row, Mapping) else index
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else index


def _reference(value: Any, where: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return check_text(value, where)


def _options(value: Any) -> Mapping[str, str] | list[str] | None:
    if value is None:
        return None
    if isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values()):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str) and all(isinstance(v, str) for v in value):
        return list(value)
    raise SkipSample(
        SkipReason.MALFORMED_RECORD, f"options: expected a mapping or list of strings, got {value!r:.60}"
    )


def _question_type(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise SkipSample(SkipReason.MALFORMED_RECORD, f"type: expected a string, got {type(value).__name__}")


def _check_images(n_images: int, require_images: bool) -> None:
    if require_images and n_images == 0:
        raise SkipSample(SkipReason.NO_IMAGE, "a text-only row in an evaluation that requires images")


def conversation_record(
    row: Any, index: int, image_root: Path, require_images: bool = False
) -> dict[str, Any]:
    """Validates one conversation-format row into an evaluation record (no image is decoded).

    Raises:
        SkipSample: Anything wrong with the row.
    """
    if isinstance(row, SkipSample):  # an unparseable JSONL line
        raise row
    if not isinstance(row, Mapping):
        raise SkipSample(SkipReason.MALFORMED_RECORD, f"record is a {type(row).__name__}, not an object")
    turns = row.get("conversations", row.get("messages"))
    if turns is None:
        raise SkipSample(SkipReason.MALFORMED_RECORD, "no 'conversations' (or 'messages')")
    messages = normalize_messages(turns)
    answer = row.get("answer")
    if messages and messages[-1].role == "assistant":
        final = messages.pop()  # the reference, never shown to the model
        answer = final.content if answer is None else answer
    if answer is None:
        raise SkipSample(SkipReason.MISSING_ANSWER, "no 'answer' and no final gpt turn")
    check_turn_order(messages, "generate")
    paths = row.get("image", row.get("images")) or []
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, Sequence):
        raise SkipSample(
            SkipReason.MALFORMED_RECORD, f"image: expected a path or a list, got {type(paths).__name__}"
        )
    images = [resolve_image_path(image_root, p) for p in paths]
    placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
    if placeholders != len(images):
        raise SkipSample(
            SkipReason.PLACEHOLDER_MISMATCH,
            f"{placeholders} {IMAGE_PLACEHOLDER} placeholders, {len(images)} images",
        )
    _check_images(len(images), require_images)
    return {
        "index": index,
        "id": _row_id(row, index),
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "images": images,
        "answer": _reference(answer, "answer"),
        "type": _question_type(row.get("type")),
        "options": _options(row.get("options")),
    }


def load_conversation_records(
    path: Path, image_root: Path, require_images: bool = False
) -> list[dict[str, Any]]:
    """Reads a conversation-format test set into evaluation records (refused rows carry ``skip``)."""
    records = []
    for i, row in enumerate(read_records(path)):
        try:
            records.append(conversation_record(row, i, image_root, require_images))
        except SkipSample as skip:
            records.append(_skipped_record(i, _row_id(row, i), skip))
    return records


def _decode_base64(cell: str, where: str) -> bytes:
    try:
        return base64.b64decode(cell, validate=True)
    except (binascii.Error, ValueError) as err:
        raise SkipSample(SkipReason.UNREADABLE_IMAGE, f"{where}: bad base64 ({err})") from None


def _tsv_images(cell: Any, seen: Mapping[str, list[bytes]]) -> list[bytes]:
    """The encoded images of a TSV ``image`` cell: base64, a JSON list of them, or an earlier row's index."""
    if cell is None:
        raise SkipSample(SkipReason.MALFORMED_RECORD, "missing column 'image'")
    cell = cell.strip()
    if not cell or cell == "nan":
        raise SkipSample(SkipReason.MISSING_IMAGE, "empty 'image' cell")
    if len(cell) <= 64 and cell in seen:  # VLMEvalKit stores a repeated image once
        return seen[cell]
    if cell.startswith("["):
        try:
            cells = json.loads(cell)
        except ValueError:
            raise SkipSample(SkipReason.UNREADABLE_IMAGE, "image: unreadable JSON list") from None
        if not isinstance(cells, list) or not all(isinstance(c, str) for c in cells):
            raise SkipSample(SkipReason.MALFORMED_RECORD, "image: expected a list of base64 strings")
        return [_decode_base64(c, f"image {k}") for k, c in enumerate(cells)]
    return [_decode_base64(cell, "image")]


def tsv_record(
    row: Mapping[str, Any], index: int, seen: dict[str, list[bytes]], require_images: bool = False
) -> dict[str, Any]:
    """Validates one VLMEvalKit TSV row; its images stay encoded (decoded when the row is processed).

    Raises:
        SkipSample: Missing columns, bad base64, ...
    """
    if None in row:  # more cells than header columns
        raise SkipSample(SkipReason.MALFORMED_RECORD, f"{len(row[None])} cells beyond the header's columns")
    for column in ("question", "answer"):
        if row.get(column) is None:
            raise SkipSample(SkipReason.MALFORMED_RECORD, f"missing column {column!r}")
    images = _tsv_images(row.get("image"), seen) if "image" in row or require_images else []
    if row.get("index") is not None:
        seen[row["index"].strip()] = images
    _check_images(len(images), require_images)
    options = {k: row[k] for k in LETTERS if row.get(k) not in (None, "", "nan")}
    question = check_text(row["question"], "question")
    if options:
        question += "\n" + "\n".join(f"{k}. {v}" for k, v in options.items()) + "\n" + MCQ_SUFFIX
    if IMAGE_PLACEHOLDER not in question:
        question = f"{IMAGE_PLACEHOLDER}\n" * len(images) + question
    return {
        "index": index,
        "id": row.get("index") or index,
        "messages": [{"role": "user", "content": question}],
        "images": images,
        "answer": check_text(row["answer"], "answer"),
        "type": row.get("category") or ("mcq" if options else None),
        "options": options or None,
    }


def load_tsv_records(path: Path, require_images: bool = False) -> list[dict[str, Any]]:
    """Reads a VLMEvalKit-style TSV (base64 images, A/B/C/... option columns); refused rows carry ``skip``."""
    csv.field_size_limit(1 << 30)
    records: list[dict[str, Any]] = []
    seen: dict[str, list[bytes]] = {}
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if not reader.fieldnames or "question" not in reader.fieldnames:
            raise ValueError(
                f"{path}: not a VLMEvalKit TSV (no 'question' column in the header {reader.fieldnames})"
            )
        for i, row in enumerate(reader):
            try:
                records.append(tsv_record(row, i, seen, require_images))
            except SkipSample as skip:
                records.append(_skipped_record(i, row.get("index") or i, skip))
    return records


def load_records(
    path: str | Path, image_root: str | Path | None = None, require_images: bool = False
) -> list[dict[str, Any]]:
    """Reads a test set into evaluation records; a refused row is ``{"index", "id", "skip": SkipSample}``.

    Args:
        path: Conversation JSON/JSONL or VLMEvalKit TSV.
        image_root: Folder image paths are relative to (default: the data file's).
        require_images: Refuse text-only rows (``no image``) instead of asking them without an image.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file as a whole is unreadable (not JSON, a TSV without a header, ...).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"evaluation data {path} does not exist")
    if path.suffix == ".tsv":
        return load_tsv_records(path, require_images)
    return load_conversation_records(path, Path(image_root) if image_root else path.parent, require_images)


def chance_levels(path: str | Path) -> dict[str, float]:
    meta = Path(path).parent / "meta.json"
    if not meta.exists():
        return {}
    return json.loads(meta.read_text()).get("chance_accuracy", {})


def majority_levels(path: str | Path) -> dict[str, float]:
    """Per question type, the accuracy of always giving that type's most common answer in the file.

    The best a model that never looks at the image can do with one answer per type: a stricter
    baseline than the uniform chance of `chance_levels`. Needs records with ``type`` and ``answer``.
    """
    from collections import Counter

    counts: dict[str, Counter] = {}
    for record in load_records(path):
        if SKIP_KEY not in record and record.get("type") is not None and record.get("answer") is not None:
            counts.setdefault(record["type"], Counter())[str(record["answer"]).strip().lower()] += 1
    return {t: c.most_common(1)[0][1] / sum(c.values()) for t, c in sorted(counts.items())}


def evaluate(
    pipeline: Any,
    records: list[dict[str, Any]],
    batch_size: int = 32,
    max_new_tokens: int = 16,
    progress: bool = True,
    chance: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Generates answers for every usable record and scores them; bad records are skipped and counted.

    Each record is processed on its own (:meth:`~openovis.inference.OvisPipeline.prepare`: images
    decoded, prompt length checked) before its batch is generated, so one bad row costs only itself.

    Returns:
        ``{"metrics": {...overall, per_type with chance...}, "predictions": [...], "skipped":
        {reason: count}, "skipped_rows": [{"index", "id", "reason", "detail"}], "seconds": ...}``.
    """
    t0 = time.perf_counter()
    predictions: list[dict[str, Any]] = []
    counter = SkipCounter()
    skipped_rows: list[dict[str, Any]] = []

    def skip(record: dict[str, Any], why: SkipSample) -> None:
        counter.record_skip(why.reason, f"row {record.get('index')} (id {record.get('id')}): {why.detail}")
        skipped_rows.append(
            {
                "index": record.get("index"),
                "id": record.get("id"),
                "reason": why.reason.value,
                "detail": why.detail,
            }
        )

    bar = tqdm(total=len(records), desc="eval", unit="q", disable=not progress)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        ready = []
        for r in chunk:
            if SKIP_KEY in r:
                skip(r, r[SKIP_KEY])
                continue
            try:
                ready.append((r, pipeline.prepare(r["messages"], r["images"] or None, max_new_tokens)))
            except SkipSample as why:
                skip(r, why)
        answers = pipeline.generate_prepared([s for _, s in ready], max_new_tokens) if ready else []
        counter.record_ok(len(ready))
        for (r, _), a in zip(ready, answers, strict=True):
            predictions.append(
                {
                    "id": r["id"],
                    "type": r["type"],
                    "question": r["messages"][-1]["content"],
                    "answer": r["answer"],
                    "prediction": a,
                    "options": r["options"],
                    "correct": is_correct(a, r["answer"], r["options"]),
                }
            )
        bar.update(len(chunk))
    bar.close()
    if counter.skipped:
        logger.warning("eval: %s", counter.summary())
    metrics = score(predictions).as_dict(chance)
    return {
        "metrics": metrics,
        "predictions": predictions,
        "skipped": dict(counter.reasons),
        "skipped_rows": skipped_rows,
        "skip_summary": counter.summary(),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def format_table(metrics: dict[str, Any]) -> str:
    """A Markdown table of per-type accuracy beside chance."""
    lines = ["| type | n | accuracy | chance |", "|---|---|---|---|"]
    for t, m in metrics["per_type"].items():
        chance = "" if m["chance"] is None else f"{m['chance']:.2f}"
        lines.append(f"| {t} | {m['n']} | {m['accuracy']:.3f} | {chance} |")
    lines.append(f"| **overall** | {metrics['n']} | **{metrics['overall']:.3f}** | |")
    return "\n".join(lines)


def run_eval(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    image_root: str | Path | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 16,
    limit: int | None = None,
    progress: bool = True,
    device: str | None = None,
    require_images: bool = False,
    check_images: bool = False,
) -> dict[str, Any]:
    """Loads a model folder, evaluates it on ``data`` and writes the results JSON (default: beside the model).

    Bad rows are skipped and counted (see :func:`evaluate`); a missing data file or a damaged model
    folder raises (FileNotFoundError, :class:`~openovis.integrity.CheckpointError`). With
    ``check_images`` the result also holds ``image_check``: the answers' loss with each question's
    own image vs a mismatched one (`openovis.evaluation.image_check`; conversation files only).
    """
    from openovis.inference import OvisPipeline

    if check_images and Path(data).suffix == ".tsv":
        raise ValueError("image check: needs a conversation JSON/JSONL test set, not a TSV")
    records = load_records(data, image_root, require_images)[:limit]
    pipeline = OvisPipeline.from_pretrained(model_dir, device=device)
    result = evaluate(pipeline, records, batch_size, max_new_tokens, progress, chance_levels(data))
    if check_images:
        from openovis.data.datasets import read_records
        from openovis.evaluation.image_check import image_check

        raw = read_records(data)[:limit]
        root = Path(image_root) if image_root else Path(data).parent
        result["image_check"] = image_check(pipeline.model, pipeline.processor, raw, root, batch_size)
    result.update(model=str(model_dir), data=str(data))
    out = Path(out) if out else Path(model_dir) / f"eval_{Path(data).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    result["path"] = str(out)
    return result
