"""The modes a model config or an op (VET, linear CE) may take: one ``Literal`` each, and its check.

A leaf module (it imports nothing from openovis), so that the configuration, the ops and the
converters share one declaration of every mode. Connectors are the one open set: not a ``Literal``
but the registry `CONNECTORS`, which users extend (`openovis.modeling.connector.register_connector`).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

TokenizeFunction = Literal["softmax", "st_argmax", "gumbel_argmax"]
"""How head logits become a distribution over visual words (`openovis.ops.vet.tokenize`)."""

VetImpl = Literal["reference", "chunked", "auto"]
"""Which implementation computes ``softmax(LN(x W)) @ E`` (`openovis.ops.vet.vet_embed`)."""

RowKernels = Literal["auto", "triton", "torch"]
"""The chunked VET op's LayerNorm/softmax row ops: Triton on CUDA when importable, or torch."""

LossImpl = Literal["reference", "chunked", "liger", "auto"]
"""How a forward with labels computes the LM loss: the LLM's own (``reference``, with logits), or without
``[tokens, vocab]`` logits (`openovis.ops.linear_ce.linear_cross_entropy`)."""

BackboneFeature = Literal["pre_norm", "post_norm"]
"""The backbone's last hidden state before (official Ovis) or after (transformers' Ovis2) its final norm."""

ConversionDirection = Literal["hf_to_openovis", "openovis_to_hf"]
"""Which way `openovis.convert.ovis2_hf` renames a checkpoint."""

CheckpointLayout = Literal["official", "official-2.5", "hf-ovis2", "openovis"]
"""The layout of a saved folder (`openovis.convert.folders.detect_layout`): the official AIDC-AI Ovis
1.x/2 (``visual_tokenizer_config``) or 2.5 (``vit_config``), transformers' Ovis2, or openovis."""

ConversionTarget = Literal["openovis", "official", "hf-ovis2"]
"""The layout ``openovis convert --to`` writes."""

Device = Literal["auto", "cpu", "cuda"]
"""Where a model runs: ``auto`` is CUDA when present, else the CPU (training picks its own through accelerate)."""

CONNECTORS: dict[str, type] = {}
"""Connector name -> its `openovis.modeling.connector.Connector` class; ``OvisConfig.connector`` names one.
Filled by ``register_connector``: importing openovis registers the built-in ``vet`` and ``mlp``."""


def check_choice(field: str, value: Any, literal: Any) -> None:
    """Raises ``ValueError`` naming ``field`` unless ``value`` is one of the ``Literal``'s choices."""
    choices = get_args(literal)
    if value not in choices:
        raise ValueError(f"{field}: must be one of {choices}, got {value!r}")


def check_device(device: str) -> None:
    """Raises ``ValueError`` naming the field when ``device`` is not a `Device`."""
    check_choice("device", device, Device)


def torch_device(device: Device) -> Any:
    """The ``torch.device`` of a `Device`: ``auto`` is CUDA when available, else the CPU."""
    import torch

    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
