"""Text tokenizers for models trained from scratch (e.g. the tiny LLM of the Shapes World recipes).

A byte-level BPE (GPT-2 pre-tokenization, no normalizer, so any Unicode text round-trips) with the
project's special tokens, each one id that text never splits (DESIGN §2)::

    ids 0 … 10           EOS, PAD, <|im_start|>, <|im_end|>, <image>, <IMG_ATOM>, 5 Ovis2 indicators
    ids 11 … 266         the 256 byte symbols (every string is encodable)
    ids 267 … V-1        learned merges, then <|reserved_i|> fillers if the corpus runs out of merges

``len(tokenizer) == vocab_size`` exactly, because the tiny model sizes its embedding table from it.
The wrapper is a ``transformers`` fast tokenizer with a ChatML chat template; it has no BOS and adds
nothing around encoded text.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from openovis.constants import (
    EOS_TOKEN,
    IM_END,
    IM_START,
    IMAGE_ATOM,
    IMAGE_PLACEHOLDER,
    INDICATOR_TOKENS_OVIS2,
    PAD_TOKEN,
)

SPECIAL_TOKENS = (
    EOS_TOKEN,
    PAD_TOKEN,
    IM_START,
    IM_END,
    IMAGE_PLACEHOLDER,
    IMAGE_ATOM,
    *INDICATOR_TOKENS_OVIS2,
)
"""Special tokens in id order (ids 0 … 10)."""

RESERVED_TOKEN = "<|reserved_{}|>"
"""Filler specials that bring a small corpus's vocabulary up to the requested size."""

CHAT_ROLES = ("system", "user", "assistant")
"""Role names the chat template writes after ``<|im_start|>``: trained as if every text line had one,
so they are whole tokens (spelled letter by letter they cost ~13 tokens per single-turn sample)."""

MODEL_MAX_LENGTH = 2048
"""The tiny preset's context length (``max_position_embeddings``)."""

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + IM_START + "assistant\\n' }}{%- endif -%}"
)
"""ChatML, as ``processing.conversation.render_chatml``: no default system prompt, no BOS."""


def _special(token: str) -> AddedToken:
    """A special token matched verbatim anywhere in text (no stripping, no normalization)."""
    return AddedToken(token, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)


def _byte_level(model: models.BPE) -> Tokenizer:
    """A tokenizer around ``model`` with GPT-2 byte-level pre-tokenization and decoding."""
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _wrap(tokenizer: Tokenizer, out_dir: str | Path | None) -> PreTrainedTokenizerFast:
    """The ``transformers`` tokenizer with EOS/PAD, specials and the ChatML template; saved if asked."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(SPECIAL_TOKENS[2:]),
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
    )
    fast.chat_template = CHATML_TEMPLATE
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def _pad_vocab(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Adds ``<|reserved_i|>`` specials until the vocabulary has ``vocab_size`` entries."""
    missing = vocab_size - tokenizer.get_vocab_size()
    if missing < 0:
        raise RuntimeError(
            f"trained vocabulary ({tokenizer.get_vocab_size()}) exceeds vocab_size {vocab_size}"
        )
    tokenizer.add_special_tokens([_special(RESERVED_TOKEN.format(i)) for i in range(missing)])


def min_vocab_size() -> int:
    """The smallest vocabulary: the specials and the 256 byte symbols."""
    return len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())


def train_text_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, out_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE on ``texts`` (deterministic for the same texts in the same order).

    Args:
        texts: Training text, e.g. the lines of a corpus.
        vocab_size: Exact size of the result (``len(tokenizer)``), specials and bytes included.
        out_dir: If given, ``save_pretrained`` there (load with ``AutoTokenizer.from_pretrained``).

    Returns:
        The tokenizer.

    Raises:
        ValueError: ``vocab_size`` below ``min_vocab_size()``.
    """
    if vocab_size < min_vocab_size():
        raise ValueError(
            f"vocab_size: must be >= {min_vocab_size()} (specials + 256 bytes), got {vocab_size}"
        )
    tokenizer = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_special(t) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_with_roles(texts), trainer=trainer)
    _pad_vocab(tokenizer, vocab_size)
    return _wrap(tokenizer, out_dir)


def _with_roles(texts: Iterable[str]) -> Iterable[str]:
    """``texts``, then each of ``CHAT_ROLES`` as many times as there were texts."""
    count = 0
    for text in texts:
        count += 1
        yield text
    for role in CHAT_ROLES:
        yield from [role] * count


def byte_level_tokenizer(out_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The untrained fallback: the specials and one token per byte (``min_vocab_size()`` ids).

    Args:
        out_dir: If given, ``save_pretrained`` there.
    """
    symbols = [*SPECIAL_TOKENS, *sorted(pre_tokenizers.ByteLevel.alphabet())]
    tokenizer = _byte_level(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=[]))
    tokenizer.add_special_tokens([_special(t) for t in SPECIAL_TOKENS])
    return _wrap(tokenizer, out_dir)


def tokenizer_from_corpus(
    corpus: str | Path, vocab_size: int = 1024, out_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Trains a tokenizer on a text file of the data, one sample per line (e.g. a generated ``corpus.txt``).

    What a recipe's ``model.tokenizer: {train_on: FILE, vocab_size: V}`` runs.

    Args:
        corpus: The text file.
        vocab_size: Exact vocabulary size.
        out_dir: Where to save it (default: ``tokenizer/`` beside the corpus).

    Raises:
        FileNotFoundError: ``corpus`` does not exist.
    """
    corpus = Path(corpus)
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus}: not found; the tokenizer is trained on this text file")
    lines = corpus.read_text(encoding="utf-8").splitlines()
    return train_text_tokenizer(
        lines, vocab_size, corpus.parent / "tokenizer" if out_dir is None else out_dir
    )
