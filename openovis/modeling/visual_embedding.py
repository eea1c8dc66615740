"""The visual embedding table (VET): Ovis's visual vocabulary, one learnable row per visual word.

Like a text embedding table, integer ids look rows up; unlike it, a float input ``[.., K]`` of
probabilities mixes rows: ``probs @ E``. A visual token's embedding is the expectation of the
embeddings of its visual words (DESIGN §1). The last n rows are the indicator tokens.

    ids   [..]     -> E[ids]      [.., D]
    probs [.., K]  -> probs @ E   [.., D]
"""

from __future__ import annotations

import torch
from torch import nn


class VisualEmbeddingTable(nn.Embedding):
    """``nn.Embedding`` whose float inputs are distributions over its rows."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Embedding's name)
        if input.is_floating_point():
            return torch.matmul(input.to(self.weight.dtype), self.weight)  # [.., K] @ [K, D] -> [.., D]
        return super().forward(input)
