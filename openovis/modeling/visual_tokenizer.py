"""The visual tokenizer: image crops -> merged patch features -> distributions over K visual words.

Notation: B crops, P = g² patches, d backbone width, s hidden_stride, T = ceil(g/s)² visual tokens,
F = d·s² merged feature width, K visual vocabulary size, n indicator tokens.

    pixel_values [B, 3, S, S]
      -> backbone                         [B, P, d]      (last hidden state before any post-norm)
      -> merge s×s neighbours             [B, T, F]      (grid zero-padded to a multiple of s)
      -> head: Linear(F, K-n, bias=False) [B, T, K-n]
      -> LayerNorm(K-n)                   [B, T, K-n]
      -> tokenize (softmax | st_argmax | gumbel_argmax) and pad n indicator columns -> [B, T, K]

The head is ``nn.Sequential(Linear, LayerNorm)`` so that its keys are the official ones
(``head.0.weight``, ``head.1.weight``, ``head.1.bias``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel

from openovis.configuration import OvisConfig
from openovis.modeling.backbone import backbone_config, backbone_features


def merge_hidden_stride(features: torch.Tensor, stride: int) -> torch.Tensor:
    """Concatenates each s×s block of neighbouring patch features (official Ovis2 order).

    Args:
        features: ``[B, P, d]`` with P a perfect square g².
        stride: s.

    Returns:
        ``[B, ceil(g/s)², d·s²]``; the g×g grid is zero-padded at the bottom/right to a multiple of s.
    """
    if stride == 1:
        return features
    b, p, d = features.shape
    g = math.isqrt(p)
    if g * g != p:
        raise ValueError(f"hidden_stride merge needs a square patch grid, got {p} patches")
    pad = (-g) % stride
    grid = features.reshape(b, g, g, d)
    grid = F.pad(grid, (0, 0, 0, pad, 0, pad))  # [B, g+pad, g+pad, d]
    m = (g + pad) // stride
    grid = grid.reshape(b, m, stride, m, stride, d).permute(0, 1, 3, 2, 4, 5)  # [B, m, m, s, s, d]
    return grid.reshape(b, m * m, stride * stride * d)  # [B, T, d·s²]


def tokenize(logits: torch.Tensor, function: str, temperature: float = 1.0) -> torch.Tensor:
    """Turns head logits into a distribution over visual words, in fp32.

    ``softmax``: ``softmax(l / τ)``. ``st_argmax`` is straight-through: a one-hot forward with the
    gradient of ``softmax(l / τ)``. ``gumbel_argmax`` is hard Gumbel-softmax, ``softmax((l + g) / τ)``
    as in the official code (there τ applies to the noisy logits).
    """
    logits = logits.float()  # [.., K-n]
    if function == "gumbel_argmax":
        logits = logits - torch.empty_like(logits).exponential_().log()  # + Gumbel(0, 1) noise
    soft = (logits / temperature).softmax(dim=-1)
    if function == "softmax":
        return soft
    index = soft.argmax(dim=-1, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return hard - soft.detach() + soft


class VisualTokenizer(nn.Module):
    """Backbone + merge (+ head for the VET connector); ``backbone`` is the unwrapped vision model."""

    def __init__(self, config: OvisConfig, backbone: PreTrainedModel | None = None):
        super().__init__()
        self.config = config
        self.backbone = (
            backbone if backbone is not None else AutoModel.from_config(backbone_config(config.vision_config))
        )
        if config.connector == "vet":
            head_out = config.visual_vocab_size - config.num_indicators
            self.head = nn.Sequential(
                nn.Linear(config.visual_feature_size, head_out, bias=False),
                nn.LayerNorm(head_out, eps=config.head_norm_eps),
            )
        else:
            self.head = None

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> merged features ``[B, T, F]``."""
        cfg = self.config
        patches = backbone_features(
            self.backbone, pixel_values, cfg.patch_size, cfg.backbone_feature
        )  # [B, P, d]
        return merge_hidden_stride(patches, cfg.hidden_stride)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Merged features ``[B, T, F]`` -> head logits after LayerNorm ``[B, T, K-n]``."""
        if self.head is None:
            raise ValueError("connector 'mlp' has no visual head: there are no visual-word logits")
        return self.head(features)

    def probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` -> visual-word distributions ``[B, T, K]`` (indicator columns are zero)."""
        logits = self.logits(self.features(pixel_values))
        probs = tokenize(
            logits, self.config.tokenize_function, self.config.tokenize_temperature
        )  # [B, T, K-n]
        return F.pad(probs, (0, self.config.num_indicators))  # [B, T, K]
