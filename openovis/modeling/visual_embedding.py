"""The visual embedding table (VET) and Ovis's connector built on it (DESIGN §1).

Notation: C crops, T visual tokens per crop, F = d·s² merged feature width, K visual vocabulary size,
n indicator tokens, D LLM width.

    features [C, T, F]
      -> head: Linear(F, K-n, bias=False), LayerNorm(K-n)     logits [C, T, K-n]
      -> tokenize (softmax | st_argmax | gumbel_argmax)        probs  [C, T, K-n]
      -> pad n zero columns (the indicator rows)               probs  [C, T, K]
      -> probs @ E, E the VET [K, D]                           embeddings [C, T, D]
    indicator i embeds as VET row K - n + i

A visual token's embedding is the expectation of the embeddings of its visual words. The maths is
`openovis.ops.vet` (``vet_impl``: the official formulation, or a fused op that never materializes
``[C·T, K]``). Checkpoints keep the official names ``visual_tokenizer.head.{0,1}.*`` and ``vte.weight``.
"""

from __future__ import annotations

import torch
from torch import nn

from openovis.configuration import OvisConfig
from openovis.modeling.connector import Connector, register_connector
from openovis.ops.vet import reference_probs, vet_embed


class VisualEmbeddingTable(nn.Embedding):
    """``nn.Embedding`` whose float inputs are distributions over its rows: ids ``[..]`` look rows up
    (``E[ids]``), probabilities ``[.., K]`` mix them (``probs @ E``), both giving ``[.., D]``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Embedding's name)
        if input.is_floating_point():
            return torch.matmul(input.to(self.weight.dtype), self.weight)  # [.., K] @ [K, D] -> [.., D]
        return super().forward(input)


@register_connector("vet")
class VETConnector(Connector):
    """Ovis: the visual head, tokenize and the VET. ``head`` is ``nn.Sequential(Linear, LayerNorm)``."""

    lr_keys = {
        "visual_tokenizer": ("head",),  # the paper's visual tokenizer is the backbone and this head
        "visual_tokenizer.head": ("head",),
        "vte": ("vte",),
        "connector": (),  # in recipes, the MLP baseline's projector: setting it for a VET is an error
    }
    checkpoint_names = {"head": "visual_tokenizer.head", "vte": "vte"}  # the official Ovis keys

    def __init__(self, config: OvisConfig):
        super().__init__()
        self.config = config
        words = config.visual_vocab_size - config.num_indicators  # K - n
        self.head = nn.Sequential(
            nn.Linear(config.visual_feature_size, words, bias=False),
            nn.LayerNorm(words, eps=config.head_norm_eps),
        )
        self.vte = VisualEmbeddingTable(config.visual_vocab_size, config.text_config.hidden_size)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[C, T, F]`` -> head logits after the LayerNorm ``[C, T, K-n]``."""
        return self.head(features)

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``[C, T, F]`` -> the distributions the VET mixes ``[C, T, K]`` (fp32; indicator columns 0)."""
        linear, norm = self.head
        cfg = self.config
        return reference_probs(
            features,
            linear.weight,
            norm.weight,
            norm.bias,
            num_indicators=cfg.num_indicators,
            tokenize=cfg.tokenize_function,
            temperature=cfg.tokenize_temperature,
            eps=norm.eps,
        )  # [C, T, K]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[C, T, F]`` -> ``probabilities @ E`` ``[C, T, D]``, by the ``vet_impl`` the config names."""
        linear, norm = self.head
        cfg = self.config
        return vet_embed(
            features,
            linear.weight,
            norm.weight,
            norm.bias,
            self.vte.weight,
            num_indicators=cfg.num_indicators,
            tokenize=cfg.tokenize_function,
            temperature=cfg.tokenize_temperature,
            eps=norm.eps,
            impl=cfg.vet_impl,
        )  # [C, T, D]

    def indicator_embeddings(self) -> torch.Tensor:
        """The last n VET rows ``[n, D]``: indicator i is row ``K - n + i``."""
        return self.vte.weight[self.config.visual_vocab_size - self.config.num_indicators :]
