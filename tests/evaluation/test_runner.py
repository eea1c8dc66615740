"""`openovis eval` on a corpus with one bad row per reason: every good row scored, every bad row counted."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from openovis import build_model
from openovis.data.text_tokenizer import train_text_tokenizer
from openovis.evaluation.runner import evaluate, load_records, run_eval
from openovis.inference import OvisPipeline
from openovis.integrity import write_manifest
from openovis.processing.processor import OvisProcessor
from openovis.skips import SkipReason, SkipSample

CORPUS = ["what colour is the shape", "red blue green circle square", "how many shapes are there"] * 20
MAX_PIXELS = 5000  # small, so a 100 x 100 image is "too large" without allocating a big one


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eval") / "model"
    tokenizer = train_text_tokenizer(CORPUS, vocab_size=300)
    model = build_model("tiny", tokenizer=tokenizer, vet_impl="reference")
    model.save_pretrained(folder)
    OvisProcessor.from_model_config(model.config, tokenizer, max_image_pixels=MAX_PIXELS).save_pretrained(
        folder
    )
    write_manifest(folder)
    return folder


def _png(path: Path, size: int = 40, mode: str = "RGB") -> Path:
    Image.new(mode, (size, size), (200, 30, 30) if mode == "RGB" else 120).save(path)
    return path


def _turns(question: str, answer: str | None = "red") -> list[dict[str, str]]:
    turns = [{"from": "human", "value": question}]
    return turns + ([{"from": "gpt", "value": answer}] if answer is not None else [])


def write_corpus(root: Path) -> tuple[Path, list[str], dict[str, int]]:
    """Good rows and one bad row per reason; returns the file, the good ids and the expected skips."""
    images = root / "images"
    images.mkdir(parents=True)
    _png(images / "a.png")
    _png(images / "b.png", 30)
    Image.fromarray(np.full((40, 40), 120, dtype=np.uint16)).save(images / "gray16.png")  # I;16
    (images / "empty.png").write_bytes(b"")
    (images / "corrupt.png").write_bytes((images / "a.png").read_bytes()[:60])
    _png(images / "huge.png", 100)
    _png(root / "outside.png")
    os.symlink(root / "outside.png", images / "link.png")
    q = "<image>\nwhat colour is the shape"
    good = [
        {"id": "llava", "image": "a.png", "conversations": _turns(q)},  # reference = last gpt turn
        {
            "id": "answer-key",
            "image": "b.png",
            "conversations": _turns(q, None),
            "answer": "red",
            "type": "colour",
        },
        {
            "id": "multi",
            "image": ["a.png", "b.png"],
            "conversations": _turns("<image> <image>\nhow many shapes"),
        },
        {"id": "text-only", "conversations": _turns("how many shapes are there", "2")},
        {"id": "gray16", "image": "gray16.png", "conversations": _turns(q)},
        {"id": "messages", "image": "a.png", "messages": [{"role": "user", "content": q}], "answer": 3},
    ]
    bad = [
        ({"id": "missing", "image": "nope.png", "conversations": _turns(q)}, SkipReason.MISSING_IMAGE),
        ({"id": "empty", "image": "empty.png", "conversations": _turns(q)}, SkipReason.EMPTY_IMAGE),
        ({"id": "corrupt", "image": "corrupt.png", "conversations": _turns(q)}, SkipReason.UNREADABLE_IMAGE),
        ({"id": "huge", "image": "huge.png", "conversations": _turns(q)}, SkipReason.IMAGE_TOO_LARGE),
        ({"id": "dotdot", "image": "../outside.png", "conversations": _turns(q)}, SkipReason.PATH_ESCAPE),
        (
            {"id": "abs", "image": str(root / "outside.png"), "conversations": _turns(q)},
            SkipReason.PATH_ESCAPE,
        ),
        ({"id": "symlink", "image": "link.png", "conversations": _turns(q)}, SkipReason.PATH_ESCAPE),
        ({"id": "no-turns", "image": "a.png"}, SkipReason.MALFORMED_RECORD),
        ({"id": "no-answer", "image": "a.png", "conversations": _turns(q, None)}, SkipReason.MISSING_ANSWER),
        (
            {"id": "role", "image": "a.png", "conversations": [{"from": "robot", "value": q}]},
            SkipReason.UNKNOWN_ROLE,
        ),
        (
            {"id": "order", "conversations": _turns("hi", "a") + _turns("hi", "b")[1:]},
            SkipReason.BAD_TURN_ORDER,
        ),
        (
            {"id": "placeholders", "image": "a.png", "conversations": _turns("<image> <image> what")},
            SkipReason.PLACEHOLDER_MISMATCH,
        ),
        ({"id": "long", "conversations": _turns("red " * 5000)}, SkipReason.TOO_LONG),
        ({"id": "options", "conversations": _turns("what"), "options": 3}, SkipReason.MALFORMED_RECORD),
    ]
    lines = (
        [json.dumps(r) for r in good[:3]]
        + [json.dumps(r) for r, _ in bad]
        + [json.dumps(r) for r in good[3:]]
    )
    lines += ['"a string, not a record"', "{not json"]
    expected: dict[str, int] = {}
    for _, reason in bad:
        expected[reason.value] = expected.get(reason.value, 0) + 1
    expected[SkipReason.MALFORMED_RECORD.value] += 2
    path = images / "test.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, [r["id"] for r in good], expected


def test_a_bad_input_corpus_is_scored_row_by_row(model_dir, tmp_path):
    data, good_ids, expected = write_corpus(tmp_path / "data")
    result = run_eval(
        model_dir, data, tmp_path / "out.json", batch_size=4, max_new_tokens=2, progress=False, device="cpu"
    )
    assert sorted(p["id"] for p in result["predictions"]) == sorted(good_ids)
    assert result["metrics"]["n"] == len(good_ids)
    assert result["skipped"] == expected
    assert len(result["skipped_rows"]) == sum(expected.values())
    by_id = {r["id"]: r for r in result["skipped_rows"]}
    assert by_id["symlink"]["reason"] == "image path outside root" and "outside" in by_id["symlink"]["detail"]
    assert "max_length" in by_id["long"]["detail"]
    assert {p["id"]: p["answer"] for p in result["predictions"]}["llava"] == "red"  # the last gpt turn
    assert json.loads((tmp_path / "out.json").read_text())["skipped"] == expected


def test_require_images_skips_text_only_rows(model_dir, tmp_path):
    data, good_ids, _ = write_corpus(tmp_path / "data")
    records = load_records(data, require_images=True)
    pipe = OvisPipeline.from_pretrained(model_dir, device="cpu")
    result = evaluate(pipe, records, max_new_tokens=1, progress=False)
    reasons = {r["id"]: r["reason"] for r in result["skipped_rows"]}
    assert reasons["text-only"] == "no image"
    assert sorted(p["id"] for p in result["predictions"]) == sorted(set(good_ids) - {"text-only"})


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_tsv_bad_rows_are_skipped(model_dir, tmp_path):
    png = _png(tmp_path / "a.png")
    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, "PNG")
    rows = [
        ["index", "image", "question", "answer", "A", "B", "category"],
        ["0", _b64(png), "what colour", "A", "red", "blue", "colour"],
        ["1", "0", "what colour again", "B", "red", "blue", "colour"],  # reuses row 0's image
        ["2", "!!not base64!!", "what colour", "A", "red", "blue", "colour"],
        ["3", "", "what colour", "A", "red", "blue", "colour"],
        ["4", base64.b64encode(buf.getvalue()).decode(), "what colour", "A", "red", "blue", "colour"],
        ["5", _b64(png)],  # a short row: no question, no answer
        ["6", json.dumps([_b64(png), _b64(png)]), "<image> <image> same?", "yes", "", "", "pair"],
    ]
    data = tmp_path / "bench.tsv"
    data.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    result = run_eval(model_dir, data, tmp_path / "out.json", max_new_tokens=2, progress=False, device="cpu")
    assert sorted(str(p["id"]) for p in result["predictions"]) == ["0", "1", "6"]
    assert result["skipped"] == {
        "unreadable image": 1,
        "missing image": 1,
        "image too large": 1,
        "malformed record": 1,
    }


def test_an_over_long_prompt_is_refused_before_the_model_runs(model_dir):
    pipe = OvisPipeline.from_pretrained(model_dir, device="cpu")
    assert pipe.processor.max_length == pipe.model.config.text_config.max_position_embeddings
    calls = []
    pipe.model.generate = lambda *a, **k: calls.append(1)
    with pytest.raises(SkipSample, match=r"max_length") as err:
        pipe.generate_batch(["red " * 3000], max_new_tokens=4)
    assert err.value.reason is SkipReason.TOO_LONG and not calls
    # A million characters are refused before they are even tokenized.
    encoder = pipe.processor._encoder
    encoder.encode_chat = lambda *a, **k: pytest.fail("tokenized an over-long prompt")
    with pytest.raises(SkipSample, match="characters cannot fit"):
        pipe.chat("x" * 1_000_000)
    assert not calls


def test_a_prompt_that_leaves_no_room_for_the_answer_is_refused(model_dir):
    pipe = OvisPipeline.from_pretrained(model_dir, device="cpu")
    limit = pipe.processor.max_length
    with pytest.raises(ValueError, match="max_new_tokens"):
        pipe.generate_batch(["what colour"], max_new_tokens=limit)


# --------------------------------------------------------------------------- the command line


def _cli(*args: str):
    from openovis.cli import app

    return CliRunner().invoke(app, list(args))


def test_eval_cli_prints_the_skip_summary(model_dir, tmp_path):
    data, _, _ = write_corpus(tmp_path / "data")
    res = _cli(
        "eval",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o.json"),
        "--max-new-tokens",
        "1",
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    assert "skipped 16 of 22" in res.output and "image path outside root" in res.output


def test_chat_refuses_bad_images_and_escapes_in_one_line(model_dir, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    _png(tmp_path / "secret.png")
    (root / "bad.png").write_bytes(b"not an image")
    cases = [
        (["--image", "../secret.png", "--image-root", str(root)], "image path outside root"),
        (["--image", str(root / "missing.png")], "missing image"),
        (["--image", str(root / "bad.png")], "unreadable image"),
    ]
    for extra, message in cases:
        res = _cli("chat", "--model", str(model_dir), "--device", "cpu", "what colour", *extra)
        assert res.exit_code == 1, res.output
        errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], res.stderr
        assert "Traceback" not in res.output


def test_chat_on_a_damaged_or_missing_model_is_one_line(model_dir, tmp_path):
    import shutil

    res = _cli("chat", "--model", str(tmp_path / "nothing"), "hi")
    assert res.exit_code == 1 and "is not a saved model folder" in res.stderr
    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir, damaged)
    weights = damaged / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    res = _cli("chat", "--model", str(damaged), "--device", "cpu", "hi")
    assert res.exit_code == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(weights) in errors[0] and "Traceback" not in res.output
    with pytest.raises(Exception, match="sha256"):
        _cli_debug = __import__("openovis.cli", fromlist=["app"]).app
        CliRunner().invoke(
            _cli_debug, ["--debug", "chat", "--model", str(damaged), "hi"], catch_exceptions=False
        )
