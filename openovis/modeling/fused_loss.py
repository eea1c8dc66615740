"""A causal LM's forward with the loss computed by `openovis.ops.linear_ce` instead of from logits.

Notation: B rows, L positions, D LLM width, V text vocabulary.

    inputs_embeds [B, L, D] -> the LLM's base model -> hidden [B, L, D]
    loss = Σ CE(hidden[:, :-1] Wᵀ, labels[:, 1:]) / (num_items_in_batch or the number of targets)

This is exactly the LLM's own ``ForCausalLMLoss`` (shift by one, ``ignore_index`` -100, fp32 logits,
``sum / num_items_in_batch`` when the training loop passes it, else the mean), without the ``[B, L, V]``
logits; the returned output has ``logits=None``. LLMs whose logits are more than ``lm_head(hidden)``
(a bias, Gemma2's final soft-capping, a logit scale) fall back to the LLM's own forward.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from openovis.constants import IGNORE_INDEX
from openovis.ops.linear_ce import linear_cross_entropy

logger = logging.getLogger(__name__)

# text-config fields that change logits beyond ``lm_head(hidden)``, with their neutral values
_LOGIT_FIELDS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}


def fused_loss_applies(llm: PreTrainedModel) -> bool:
    """Whether the LLM's logits are a plain bias-free ``lm_head(hidden)`` (so the fused loss is exact)."""
    head = llm.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        return False
    return all(getattr(llm.config, f, neutral) in (neutral, None) for f, neutral in _LOGIT_FIELDS.items())


def forward_with_fused_loss(
    llm: PreTrainedModel,
    impl: str,
    *,
    inputs_embeds: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    **kwargs: Any,
) -> CausalLMOutputWithPast:
    """Runs ``llm`` on ``inputs_embeds`` and returns its output with the loss of ``labels`` and no logits.

    Args:
        llm: A transformers causal LM (``base_model`` + ``get_output_embeddings()``).
        impl: `openovis.ops.linear_ce.linear_cross_entropy`'s ``impl``.
        inputs_embeds: ``[B, L, D]``.
        labels: ``[B, L]``, unshifted, ``-100`` where no loss is taken.
        num_items_in_batch: Divide the summed loss by this (the global token count) instead of the
            number of this batch's targets.
        kwargs: Passed to the base model (attention_mask, position_ids, past_key_values, ...).
    """
    if not fused_loss_applies(llm):
        logger.info("loss_impl=%s: this LLM's logits are not a plain lm_head; using its own loss", impl)
        return llm(
            inputs_embeds=inputs_embeds, labels=labels, num_items_in_batch=num_items_in_batch, **kwargs
        )
    kwargs.pop("logits_to_keep", None)
    out = llm.base_model(inputs_embeds=inputs_embeds, **kwargs)
    hidden = out.last_hidden_state[:, :-1]  # [B, L-1, D]
    targets = labels[:, 1:].to(hidden.device)  # [B, L-1]
    weight = llm.get_output_embeddings().weight  # [V, D]
    total = linear_cross_entropy(
        hidden, weight, targets, ignore_index=IGNORE_INDEX, reduction="sum", impl=impl
    )
    if num_items_in_batch is None:
        denominator = (targets != IGNORE_INDEX).sum().clamp(min=1)
    else:
        denominator = torch.as_tensor(num_items_in_batch, device=total.device)
    return CausalLMOutputWithPast(
        loss=total / denominator,
        logits=None,
        past_key_values=getattr(out, "past_key_values", None),
        hidden_states=out.hidden_states,
        attentions=out.attentions,
    )
