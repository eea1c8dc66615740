"""Plain text lines as language-model samples (the from-scratch recipe's stage 0).

Each non-empty line becomes ``ids(line) + eos`` with labels on every token, so the tiny LLM learns
the corpus language before it sees images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset


class TextLinesDataset(Dataset):
    """Lines of a UTF-8 text file, tokenized lazily.

    Args:
        path: The text file.
        tokenizer: Any transformers tokenizer with an ``eos_token_id``.
        max_length: Longest sample in tokens (longer lines are truncated, eos kept).
        max_samples: Use at most this many lines.
    """

    def __init__(
        self, path: str | Path, tokenizer: Any, max_length: int = 512, max_samples: int | None = None
    ):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"text data file {path} does not exist")
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        self.lines = [line for line in lines if line][:max_samples]
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer: an eos token is needed to end text samples")
        self.tokenizer, self.max_length = tokenizer, max_length

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(self.lines[index], add_special_tokens=False)["input_ids"][: self.max_length - 1]
        ids = torch.tensor([*ids, self.tokenizer.eos_token_id])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
