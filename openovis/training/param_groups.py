"""Per-module learning rates: which parameters train, and at what rate.

A stage's ``module_lr`` maps module names (`recipe.MODULE_KEYS`) to rates. A name covers parameter-name
prefixes: ``all`` everything, ``visual_tokenizer.backbone.last_block`` the backbone's last encoder
layer (whatever the backbone calls it), any other name that module path, plus the parts of the
connector it declares (`Connector.lr_keys`: the VET puts its head under ``visual_tokenizer`` and
``visual_tokenizer.head``, its table under ``vte``; other connectors are ``connector``). Each
parameter takes the rate of the *longest* prefix that contains it (the longer name on a tie); a
parameter no name covers, or whose rate is 0, is frozen (``requires_grad=False``) and left out of the
optimizer, and so is a backbone final norm whose output Ovis never uses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from openovis.modeling.backbone import unused_parameter_names
from openovis.modeling.connector import PREFIX as CONNECTOR

LAST_BLOCK = "visual_tokenizer.backbone.last_block"


def last_block_prefix(model: nn.Module) -> str:
    """Module path of the vision backbone's last encoder layer (the longest ModuleList of blocks)."""
    backbone = model.visual_tokenizer.backbone
    lists = [(name, m) for name, m in backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError("visual_tokenizer.backbone.last_block: the backbone has no list of layers")
    name, layers = max(lists, key=lambda item: len(item[1]))
    return f"visual_tokenizer.backbone.{name}.{len(layers) - 1}"


def module_prefixes(model: nn.Module, key: str) -> list[str]:
    """The parameter-name prefixes a ``module_lr`` key covers (``""``: every parameter)."""
    if key == "all":
        return [""]
    if key == LAST_BLOCK:
        return [last_block_prefix(model)]
    declared = type(model.connector).lr_keys
    own = [f"{CONNECTOR}.{sub}" if sub else CONNECTOR for sub in declared.get(key, ())]
    inside = key == CONNECTOR or key.startswith(CONNECTOR + ".")
    return own if inside and key in declared else [*own, key]


def _prefixes(model: nn.Module, module_lr: dict[str, float]) -> list[tuple[str, str, float]]:
    """(key, parameter-name prefix, rate), longest prefix first (then the longest key)."""
    out = [(key, prefix, lr) for key, lr in module_lr.items() for prefix in module_prefixes(model, key)]
    return sorted(out, key=lambda item: (len(item[1]), len(item[0])), reverse=True)


def assign_learning_rates(model: nn.Module, module_lr: dict[str, float]) -> dict[str, float]:
    """Maps every parameter name to its rate (0 = frozen), by longest matching module prefix."""
    prefixes = _prefixes(model, module_lr)
    backbone = model.visual_tokenizer.backbone
    unused = {
        f"visual_tokenizer.backbone.{n}"
        for n in unused_parameter_names(backbone, model.config.backbone_feature)
    }
    rates = {}
    for name, _ in model.named_parameters():
        rates[name] = 0.0
        for _key, prefix, lr in prefixes:
            if _under(name, prefix):
                rates[name] = 0.0 if name in unused else lr
                break
    for key, lr in module_lr.items():
        covered = [p for k, p, _ in prefixes if k == key]
        if lr > 0 and "" not in covered and not any(_under(n, p) for n in rates for p in covered):
            raise ValueError(
                f"module_lr.{key}: the model (connector {model.config.connector!r}) has no parameters under "
                f"{(', '.join(covered) or key)!r}"
            )
    return rates


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def param_groups(
    model: nn.Module,
    module_lr: dict[str, float],
    weight_decay: float = 0.0,
    trainable: Callable[[str], bool] | None = None,
) -> list[dict]:
    """Freezes what has rate 0 and returns AdamW parameter groups, one per distinct rate.

    Args:
        model: The (unwrapped) Ovis model.
        module_lr: Module name -> rate (see `recipe.MODULE_KEYS`).
        weight_decay: AdamW weight decay of every group.
        trainable: Optional extra filter on parameter names (e.g. only LoRA adapters under the LLM).

    Returns:
        Groups with ``params``, ``lr`` and ``names`` (for inspection and tests).
    """
    rates = assign_learning_rates(model, module_lr)
    groups: dict[float, dict] = {}
    for name, param in model.named_parameters():
        lr = rates[name] if trainable is None or trainable(name) else 0.0
        param.requires_grad_(lr > 0)
        if lr > 0:
            group = groups.setdefault(lr, {"params": [], "names": [], "lr": lr})
            group["params"].append(param)
            group["names"].append(name)
    for group in groups.values():
        group["weight_decay"] = weight_decay
    return list(groups.values())


def reinit_last_block(model: nn.Module) -> str:
    """Re-initializes the backbone's last block with the backbone's own initializer (paper, stage 1)."""
    prefix = last_block_prefix(model)
    block = model.get_submodule(prefix)
    backbone = model.visual_tokenizer.backbone
    with torch.no_grad():
        for module in block.modules():
            if hasattr(module, "_is_hf_initialized"):
                module._is_hf_initialized = False
            if hasattr(backbone, "_init_weights"):
                backbone._init_weights(module)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return prefix
