"""The paper's baseline connector: a LLaVA-style two-layer MLP projector.

It replaces head + tokenize + VET after the same hidden-stride merge, so the ablation changes
nothing else (DESIGN §1). Indicator positions keep their text embeddings: the MLP has no table.

    features [N, F] -> Linear(F, H) -> GELU -> Linear(H, D) -> [N, D]
"""

from __future__ import annotations

from torch import nn


class MLPConnector(nn.Sequential):
    """``Linear(F, H) -> GELU -> Linear(H, D)``."""

    def __init__(self, in_features: int, hidden_size: int, out_features: int):
        super().__init__(nn.Linear(in_features, hidden_size), nn.GELU(), nn.Linear(hidden_size, out_features))
