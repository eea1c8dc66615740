"""The from-scratch text tokenizer: specials, exact size, round trips, ChatML, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from openovis.constants import (
    EOS_TOKEN,
    IM_END,
    IM_START,
    IMAGE_PLACEHOLDER,
    INDICATOR_TOKENS_OVIS2,
    PAD_TOKEN,
)
from openovis.data.shapes import ShapesConfig, generate_shapes_world
from openovis.data.text_tokenizer import (
    SPECIAL_TOKENS,
    byte_level_tokenizer,
    min_vocab_size,
    tokenizer_from_corpus,
    train_text_tokenizer,
)

TEXTS = [
    "<image>\nWhat color is the small red circle at the top left?",
    "a large blue square at the center and 3 green crosses.",
    "Naïve café — 漢字, emoji 🙂, tabs\tand\r\nnewlines; digits 0123456789 and (punctuation)!?",
    "",
    f"{IM_START}user\n{IMAGE_PLACEHOLDER}\nhi{IM_END}\n",
]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes_tok")
    generate_shapes_world(root, ShapesConfig(n_train=40, n_test=7), progress=False)
    return root


@pytest.fixture(scope="module")
def tok(shapes_dir: Path) -> PreTrainedTokenizerBase:
    return tokenizer_from_corpus(shapes_dir / "corpus.txt", vocab_size=512)


def test_specials_are_single_fixed_ids(tok: PreTrainedTokenizerBase) -> None:
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(token) == i
        assert tok.encode(token, add_special_tokens=False) == [i]
        assert tok.encode(f"x{token}y", add_special_tokens=False).count(i) == 1
    assert tok.eos_token == EOS_TOKEN and tok.pad_token == PAD_TOKEN and tok.bos_token is None
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)


def test_image_placeholder_is_one_id_inside_text(tok: PreTrainedTokenizerBase) -> None:
    placeholder = tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    ids = tok.encode(f"{IMAGE_PLACEHOLDER}\nWhat color is it? {IMAGE_PLACEHOLDER}", add_special_tokens=False)
    assert ids[0] == placeholder and ids.count(placeholder) == 2
    indicators = tok.convert_tokens_to_ids(list(INDICATOR_TOKENS_OVIS2))
    assert not set(indicators) & set(tok.encode("<IMG_START", add_special_tokens=False))


def test_nothing_added_around_text(tok: PreTrainedTokenizerBase) -> None:
    assert tok("a red circle")["input_ids"] == tok.encode("a red circle", add_special_tokens=False)
    assert tok.encode("", add_special_tokens=True) == []


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok: PreTrainedTokenizerBase, text: str) -> None:
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_learned_merges_shorten_shapes_text(tok: PreTrainedTokenizerBase) -> None:
    text = "a large red circle at the top left."
    assert len(tok.encode(text)) < len(text.encode()) / 3


@pytest.mark.parametrize("vocab_size", [min_vocab_size(), 300, 1024])
def test_vocab_size_is_exact(shapes_dir: Path, vocab_size: int) -> None:
    lines = (shapes_dir / "corpus.txt").read_text(encoding="utf-8").splitlines()
    tok = train_text_tokenizer(lines, vocab_size=vocab_size)
    assert len(tok) == vocab_size
    assert max(tok.get_vocab().values()) == vocab_size - 1


def test_vocab_size_below_minimum_is_rejected() -> None:
    with pytest.raises(ValueError, match="^vocab_size"):
        train_text_tokenizer(["abc"], vocab_size=min_vocab_size() - 1)


def test_training_is_deterministic(shapes_dir: Path) -> None:
    lines = (shapes_dir / "corpus.txt").read_text(encoding="utf-8").splitlines()
    a, b = (train_text_tokenizer(lines, vocab_size=400) for _ in range(2))
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


def test_chat_template_is_chatml(tok: PreTrainedTokenizerBase) -> None:
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\nWhat color is the circle?"},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "How many shapes are there?"},
        {"role": "assistant", "content": "2"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat color is the circle?<|im_end|>\n"
        "<|im_start|>assistant\nred<|im_end|>\n"
        "<|im_start|>user\nHow many shapes are there?<|im_end|>\n"
        "<|im_start|>assistant\n2<|im_end|>\n"
    )
    assert tok.apply_chat_template(chat, tokenize=False) == expected
    prompt = tok.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == expected[: expected.index("red<|im_end|>")]


def test_save_load_gives_identical_ids(tok: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == len(tok)
    assert (loaded.eos_token_id, loaded.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert loaded.model_max_length == tok.model_max_length
    for text in TEXTS:
        assert loaded.encode(text) == tok.encode(text)
    chat = [{"role": "user", "content": "<image>\nhi"}]
    assert loaded.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )


def test_tokenizer_from_corpus_saves_next_to_the_data(shapes_dir: Path, tok: PreTrainedTokenizerBase) -> None:
    loaded = AutoTokenizer.from_pretrained(shapes_dir / "tokenizer")
    assert loaded.get_vocab() == tok.get_vocab()


def test_byte_level_fallback_encodes_anything(tmp_path: Path) -> None:
    tok = byte_level_tokenizer(tmp_path)
    assert len(tok) == min_vocab_size() == len(SPECIAL_TOKENS) + 256
    text = "🙂 漢字 \x00\x7f é <image> ok"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(ids) == len(text.replace("<image>", "").encode()) + 1  # one id per byte, one for <image>
    assert AutoTokenizer.from_pretrained(tmp_path).encode(text) == ids


def test_tokenizer_from_a_missing_corpus_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="corpus.txt: not found"):
        tokenizer_from_corpus(tmp_path / "corpus.txt")
