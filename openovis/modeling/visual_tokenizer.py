"""The visual tokenizer: image crops -> merged patch features, the input of the connector.

Notation: B crops, P = g² patches, d backbone width, s hidden_stride, T = ceil(g/s)² visual tokens,
F = d·s² merged feature width.

    pixel_values [B, 3, S, S]
      -> backbone                         [B, P, d]      (last hidden state before any post-norm)
      -> merge s×s neighbours             [B, T, F]      (grid zero-padded to a multiple of s)

With the NaViT encoder of Ovis2.5 (``config.native_resolution``) images keep their own size and
arrive packed (N rows, n images, ``grid_thw [n, 3]``); every s×s merge unit is s² consecutive rows::

    pixel_values [N, C·T·p²], grid_thw [n, 3]
      -> NaViT (`openovis.modeling.navit`)  [N, d]
      -> merge units (a reshape)            [1, N/s², F]   all visual tokens of the batch, in order

What follows is the connector's (`openovis.modeling.connector`): Ovis's head + VET
(`openovis.modeling.visual_embedding`, whose head keeps the official name ``visual_tokenizer.head``
in checkpoints) or the MLP baseline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel

from openovis.configuration import OvisConfig
from openovis.modeling.backbone import backbone_config, backbone_features
from openovis.modeling.navit import NavitModel, merge_units


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


class VisualTokenizer(nn.Module):
    """Backbone + merge; ``backbone`` is the unwrapped vision model (official keys ``visual_tokenizer.backbone.*``;
    the official Ovis2.5 calls its NaViT ``visual_tokenizer.vit``)."""

    def __init__(self, config: OvisConfig, backbone: PreTrainedModel | None = None):
        super().__init__()
        self.config = config
        if backbone is None:
            backbone = (
                NavitModel(config.vision_config)
                if config.native_resolution
                else AutoModel.from_config(backbone_config(config.vision_config))
            )
        self.backbone = backbone

    def features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 3, S, S]`` -> merged features ``[B, T, F]``; NaViT rows ``[N, C·T·p²]`` with
        ``grid_thw [n, 3]`` -> ``[1, N/s², F]``."""
        cfg = self.config
        if cfg.native_resolution:
            if grid_thw is None:
                raise ValueError("grid_thw: required with the NaViT backbone (one (t, h, w) row per image)")
            feats = self.backbone(pixel_values, grid_thw, feature=cfg.backbone_feature)  # [N, d]
            return merge_units(feats, cfg.hidden_stride).unsqueeze(0)  # [1, N/s², F]
        if grid_thw is not None:
            raise ValueError("grid_thw: only the NaViT backbone takes it; this model takes square crops")
        patches = backbone_features(
            self.backbone, pixel_values, cfg.patch_size, cfg.backbone_feature
        )  # [B, P, d]
        return merge_hidden_stride(patches, cfg.hidden_stride)
