"""`openovis eval`: batched greedy answers over a test set, scored overall and per question type.

Inputs:
- the conversation format (a JSON list or JSONL): the last ``human`` turn is the question; a final
  ``gpt`` turn, if any, is dropped (it is the reference); ``answer``, ``type`` and ``options`` give
  the reference, the question type and multiple-choice options; image paths are relative to the
  image root (default: the data file's folder);
- VLMEvalKit-style TSV: ``index, image (base64), question, answer, A, B, C, D, ... [, category]``.

Chance levels come from a ``meta.json`` beside the data (Shapes World writes one).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from openovis.constants import IMAGE_PLACEHOLDER
from openovis.data.datasets import read_records
from openovis.evaluation.scoring import LETTERS, is_correct, score

MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."


def _question_from_conversation(record: dict[str, Any], where: str) -> list[dict[str, str]]:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: no conversations")
    if turns[-1].get("from") in ("gpt", "assistant"):
        turns = turns[:-1]
    role = {"human": "user", "gpt": "assistant", "system": "system"}
    return [{"role": role.get(t.get("from"), t.get("from")), "content": t["value"]} for t in turns]


def load_conversation_records(path: Path, image_root: Path) -> list[dict[str, Any]]:
    """Reads a conversation-format test set into evaluation records."""
    rows = read_records(path)
    records = []
    for i, row in enumerate(rows):
        where = f"{path.name}[{i}]"
        if "answer" not in row:
            raise ValueError(f"{where}: no reference 'answer'")
        images = row.get("image") or []
        images = [images] if isinstance(images, str) else list(images)
        records.append(
            {
                "id": row.get("id", i),
                "messages": _question_from_conversation(row, where),
                "images": [image_root / p for p in images],
                "answer": row["answer"],
                "type": row.get("type"),
                "options": row.get("options"),
            }
        )
    return records


def load_tsv_records(path: Path) -> list[dict[str, Any]]:
    """Reads a VLMEvalKit-style TSV (base64 images, A/B/C/... option columns)."""
    csv.field_size_limit(1 << 30)
    records = []
    with path.open(encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.DictReader(f, delimiter="\t")):
            options = {k: row[k] for k in LETTERS if row.get(k) not in (None, "", "nan")}
            question = row["question"]
            if options:
                question += "\n" + "\n".join(f"{k}. {v}" for k, v in options.items()) + "\n" + MCQ_SUFFIX
            image = Image.open(io.BytesIO(base64.b64decode(row["image"])))
            records.append(
                {
                    "id": row.get("index", i),
                    "messages": [{"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{question}"}],
                    "images": [image],
                    "answer": row["answer"],
                    "type": row.get("category") or ("mcq" if options else None),
                    "options": options or None,
                }
            )
    return records


def load_records(path: str | Path, image_root: str | Path | None = None) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"evaluation data {path} does not exist")
    if path.suffix == ".tsv":
        return load_tsv_records(path)
    return load_conversation_records(path, Path(image_root) if image_root else path.parent)


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
        if record.get("type") is not None and record.get("answer") is not None:
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
    """Generates answers for every record and scores them.

    Returns:
        ``{"metrics": {...overall, per_type with chance...}, "predictions": [...], "seconds": ...}``.
    """
    t0 = time.perf_counter()
    predictions = []
    bar = tqdm(total=len(records), desc="eval", unit="q", disable=not progress)
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        answers = pipeline.generate_batch(
            [r["messages"] for r in chunk],
            [r["images"] or None for r in chunk],
            max_new_tokens=max_new_tokens,
        )
        for r, a in zip(chunk, answers, strict=True):
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
    metrics = score(predictions).as_dict(chance)
    return {"metrics": metrics, "predictions": predictions, "seconds": round(time.perf_counter() - t0, 2)}


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
    check_images: bool = False,
) -> dict[str, Any]:
    """Loads a model folder, evaluates it on ``data`` and writes the results JSON (default: beside the model).

    With ``check_images`` the result also holds ``image_check``: the answers' loss with each question's
    own image vs a mismatched one (`openovis.evaluation.image_check`; conversation files only).
    """
    from openovis.inference import OvisPipeline

    pipeline = OvisPipeline.from_pretrained(model_dir, device=device)
    records = load_records(data, image_root)[:limit]
    result = evaluate(pipeline, records, batch_size, max_new_tokens, progress, chance_levels(data))
    if check_images:
        from openovis.data.datasets import read_records
        from openovis.evaluation.image_check import image_check

        if Path(data).suffix == ".tsv":
            raise ValueError("image check: needs a conversation JSON/JSONL test set, not a TSV")
        raw = read_records(data)[:limit]
        root = Path(image_root) if image_root else Path(data).parent
        result["image_check"] = image_check(pipeline.model, pipeline.processor, raw, root, batch_size)
    result.update(model=str(model_dir), data=str(data))
    out = Path(out) if out else Path(model_dir) / f"eval_{Path(data).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    result["path"] = str(out)
    return result
