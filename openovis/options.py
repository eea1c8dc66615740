"""The modes a model config or the VET op may take: one ``Literal`` each, and the one check against it.

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

BackboneFeature = Literal["pre_norm", "post_norm"]
"""The backbone's last hidden state before (official Ovis) or after (transformers' Ovis2) its final norm."""

ConversionDirection = Literal["hf_to_openovis", "openovis_to_hf"]
"""Which way `openovis.convert.ovis2_hf` renames a checkpoint."""

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
