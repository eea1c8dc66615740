"""A saved tiny model folder (model, processor, tokenizer, generation config), as training writes one."""

from __future__ import annotations

from pathlib import Path

import torch

from openovis import build_model
from openovis.data.text_tokenizer import byte_level_tokenizer
from openovis.processing.processor import OvisProcessor


def save_tiny_folder(folder: Path, seed: int = 0) -> Path:
    """Builds the ``tiny`` preset with the byte-level tokenizer and saves it like a training ``final/``."""
    torch.manual_seed(seed)
    tokenizer = byte_level_tokenizer()
    model = build_model("tiny", tokenizer=tokenizer, vet_impl="reference")
    processor = OvisProcessor.from_model_config(model.config, tokenizer)
    model.generation_config.update(**processor.generation_defaults())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
