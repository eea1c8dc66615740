"""Ovis patch features from any transformers vision encoder.

Notation: B crops, P patches per crop (a g×g grid), d backbone width.

    pixel_values [B, 3, S, S] -> vision model -> features [B, P, d]

Ovis takes the encoder's last hidden state *before* any final norm of the backbone (the official
code reads ``hidden_states[-1]``); transformers' Ovis2 applies the final norm (``post_norm``).
A leading CLS token (CLIP) is dropped. SigLIP2's NaFlex encoder takes pre-cut patches, so square
images are patchified here. The vision model itself is stored unwrapped, so checkpoint keys are the
official ``visual_tokenizer.backbone.*``.
"""

from __future__ import annotations

import copy

import torch
from transformers import PretrainedConfig, PreTrainedModel

# Pooling heads computed by some backbones' forward but never used by Ovis; switched off so that
# their parameters are neither built nor left without gradients (which DDP rejects).
_HEAD_FLAGS = ("vision_use_head", "use_head")
_NAFLEX_TYPES = ("siglip2_vision_model",)


def backbone_config(config: PretrainedConfig) -> PretrainedConfig:
    """Returns a copy of a vision config with pooling heads switched off."""
    config = copy.deepcopy(config)
    for flag in _HEAD_FLAGS:
        if hasattr(config, flag):
            setattr(config, flag, False)
    return config


# Final norms whose output Ovis does not use: always for CLIP (it normalizes only the pooled CLS
# token), and with pre-norm features for the others. Training freezes them (DDP rejects parameters
# that get no gradient).
_FINAL_NORMS = {"post_layernorm", "rms_norm"}
_WRAPPED_FINAL_NORMS = {"vision_model.post_layernorm"}  # the NaViT encoder keeps the official wrapper


def unused_parameter_names(model: PreTrainedModel, feature: str) -> list[str]:
    """Names (relative to the backbone) of parameters that never reach Ovis's features."""
    always = model.config.model_type == "clip_vision_model"
    if feature == "post_norm" and not always:
        return []
    return [
        f"{path}.{name}"
        for path, module in model.named_modules()
        if path in _FINAL_NORMS or path in _WRAPPED_FINAL_NORMS
        for name, _ in module.named_parameters()
    ]


def backbone_features(
    model: PreTrainedModel, pixel_values: torch.Tensor, patch_size: int, feature: str = "pre_norm"
) -> torch.Tensor:
    """Runs a vision model on square crops and returns its patch features.

    Args:
        model: A transformers vision model (CLIP, SigLIP, SigLIP2, AIMv2, ...).
        pixel_values: ``[B, 3, S, S]``.
        patch_size: The model's patch side in pixels.
        feature: ``pre_norm`` (official Ovis) or ``post_norm`` (transformers' Ovis2).

    Returns:
        ``[B, P, d]`` with P = (S / patch_size)².
    """
    num_patches = (pixel_values.shape[-1] // patch_size) ** 2
    if model.config.model_type in _NAFLEX_TYPES:
        inputs = _naflex_inputs(pixel_values, patch_size)
    else:
        inputs = {"pixel_values": pixel_values}
    out = model(**inputs, output_hidden_states=feature == "pre_norm", return_dict=True)
    features = out.hidden_states[-1] if feature == "pre_norm" else out.last_hidden_state  # [B, P(+1), d]
    if features.shape[1] == num_patches + 1:  # CLS first (CLIP)
        features = features[:, 1:]
    if features.shape[1] != num_patches:
        raise ValueError(
            f"vision backbone returned {features.shape[1]} tokens per crop, expected {num_patches} "
            f"({pixel_values.shape[-1]}-px crops / {patch_size}-px patches)"
        )
    return features  # [B, P, d]


def _naflex_inputs(pixel_values: torch.Tensor, patch_size: int) -> dict[str, torch.Tensor]:
    """Cuts square images into SigLIP2's patch sequence (row-major patches, channels last)."""
    b, c, h, w = pixel_values.shape
    p = patch_size
    gh, gw = h // p, w // p
    patches = pixel_values.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1)  # [B, gh, gw, p, p, C]
    patches = patches.reshape(b, gh * gw, p * p * c)  # [B, P, p·p·C]
    mask = torch.ones(b, gh * gw, dtype=torch.long, device=pixel_values.device)
    shapes = torch.tensor([[gh, gw]] * b, dtype=torch.long, device=pixel_values.device)
    return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}
