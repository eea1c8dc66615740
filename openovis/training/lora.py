"""LoRA adapters (peft) on the LLM, optionally the vision backbone, merged back when a stage ends.

Only adapter weights train under a LoRA-wrapped module; the module-LR map still says which modules
train and at what rate (e.g. ``llm: 2e-4`` trains the LLM's adapters, ``vte: 1e-4`` the full VET).
"""

from __future__ import annotations

from torch import nn

from openovis.training.recipe import LoraSpec

LORA_PREFIXES = ("llm.", "visual_tokenizer.backbone.")


def add_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Wraps ``model.llm`` (and ``model.visual_tokenizer.backbone`` if asked) with LoRA adapters."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=list(spec.target_modules)
    )
    model.llm = get_peft_model(model.llm, config)
    if spec.on_backbone:
        model.visual_tokenizer.backbone = get_peft_model(model.visual_tokenizer.backbone, config)
    return model


def is_lora_wrapped(model: nn.Module) -> tuple[bool, bool]:
    from peft import PeftModel

    return isinstance(model.llm, PeftModel), isinstance(model.visual_tokenizer.backbone, PeftModel)


def trainable_under_lora(model: nn.Module):
    """A predicate on parameter names: under a LoRA-wrapped module only adapter weights train."""
    llm, backbone = is_lora_wrapped(model)
    wrapped = [p for p, on in zip(LORA_PREFIXES, (llm, backbone), strict=True) if on]

    def trainable(name: str) -> bool:
        return not any(name.startswith(p) for p in wrapped) or "lora_" in name

    return trainable


def merge_lora(model: nn.Module) -> nn.Module:
    """Merges adapters into the base weights, restoring the plain module layout and checkpoint keys."""
    llm, backbone = is_lora_wrapped(model)
    if llm:
        model.llm = model.llm.merge_and_unload()
    if backbone:
        model.visual_tokenizer.backbone = model.visual_tokenizer.backbone.merge_and_unload()
    return model
