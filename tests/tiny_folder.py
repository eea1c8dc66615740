"""A saved tiny model folder (model, processor, tokenizer, generation config), as training writes one."""

from __future__ import annotations

from pathlib import Path

import torch

from openovis import build_model
from openovis.data.text_tokenizer import byte_level_tokenizer
from openovis.processing.processor import OvisProcessor


def save_tiny_folder(folder: Path, seed: int = 0, letters: bool = False) -> Path:
    """Builds the ``tiny`` preset with the byte-level tokenizer and saves it like a training ``final/``.

    ``letters``: larger random LLM weights and an output layer that can only pick lower-case letters and
    spaces, so that the random model's answers are varied, visible text (for the page and stop tests).
    """
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    model = build_model("tiny", tokenizer=tokenizer, vet_impl="reference")
    if letters:
        with torch.no_grad():
            for p in model.llm.parameters():
                if p.ndim == 2:
                    p.normal_(0.0, 0.5)
            head = model.llm.get_output_embeddings().weight  # [V, D]
            for token_id in range(head.shape[0]):
                text = tokenizer.decode([token_id])
                if not (text.strip() and all(c in "abcdefghijklmnopqrstuvwxyz " for c in text)):
                    head[token_id] = 0.0  # logit 0, below the best letter's for almost every hidden state
    processor = OvisProcessor.from_model_config(model.config, tokenizer)
    model.generation_config.update(**processor.generation_defaults())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
