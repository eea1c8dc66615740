"""Fixtures for processing tests: a tiny byte-level BPE tokenizer with the Ovis special tokens.

Built here, offline, in a fraction of a second, so that these tests depend on nothing else.
``build_tiny_tokenizer`` is also loaded by the data tests (see ``tests/data/test_datasets.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
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
from openovis.processing.image import ImageProcessingConfig
from openovis.processing.processor import OvisProcessor

CORPUS = [
    "What is in the image? A red circle and a blue square.",
    "Describe the picture in detail. There are two shapes on a white background.",
    "How many shapes are there? There are three shapes.",
    "Which colour is the triangle? The triangle is green.",
    "Answer one. Answer two. Hello there, this is a caption.",
]

EXTRA_SPECIAL = [IM_START, IM_END, IMAGE_PLACEHOLDER, IMAGE_ATOM, *INDICATOR_TOKENS_OVIS2]

# A non-ChatML template whose turns end with the eos token, to test the tokenizer-template path.
PLAIN_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}]: {{ m['content'] }}<|endoftext|>\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]: {% endif %}"
)


def build_tiny_tokenizer(chat_template: str | None = None) -> Any:
    """A byte-level BPE tokenizer (any text encodes, decoding is exact) with the Ovis special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[PAD_TOKEN, EOS_TOKEN, *EXTRA_SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, extra_special_tokens=EXTRA_SPECIAL
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def tiny_image_config(**overrides: Any) -> ImageProcessingConfig:
    """S = 28, patch 7, stride 2: a 4x4 patch grid, T = 4 atoms per crop."""
    fields: dict[str, Any] = {"image_size": 28, "patch_size": 7, "hidden_stride": 2}
    return ImageProcessingConfig(**{**fields, **overrides})


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The tiny tokenizer without a chat template (the processor falls back to ChatML)."""
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def template_tokenizer() -> Any:
    """The tiny tokenizer with its own (non-ChatML) chat template."""
    return build_tiny_tokenizer(PLAIN_TEMPLATE)


@pytest.fixture
def make_image_config() -> Callable[..., ImageProcessingConfig]:
    """Factory: the tiny image configuration with overrides."""
    return tiny_image_config


@pytest.fixture
def image_config() -> ImageProcessingConfig:
    """The tiny image configuration."""
    return tiny_image_config()


@pytest.fixture
def processor(tokenizer: Any, image_config: ImageProcessingConfig) -> OvisProcessor:
    """A ChatML processor over the tiny tokenizer."""
    return OvisProcessor(tokenizer, image_config)
