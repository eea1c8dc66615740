"""Training-speed levers applied to a built model, each switchable on its own (README, "Performance").

    levers = SpeedSpec(compile_llm=True, activation_checkpointing="selective", pack_length=4096)
    apply_speed_levers(model, levers)          # in place; state-dict keys are unchanged

- ``compile_llm``: ``torch.compile`` each decoder block of the LLM (``nn.Module.compile``, in place).
  Blocks share one compiled graph (parameters are graph inputs); the first steps pay the compile
  time, and each new sequence length may recompile until dynamo marks the length dynamic.
- ``activation_checkpointing``: per LLM decoder block, ``full`` keeps only the block's input and
  recomputes the whole block in the backward (as ``gradient_checkpointing_enable``); ``selective``
  keeps the outputs of the GEMMs and of attention and recomputes only the cheap element-wise ops
  (norms, RoPE, activations, residual adds) — most of the memory of ``full``'s saving's complement
  for a few percent of extra time (torch's selective activation checkpointing, ``context_fn``).
- ``pack_length``: the training loop packs samples into rows of this many tokens
  (`openovis.processing.packing.PackingCollator`); not applied here.

The fused VET (``OvisConfig.vet_impl``) and the loss without logits (``OvisConfig.loss_impl``) are
model-config levers; see `openovis.ops.vet` and `openovis.ops.linear_ce`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from openovis.options import check_choice

ActivationCheckpointing = Literal["off", "selective", "full"]


@dataclass(frozen=True)
class SpeedSpec:
    """Which training-speed levers are on (all off by default)."""

    compile_llm: bool = False
    """``torch.compile`` every LLM decoder block (pays on CUDA; on a CPU the compile rarely pays back)."""
    activation_checkpointing: ActivationCheckpointing = "off"
    """Recompute LLM decoder blocks in the backward: ``off`` | ``selective`` | ``full``."""
    pack_length: int | None = None
    """Pack samples into rows of this many tokens (None: pad each batch to its longest sample)."""

    def __post_init__(self) -> None:
        check_choice("activation_checkpointing", self.activation_checkpointing, ActivationCheckpointing)
        if self.pack_length is not None and self.pack_length < 1:
            raise ValueError(f"pack_length: must be >= 1, got {self.pack_length}")


def llm_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of an Ovis model's LLM (``llm.base_model.layers``: Llama, Qwen2/3, Gemma, …)."""
    blocks = getattr(model.llm.base_model, "layers", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{type(model.llm).__name__}: no decoder blocks at llm.base_model.layers")
    return blocks


# Ops whose outputs selective checkpointing keeps: the GEMMs and attention (costly to recompute).
_SAVED_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
}


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts() -> Any:
    return create_selective_checkpoint_contexts(_selective_policy)


def checkpoint_block(block: nn.Module, mode: ActivationCheckpointing) -> None:
    """Makes ``block`` recompute its activations in the backward (``selective`` or ``full``), in place."""
    if mode == "off":
        return
    forward = block.forward
    context_fn = _selective_contexts if mode == "selective" else None

    @functools.wraps(forward)
    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        if not (block.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        extra = {"context_fn": context_fn} if context_fn is not None else {}
        return checkpoint(forward, *args, use_reentrant=False, **extra, **kwargs)

    block.forward = checkpointed


def apply_speed_levers(model: nn.Module, spec: SpeedSpec) -> nn.Module:
    """Applies the model-side levers of ``spec`` to an Ovis model in place and returns it.

    Idempotent: a block that already has levers keeps them (the training run applies the levers
    before every stage, and a stage may continue with the previous stage's model).
    """
    for block in llm_blocks(model):
        if getattr(block, "_openovis_speed", None) is not None:
            continue
        checkpoint_block(block, spec.activation_checkpointing)
        if spec.compile_llm:
            block.compile()
        block._openovis_speed = spec
    return model
