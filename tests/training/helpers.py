"""Tiny in-memory data for training tests (no processor needed)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerFast

from openovis.constants import IGNORE_INDEX
from openovis.processing.collator import OvisCollator

WORDS = [
    "<pad>",
    "<eos>",
    "[UNK]",
    "a",
    "red",
    "blue",
    "circle",
    "square",
    "is",
    "there",
    "the",
    "left",
    "right",
]


def word_tokenizer(folder: Path | None = None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="[UNK]"
    )
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


def write_corpus(path: Path, n: int = 64) -> Path:
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(n):
        idx = torch.randint(3, len(WORDS), (6,), generator=g).tolist()
        lines.append(" ".join(WORDS[i] for i in idx))
    path.write_text("\n".join(lines) + "\n")
    return path


class ColourImages(Dataset):
    """Solid-colour images; the label is the colour's token: learnable only through the image."""

    def __init__(self, config, n: int = 32):
        self.config, self.n = config, n
        self.colours = [(4, torch.tensor([1.0, -1, -1])), (5, torch.tensor([-1.0, -1, 1]))]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        cfg = self.config
        token, rgb = self.colours[i % 2]
        atoms = [cfg.image_atom_id] * cfg.visual_tokens_per_crop
        start, grid, _c, _r, end = cfg.indicator_token_ids
        ids = torch.tensor([start, *atoms, grid, end, 8, token, 1])
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[-2:] = ids[-2:]
        pixels = rgb.view(1, 3, 1, 1).expand(1, 3, cfg.crop_size, cfg.crop_size).clone()
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": labels,
            "pixel_values": pixels,
        }


def collator() -> OvisCollator:
    return OvisCollator(pad_token_id=0, padding_side="right")


class NativeColourImages(ColourImages):
    """`ColourImages` for a NaViT (Ovis2.5) model: one 2x4-patch image of packed rows per sample."""

    def __getitem__(self, i: int) -> dict:
        cfg = self.config
        token, rgb = self.colours[i % 2]
        vc, s = cfg.vision_config, cfg.hidden_stride
        grid = torch.tensor([[1, 2 * s, 2 * s]])  # 4 visual tokens
        start, end = cfg.indicator_token_ids[:2]
        ids = torch.tensor([start, *[cfg.image_atom_id] * 4, end, 8, token, 1])
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[-2:] = ids[-2:]
        row = rgb.repeat_interleave(vc.temporal_patch_size * vc.patch_size**2)  # channel-major rows
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": labels,
            "pixel_values": row.expand(int(grid.prod()), -1).clone(),  # [16, C·T·p²]
            "grid_thw": grid,
        }
