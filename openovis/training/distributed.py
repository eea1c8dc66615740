"""What training does differently when parameters are sharded (FSDP, DeepSpeed ZeRO-3).

Under DDP and ZeRO-1/2 every process holds whole parameters: the unwrapped model is saved as is.
Under FSDP and ZeRO-3 each process holds a shard, so:

- the final model of a stage is gathered with ``accelerator.get_state_dict`` (a collective: every
  process calls it; FSDP2 returns the full state dict on CPU on rank 0, ZeRO-3 the 16-bit
  consolidated one, which needs ``zero3_save_16bit_model: true``) and written by rank 0 with the
  model's ``save_pretrained(state_dict=...)``, so the checkpoint conversion mapping still writes the
  official names (`saved_final_model`);
- resumable checkpoints are ``accelerator.save_state`` / ``load_state``, which shard them as the
  accelerate config says (`openovis.training.checkpoint`);
- ZeRO-3 gathers a module's parameters only around that module's own ``forward``. The fused VET
  reads the head and table weights directly and the fused loss reads ``lm_head.weight``, so under
  ZeRO-3 the model is built with ``vet_impl="reference"`` and ``loss_impl="reference"``, the paths
  that call the modules (`forced_config`). FSDP2 unshards every parameter outside the wrapped
  blocks for the whole root forward, so direct reads there are safe and nothing is forced.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

ZERO3_CONFIG = {"vet_impl": "reference", "loss_impl": "reference"}
"""Model config under ZeRO-3: the VET and the loss through the modules' own ``forward``."""


def is_zero3(accelerator: Any) -> bool:
    """Whether the accelerator runs DeepSpeed ZeRO stage 3."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return False
    return accelerator.state.deepspeed_plugin.zero_stage == 3


def parameters_sharded(accelerator: Any) -> bool:
    """FSDP and ZeRO-3 shard parameters: outside the wrapped forward they cannot be read whole."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP or is_zero3(accelerator)


def forced_config(accelerator: Any) -> dict[str, Any]:
    """Config overrides the distributed setup requires (``ZERO3_CONFIG`` under ZeRO-3, else none)."""
    if not is_zero3(accelerator):
        return {}
    logger.info(
        "DeepSpeed ZeRO-3: using vet_impl='reference' and loss_impl='reference' (the fused VET and loss "
        "read weights outside their modules' forward, where ZeRO-3 does not gather them)"
    )
    return dict(ZERO3_CONFIG)


def check_stage_supported(accelerator: Any, lora: bool) -> None:
    """Refuses what is not supported with sharded parameters (merging LoRA into sharded weights)."""
    if lora and parameters_sharded(accelerator):
        raise ValueError(
            "LoRA stages are not supported under FSDP or DeepSpeed ZeRO-3 (merging the adapters needs "
            "whole weights); use DDP or ZeRO-2 for them"
        )


def saved_final_model(
    accelerator: Any, prepared: torch.nn.Module, folder: Path
) -> tuple[torch.nn.Module, dict[str, torch.Tensor] | None]:
    """Gathers a sharded model for saving; call on every process.

    Returns:
        The unwrapped model (whose ``save_pretrained`` names the files) and, on the main process, the
        full state dict to pass it as ``state_dict`` (None elsewhere, and None when nothing is sharded:
        then the unwrapped model's own weights are whole).
    """
    if not parameters_sharded(accelerator):
        return accelerator.unwrap_model(prepared), None
    state_dict = accelerator.get_state_dict(prepared)  # collective: every process must call it
    logger.info("gathered the sharded model (%d tensors) to save %s", len(state_dict or {}), folder)
    return accelerator.unwrap_model(prepared), (state_dict if accelerator.is_main_process else None)
