"""The paper's baseline connector: a LLaVA-style two-layer MLP projector.

It replaces head + tokenize + VET after the same hidden-stride merge, so the ablation changes
nothing else (DESIGN §1). Indicator positions keep their text embeddings: the MLP has no table.
F = d·s² merged feature width, H hidden width (``mlp_hidden_size``, default D), D LLM width.

    features [C, T, F] -> Linear(F, H) -> GELU -> Linear(H, D) -> [C, T, D]

An ``nn.Sequential``, so its keys are ``connector.0.*`` and ``connector.2.*`` in memory and on disk.
"""

from __future__ import annotations

from torch import nn

from openovis.configuration import OvisConfig
from openovis.modeling.connector import Connector, register_connector


@register_connector("mlp")
class MLPConnector(nn.Sequential, Connector):
    """``Linear(F, H) -> GELU -> Linear(H, D)``."""

    def __init__(self, config: OvisConfig):
        width = config.text_config.hidden_size
        hidden = config.mlp_hidden_size or width
        super().__init__(nn.Linear(config.visual_feature_size, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.out_init_std = config.mlp_out_init_std

    def init_std(self, module: nn.Module) -> float | None:
        """``mlp_out_init_std`` for the output layer (visual tokens at a chosen scale), else the default."""
        return self.out_init_std if module is self[-1] else None
