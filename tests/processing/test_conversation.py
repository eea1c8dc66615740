"""Conversations: normalization, exact label masks, caption and generation modes, truncation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from PIL import Image

from openovis.constants import IGNORE_INDEX, IMAGE_ATOM, INDICATOR_TOKENS_OVIS2
from openovis.processing.conversation import (
    Message,
    TokenSequence,
    check_turn_order,
    normalize_messages,
    render_chatml,
    truncate,
)
from openovis.processing.image import ImageProcessingConfig
from openovis.processing.processor import OvisProcessor
from openovis.skips import SkipReason, SkipSample

TWO_TURNS = [
    {"from": "system", "value": "Be brief."},
    {"from": "human", "value": "<image>\nWhat is in the image?"},
    {"from": "gpt", "value": "A red circle."},
    {"from": "human", "value": "How many shapes are there?"},
    {"from": "gpt", "value": "There are three shapes."},
]


def labelled_runs(tokenizer: Any, labels: torch.Tensor) -> list[str]:
    """Decodes each contiguous run of supervised label positions."""
    runs: list[list[int]] = []
    previous = False
    for label in labels.tolist():
        if label != IGNORE_INDEX:
            if not previous:
                runs.append([])
            runs[-1].append(label)
        previous = label != IGNORE_INDEX
    return [tokenizer.decode(run) for run in runs]


def red(size: tuple[int, int] = (28, 28)) -> Image.Image:
    return Image.new("RGB", size, (255, 0, 0))


def expand_placeholders(text: str, processor: OvisProcessor, grids: list[tuple[int, int]]) -> str:
    """The text with each <image> replaced by its layout, as the tokenizer would decode it."""
    for grid in grids:
        text = text.replace("<image>", processor.tokenizer.decode(processor.layout_ids(grid)), 1)
    return text


# --------------------------------------------------------------------------- normalization


def test_normalizes_llava_and_role_content_turns() -> None:
    llava = normalize_messages([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}])
    chat = normalize_messages(
        [
            {"role": "User", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "yo"},
        ]
    )
    assert llava == [Message("user", "hi"), Message("assistant", "yo")]
    assert chat == [Message("user", "<image>hi"), Message("assistant", "yo")]


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ([], SkipReason.EMPTY_CONVERSATION),
        ("hello", SkipReason.MALFORMED_RECORD),
        ([{"from": "robot", "value": "x"}], SkipReason.UNKNOWN_ROLE),
        ([{"from": "human", "value": 3}], SkipReason.MALFORMED_RECORD),
        ([{"from": "human"}], SkipReason.MALFORMED_RECORD),
        (["just a string"], SkipReason.MALFORMED_RECORD),
        ([{"speaker": "human", "text": "x"}], SkipReason.MALFORMED_RECORD),
        ([{"from": "human", "value": "bad \udcff byte"}], SkipReason.INVALID_TEXT),
    ],
)
def test_bad_conversations_are_skips(turns: Any, reason: SkipReason) -> None:
    with pytest.raises(SkipSample) as info:
        normalize_messages(turns)
    assert info.value.reason is reason


@pytest.mark.parametrize(
    ("roles", "mode"),
    [
        (["assistant", "user"], "train"),
        (["user", "user", "assistant"], "train"),
        (["user"], "train"),
        (["user", "assistant"], "generate"),
        (["user", "system", "assistant"], "train"),
    ],
)
def test_bad_turn_orders(roles: list[str], mode: str) -> None:
    with pytest.raises(SkipSample) as info:
        check_turn_order([Message(r, "x") for r in roles], mode)  # type: ignore[arg-type]
    assert info.value.reason is SkipReason.BAD_TURN_ORDER


def test_system_only_is_empty() -> None:
    with pytest.raises(SkipSample) as info:
        check_turn_order([Message("system", "x")], "train")
    assert info.value.reason is SkipReason.EMPTY_CONVERSATION


# --------------------------------------------------------------------------- labels


def test_chatml_labels_are_exactly_the_assistant_answers_and_their_end_token(
    processor: OvisProcessor,
) -> None:
    out = processor(TWO_TURNS, [red()])
    assert labelled_runs(processor.tokenizer, out["labels"]) == [
        "A red circle.<|im_end|>",
        "There are three shapes.<|im_end|>",
    ]
    text = render_chatml(normalize_messages(TWO_TURNS), add_generation_prompt=False)
    assert processor.tokenizer.decode(out["input_ids"].tolist()) == expand_placeholders(
        text, processor, out["grids"]
    )
    # Labels are the input ids themselves where supervised (the model shifts them).
    mask = out["labels"] != IGNORE_INDEX
    assert torch.equal(out["labels"][mask], out["input_ids"][mask])
    assert processor.stop_token_ids[0] == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_tokenizer_template_labels(template_tokenizer: Any, image_config: ImageProcessingConfig) -> None:
    processor = OvisProcessor(template_tokenizer, image_config)
    assert processor.chat_format == "template"
    out = processor(TWO_TURNS, [red()])
    assert labelled_runs(template_tokenizer, out["labels"]) == [
        "A red circle.<|endoftext|>",
        "There are three shapes.<|endoftext|>",
    ]
    chat = [{"role": m.role, "content": m.content} for m in normalize_messages(TWO_TURNS)]
    text = template_tokenizer.apply_chat_template(chat, tokenize=False)
    assert template_tokenizer.decode(out["input_ids"].tolist()) == expand_placeholders(
        text, processor, out["grids"]
    )
    assert processor.stop_token_ids == [template_tokenizer.eos_token_id]


def test_chatml_can_be_forced_over_a_template(
    template_tokenizer: Any, image_config: ImageProcessingConfig
) -> None:
    processor = OvisProcessor(template_tokenizer, image_config, chat_format="chatml")
    out = processor(TWO_TURNS, [red()])
    assert labelled_runs(template_tokenizer, out["labels"])[0] == "A red circle.<|im_end|>"


def test_a_template_that_rewrites_history_is_refused(
    template_tokenizer: Any, image_config: ImageProcessingConfig
) -> None:
    rewriting = copy.deepcopy(template_tokenizer)
    # Marks only the last message: rendering one more turn changes the text of the previous one.
    rewriting.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}<|endoftext|>{% endfor %}"
    )
    processor = OvisProcessor(rewriting, image_config)
    with pytest.raises(ValueError, match="prefix-consistent"):
        processor(TWO_TURNS, [red()])


def test_generation_prompt_ends_with_the_assistant_header(processor: OvisProcessor) -> None:
    out = processor(TWO_TURNS[:4], [red()], mode="generate")
    assert "labels" not in out
    decoded = processor.tokenizer.decode(out["input_ids"].tolist())
    assert decoded.endswith("How many shapes are there?<|im_end|>\n<|im_start|>assistant\n")
    plain = processor("What is in the image?", mode="generate")
    assert processor.tokenizer.decode(plain["input_ids"].tolist()) == (
        "<|im_start|>user\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert plain["pixel_values"] is None and plain["grids"] == []


def test_caption_mode(processor: OvisProcessor) -> None:
    out = processor("Two shapes on a white background.", [red()], mode="caption")
    assert labelled_runs(processor.tokenizer, out["labels"]) == [
        "Two shapes on a white background.<|endoftext|>"
    ]
    decoded = processor.tokenizer.decode(out["input_ids"].tolist())
    layout = processor.tokenizer.decode(processor.layout_ids((1, 1)))
    assert decoded == layout + "'s caption: Two shapes on a white background.<|endoftext|>"
    prompt = processor(None, [red()], mode="caption")
    assert "labels" not in prompt
    assert processor.tokenizer.decode(prompt["input_ids"].tolist()) == layout + "'s caption: "


def test_placeholder_and_reserved_token_misuse(processor: OvisProcessor) -> None:
    cases = [
        (
            [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "<image>"}],
            [red()],
            SkipReason.PLACEHOLDER_MISMATCH,
        ),
        (
            [{"from": "system", "value": "<image>"}, *TWO_TURNS[1:3]],
            [red(), red()],
            SkipReason.PLACEHOLDER_MISMATCH,
        ),
        (TWO_TURNS, [], SkipReason.PLACEHOLDER_MISMATCH),
        (TWO_TURNS, [red(), red()], SkipReason.PLACEHOLDER_MISMATCH),
        (
            [{"from": "human", "value": f"hi {IMAGE_ATOM}"}, {"from": "gpt", "value": "x"}],
            [],
            SkipReason.RESERVED_TOKEN,
        ),
        (
            [{"from": "human", "value": INDICATOR_TOKENS_OVIS2[0]}, {"from": "gpt", "value": "x"}],
            [],
            SkipReason.RESERVED_TOKEN,
        ),
    ]
    for turns, images, reason in cases:
        with pytest.raises(SkipSample) as info:
            processor(turns, images)
        assert info.value.reason is reason, turns


def test_multi_image_placeholders_take_images_in_order(processor: OvisProcessor) -> None:
    turns = [
        {"from": "human", "value": "<image> and <image>: same?"},
        {"from": "gpt", "value": "No."},
    ]
    blue = Image.new("RGB", (56, 28), (0, 0, 255))
    out = processor(turns, [red(), blue])
    assert out["grids"] == [(1, 1), (1, 2)]
    assert out["pixel_values"].shape[0] == 1 + 3
    assert out["pixel_values"][0, 0, 14, 14] > 0 and out["pixel_values"][1, 2, 14, 14] > 0  # red, then blue
    atoms = (out["input_ids"] == processor.atom_token_id).sum().item()
    assert atoms == out["pixel_values"].shape[0] * processor.tokens_per_crop


# --------------------------------------------------------------------------- truncation


def _atoms_match_crops(out: dict[str, Any], processor: OvisProcessor) -> bool:
    atoms = int((out["input_ids"] == processor.atom_token_id).sum())
    crops = 0 if out["pixel_values"] is None else out["pixel_values"].shape[0]
    return atoms == crops * processor.tokens_per_crop


def test_truncation_never_cuts_an_image_span(processor: OvisProcessor) -> None:
    turns = [
        {"from": "human", "value": "<image>\nWhat is in the image?"},
        {"from": "gpt", "value": "A red circle."},
        {"from": "human", "value": "And here? <image>"},
        {"from": "gpt", "value": "A wide red rectangle."},
    ]
    images = [red(), red((56, 28))]
    full = processor(turns, images)
    start_id, end_id = processor.indicator_token_ids[0], processor.indicator_token_ids[-1]
    outcomes = set()
    for max_length in range(1, len(full["input_ids"]) + 1):
        try:
            out = processor(turns, images, max_length=max_length)
        except SkipSample as skip:
            outcomes.add(skip.reason)
            continue
        ids = out["input_ids"]
        assert len(ids) <= max_length
        assert torch.equal(ids, full["input_ids"][: len(ids)])  # a prefix of the full sequence
        assert int((ids == start_id).sum()) == int((ids == end_id).sum()) == len(out["grids"])
        assert _atoms_match_crops(out, processor)
        assert (out["labels"] != IGNORE_INDEX).any()
        outcomes.add(len(out["grids"]))
    assert outcomes == {SkipReason.IMAGES_TOO_LONG, SkipReason.NO_SUPERVISED_TOKENS, 1, 2}


def test_truncation_cut_inside_an_image_moves_before_it() -> None:
    seq = TokenSequence(
        ids=list(range(20)), labels=[IGNORE_INDEX] * 2 + list(range(2, 20)), image_spans=[(5, 10)]
    )
    out = truncate(seq, 7, supervised=True)
    assert out.ids == [0, 1, 2, 3, 4] and out.image_spans == []
    assert truncate(seq, 10, supervised=True).image_spans == [(5, 10)]


def test_images_alone_over_max_length_skip(processor: OvisProcessor) -> None:
    with pytest.raises(SkipSample) as info:
        processor(TWO_TURNS, [red((1000, 500))], max_length=20)
    assert info.value.reason is SkipReason.IMAGES_TOO_LONG


def test_generation_prompts_are_never_truncated(processor: OvisProcessor) -> None:
    with pytest.raises(SkipSample) as info:
        processor("What is in the image?", mode="generate", max_length=3)
    assert info.value.reason is SkipReason.TOO_LONG


def test_processor_default_max_length(tokenizer: Any, image_config: ImageProcessingConfig) -> None:
    full = len(OvisProcessor(tokenizer, image_config)(TWO_TURNS, [red()])["input_ids"])
    processor = OvisProcessor(tokenizer, image_config, max_length=full - 3)
    assert len(processor(TWO_TURNS, [red()])["input_ids"]) == full - 3
    assert len(processor(TWO_TURNS, [red()], max_length=1000)["input_ids"]) == full
