"""Conversion between openovis and transformers' native Ovis2 (``Ovis2ForConditionalGeneration``).

An openovis model whose backbone is transformers' ``Aimv2VisionModel`` (``use_head=False``,
``is_native=False``) holds exactly the tensors of ``Ovis2ForConditionalGeneration``; only the names
differ. The openovis names are those of its checkpoints (the official Ovis ones; in memory the head
and VET sit under ``connector.``, see `openovis.modeling.connector.to_checkpoint_names`). With K the
visual vocabulary, n indicators, d the ViT width, s the hidden stride, D the LLM width and V the
text vocabulary::

    openovis                                              transformers Ovis2
    visual_tokenizer.backbone.embeddings.patch_embed.*    model.vision_tower.transformer.embeddings.patch_embedding.*
    visual_tokenizer.backbone.*          (rest of AIMv2)  model.vision_tower.transformer.*
    visual_tokenizer.head.0.weight       [K-n, d·s²]      model.vision_tower.head_linear.weight
    visual_tokenizer.head.1.{weight,bias} [K-n]           model.vision_tower.head_norm.{weight,bias}
    vte.weight                           [K, D]           model.visual_embeddings_table.weight
    llm.model.*                                           model.language_model.*
    llm.lm_head.weight                   [V, D]           lm_head.weight

Numerics. Every op is the same, bar one: transformers' Ovis2 feeds the head the encoder output
*after* its final RMSNorm (``model.vision_tower.transformer.rms_norm``), while the official Ovis2
takes ``hidden_states[-1]``, before it. openovis does either (``OvisConfig.backbone_feature``);
converting from transformers defaults to ``post_norm`` so that logits match, and ``pre_norm``
gives the official numerics on the same weights. The final norm mixes each patch's own RMS into
the merged s×s token, so no change of weights turns one into the other: a ``pre_norm`` model
cannot be expressed as a transformers Ovis2 model, and exporting one needs ``accept_post_norm``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Aimv2VisionConfig, Ovis2Config, Ovis2ForConditionalGeneration, PretrainedConfig
from transformers.models.ovis2.configuration_ovis2 import Ovis2VisionConfig

from openovis.configuration import OvisConfig
from openovis.constants import INDICATOR_TOKENS_OVIS1, INDICATOR_TOKENS_OVIS2
from openovis.modeling.connector import from_checkpoint_names, to_checkpoint_names
from openovis.modeling.ovis import OvisForConditionalGeneration
from openovis.options import BackboneFeature, ConversionDirection, check_choice

StateDict = dict[str, torch.Tensor]

# (openovis, transformers) key prefixes; the first match wins, so the specific ones come first.
KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    (
        "visual_tokenizer.backbone.embeddings.patch_embed.",
        "model.vision_tower.transformer.embeddings.patch_embedding.",
    ),
    ("visual_tokenizer.backbone.", "model.vision_tower.transformer."),
    ("visual_tokenizer.head.0.", "model.vision_tower.head_linear."),
    ("visual_tokenizer.head.1.", "model.vision_tower.head_norm."),
    ("vte.", "model.visual_embeddings_table."),
    ("llm.model.", "model.language_model."),
    ("llm.lm_head.", "lm_head."),
)

# AIMv2 encoder fields that Ovis2VisionConfig and Aimv2VisionConfig share with the same meaning.
_VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "image_size",
    "patch_size",
    "rms_norm_eps",
    "attention_dropout",
    "qkv_bias",
    "mlp_bias",
    "hidden_act",
    "initializer_range",
)
# transformers' Ovis2VisionModel builds its head LayerNorm with torch's default epsilon.
HF_HEAD_NORM_EPS = 1e-5
# Fields of a causal LM config that change logits beyond ``lm_head(hidden)``; Ovis2 runs the bare
# base model and a plain ``lm_head``, so such LLMs have no exact transformers-Ovis2 form.
_LOGIT_FIELDS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}
# Files of a checkpoint folder copied unchanged: tokenizer and generation settings.
PASSTHROUGH_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


# ---- keys -------------------------------------------------------------------------------------------
def rename_key(
    key: str, direction: ConversionDirection, prefixes: tuple[tuple[str, str], ...] = KEY_PREFIXES
) -> str | None:
    """Renames one key; ``None`` when no prefix rule covers it."""
    for ours, theirs in prefixes:
        src, dst = (theirs, ours) if direction == "hf_to_openovis" else (ours, theirs)
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def rename_state_dict(state_dict: Mapping[str, torch.Tensor], direction: ConversionDirection) -> StateDict:
    """Renames every key of a state dict (tensors are shared, not copied).

    Raises:
        ValueError: Listing every key that no rule maps; nothing is dropped silently.
    """
    _check_direction(direction)
    out: StateDict = {}
    unmapped = []
    for key, tensor in state_dict.items():
        new = rename_key(key, direction)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = tensor
    if unmapped:
        raise ValueError(f"{len(unmapped)} keys have no {direction} mapping: {sorted(unmapped)}")
    return out


def _check_direction(direction: str) -> None:
    check_choice("direction", direction, ConversionDirection)


# ---- configs ----------------------------------------------------------------------------------------
def _rebuilt(config: PretrainedConfig, **changes: Any) -> PretrainedConfig:
    """A new config of the same class with fields replaced (the input is never mutated)."""
    fields = {**config.to_dict(), **changes}
    fields.pop("model_type", None)
    return type(config)(**fields)


def default_indicator_tokens(n: int) -> tuple[str, ...]:
    """Indicator token names for n indicators: Ovis2's five, or Ovis 1.0's start/end."""
    for tokens in (INDICATOR_TOKENS_OVIS2, INDICATOR_TOKENS_OVIS1):
        if len(tokens) == n:
            return tokens
    raise ValueError(
        f"num_visual_indicator_tokens: no default token names for {n} indicators; pass indicator_tokens"
    )


def _special_ids(config: PretrainedConfig) -> dict[str, Any]:
    """bos/eos/pad ids a config sets (kept so that generation stops where it did)."""
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    return {k: getattr(config, k) for k in keys if getattr(config, k, None) is not None}


def openovis_config_from_hf_ovis2(
    hf_config: Ovis2Config, *, backbone_feature: BackboneFeature = "post_norm", **overrides: Any
) -> OvisConfig:
    """The `OvisConfig` of a transformers Ovis2 config.

    Args:
        hf_config: An ``Ovis2Config``.
        backbone_feature: ``post_norm`` reproduces transformers' logits; ``pre_norm`` the official ones.
        overrides: Further `OvisConfig` fields (e.g. ``vet_impl``, ``indicator_tokens``).
    """
    vc, tc = hf_config.vision_config, hf_config.text_config
    if hf_config.vocab_size != tc.vocab_size or hf_config.hidden_size != tc.hidden_size:
        raise ValueError(
            f"Ovis2Config: vocab_size/hidden_size ({hf_config.vocab_size}, {hf_config.hidden_size}) differ from "
            f"text_config's ({tc.vocab_size}, {tc.hidden_size}); lm_head and the VET would not fit the LLM"
        )
    n = vc.num_visual_indicator_tokens
    if len(hf_config.visual_indicator_token_ids) != n:
        raise ValueError(
            f"visual_indicator_token_ids: {len(hf_config.visual_indicator_token_ids)} ids for {n} indicator rows"
        )
    vision = Aimv2VisionConfig(**{f: getattr(vc, f) for f in _VISION_FIELDS}, use_head=False, is_native=False)
    # transformers' Ovis2 ties lm_head by its top-level flag; openovis lets the LLM tie its own.
    text = _rebuilt(tc, tie_word_embeddings=hf_config.tie_word_embeddings)
    fields: dict[str, Any] = {
        **_special_ids(tc),
        "vision_config": vision,
        "text_config": text,
        "visual_vocab_size": vc.vocab_size,
        "hidden_stride": vc.hidden_stride,
        "indicator_tokens": overrides.pop("indicator_tokens", None) or default_indicator_tokens(n),
        "tokenize_function": vc.tokenize_function,
        "tokenize_temperature": 1.0,
        "connector": "vet",
        "backbone_feature": backbone_feature,
        "head_norm_eps": HF_HEAD_NORM_EPS,
        "image_atom_id": hf_config.image_token_id,
        "indicator_token_ids": list(hf_config.visual_indicator_token_ids),
        "architectures": [OvisForConditionalGeneration.__name__],
    }
    return OvisConfig(**{**fields, **overrides})


def check_hf_ovis2_compatible(config: OvisConfig, *, accept_post_norm: bool = False) -> None:
    """Raises ``ValueError`` naming every field that transformers' Ovis2 cannot express."""
    vc = config.vision_config
    problems = []
    if config.connector != "vet":
        problems.append(f"connector={config.connector!r}: transformers' Ovis2 has only the VET")
    if getattr(vc, "model_type", None) != "aimv2_vision_model" or getattr(vc, "is_native", False):
        problems.append(
            f"vision_config: needs an Aimv2VisionConfig with is_native=False, got {type(vc).__name__}"
        )
    if config.tokenize_temperature != 1.0:
        problems.append(f"tokenize_temperature={config.tokenize_temperature}: Ovis2 has no temperature")
    if config.head_norm_eps != HF_HEAD_NORM_EPS:
        problems.append(
            f"head_norm_eps={config.head_norm_eps}: Ovis2's head LayerNorm uses {HF_HEAD_NORM_EPS}"
        )
    if config.image_atom_id is None or config.indicator_token_ids is None:
        problems.append("image_atom_id/indicator_token_ids: must be set")
    if config.backbone_feature == "pre_norm" and not accept_post_norm:
        problems.append(
            "backbone_feature='pre_norm': transformers' Ovis2 always applies the encoder's final RMSNorm; "
            "pass accept_post_norm=True (--accept-post-norm) to export anyway (the exported model computes different logits)"
        )
    for field, neutral in _LOGIT_FIELDS.items():
        value = getattr(config.text_config, field, neutral)
        if value != neutral:
            problems.append(f"text_config.{field}={value}: Ovis2 computes logits as a plain lm_head")
    if problems:
        raise ValueError("cannot express this model as transformers' Ovis2:\n  " + "\n  ".join(problems))


def hf_ovis2_config_from_openovis(config: OvisConfig, *, accept_post_norm: bool = False) -> Ovis2Config:
    """The ``Ovis2Config`` of an openovis config (see `check_hf_ovis2_compatible`)."""
    check_hf_ovis2_compatible(config, accept_post_norm=accept_post_norm)
    vc, tc = config.vision_config, config.text_config
    vision = Ovis2VisionConfig(
        **{f: getattr(vc, f) for f in _VISION_FIELDS},
        vocab_size=config.visual_vocab_size,
        hidden_stride=config.hidden_stride,
        num_visual_indicator_tokens=config.num_indicators,
        tokenize_function=config.tokenize_function,
    )
    return Ovis2Config(
        vision_config=vision,
        text_config=_rebuilt(tc),
        image_token_id=config.image_atom_id,
        visual_indicator_token_ids=list(config.indicator_token_ids),
        vocab_size=tc.vocab_size,
        hidden_size=tc.hidden_size,
        tie_word_embeddings=bool(getattr(tc, "tie_word_embeddings", False)),
        architectures=[Ovis2ForConditionalGeneration.__name__],
        **_special_ids(tc),
    )


# ---- loading a renamed state dict -------------------------------------------------------------------
# Everything here speaks checkpoint names (what ``save_pretrained`` writes); `to_checkpoint_names`
# is the identity on models other than openovis's, so the helpers serve transformers' Ovis2 as well.
def saved_state_dict(model: nn.Module) -> StateDict:
    """A model's tensors under its checkpoint names (shared, not copied)."""
    return to_checkpoint_names(model.state_dict())


def tied_groups(model: nn.Module) -> list[list[str]]:
    """Checkpoint names that share one parameter (e.g. a tied ``lm_head``), each group in module order."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [list(to_checkpoint_names(dict.fromkeys(names))) for names in groups.values() if len(names) > 1]


def complete_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Checks a state dict (checkpoint names) against a model's own and fills in keys of tied parameters.

    A checkpoint holds one name per tied parameter (``save_pretrained`` drops the others); any name
    of the group is accepted and the group's other names get the same tensor.

    Raises:
        ValueError: On missing keys, unexpected keys or shape mismatches, listing all of them.
    """
    expected = {k: v.shape for k, v in saved_state_dict(model).items()}
    state = dict(state_dict)
    for group in tied_groups(model):
        present = [name for name in group if name in state]
        if present:
            for name in group:
                state.setdefault(name, state[present[0]])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k])}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k]
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"state dict does not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}, "
            f"shape mismatches {shapes}"
        )
    return state


def _float_dtype(state_dict: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype of a state dict's floating tensors (the most common one)."""
    counts: dict[torch.dtype, int] = {}
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def load_exact(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Loads a complete state dict (checkpoint names; strict, tied names filled in) in its dtype; eval mode."""
    model.to(_float_dtype(state_dict))
    model.load_state_dict(from_checkpoint_names(complete_state_dict(model, state_dict)), strict=True)
    return model.eval()


# ---- models -----------------------------------------------------------------------------------------
def hf_ovis2_to_openovis(
    model_or_state_dict: Ovis2ForConditionalGeneration | Mapping[str, torch.Tensor],
    config: Ovis2Config | None = None,
    *,
    backbone_feature: BackboneFeature = "post_norm",
    **overrides: Any,
) -> OvisForConditionalGeneration:
    """Builds the openovis model holding a transformers Ovis2 model's weights.

    Args:
        model_or_state_dict: An ``Ovis2ForConditionalGeneration`` or its state dict.
        config: The ``Ovis2Config``; required with a state dict, else the model's own.
        backbone_feature: ``post_norm`` (logits equal transformers') or ``pre_norm`` (official Ovis).
        overrides: Further `OvisConfig` fields (e.g. ``vet_impl``).

    Returns:
        An `OvisForConditionalGeneration` in eval mode, in the checkpoint's dtype.
    """
    if isinstance(model_or_state_dict, Ovis2ForConditionalGeneration):
        config = config or model_or_state_dict.config
        state = model_or_state_dict.state_dict()
    elif config is None:
        raise ValueError("config: required when converting a bare state dict")
    else:
        state = dict(model_or_state_dict)
    ours = OvisForConditionalGeneration(
        openovis_config_from_hf_ovis2(config, backbone_feature=backbone_feature, **overrides)
    )
    return load_exact(ours, rename_state_dict(state, "hf_to_openovis"))


def openovis_to_hf_ovis2(
    model: OvisForConditionalGeneration, *, accept_post_norm: bool = False
) -> Ovis2ForConditionalGeneration:
    """Builds the transformers ``Ovis2ForConditionalGeneration`` holding an openovis model's weights.

    Args:
        model: An openovis model with an AIMv2 backbone and the VET connector.
        accept_post_norm: Export a ``pre_norm`` model even though transformers' Ovis2 will apply the
            encoder's final RMSNorm (as transformers' own conversion of the official Ovis2 does).

    Returns:
        An ``Ovis2ForConditionalGeneration`` in eval mode, in the model's dtype.
    """
    hf = Ovis2ForConditionalGeneration(
        hf_ovis2_config_from_openovis(model.config, accept_post_norm=accept_post_norm)
    )
    return load_exact(hf, rename_state_dict(saved_state_dict(model), "openovis_to_hf"))


# ---- checkpoint folders -----------------------------------------------------------------------------
def read_safetensors(folder: str | Path) -> StateDict:
    """All tensors of a ``save_pretrained`` folder (``model.safetensors`` or an indexed set of shards)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    state: StateDict = {}
    for name in files:
        state.update(load_file(folder / name))
    return state


def write_safetensors(
    state_dict: Mapping[str, torch.Tensor], folder: str | Path, max_shard_size: str = "5GB"
) -> None:
    """Writes tensors as ``save_pretrained`` does: one file, or shards plus an index."""
    folder = Path(folder)
    split = split_torch_state_dict_into_shards(dict(state_dict), max_shard_size=max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        shard = {k: state_dict[k].contiguous() for k in keys}
        save_file(shard, folder / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def checkpoint_state_dict(
    model_class: type[nn.Module], config: PretrainedConfig, state_dict: StateDict
) -> StateDict:
    """Validates a converted state dict against ``model_class(config)`` (built on the meta device, so
    nothing is allocated) and returns it with one name per tied parameter, as ``save_pretrained`` writes."""
    with torch.device("meta"):
        model = model_class(config)
    full = complete_state_dict(model, state_dict)
    dropped = {name for group in tied_groups(model) for name in group[1:]}
    return {k: v for k, v in full.items() if k not in dropped}


def copy_passthrough_files(src: Path, dst: Path) -> list[str]:
    """Copies tokenizer and generation files unchanged; returns their names."""
    copied = []
    for name in PASSTHROUGH_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def convert_hf_ovis2_checkpoint(
    src_dir: str | Path,
    dst_dir: str | Path,
    direction: ConversionDirection,
    *,
    backbone_feature: BackboneFeature = "post_norm",
    accept_post_norm: bool = False,
    max_shard_size: str = "5GB",
    **overrides: Any,
) -> Path:
    """Converts a saved folder between the transformers-Ovis2 and openovis layouts.

    Works on the tensors and ``config.json`` alone (no model is instantiated), so it handles real
    model sizes on a CPU; tokenizer and generation files are copied. The processor configs are not:
    the two image processors differ (see docs/conversion.md); `openovis.convert.convert_checkpoint`
    writes an openovis processor for the ``hf_to_openovis`` direction.

    Args:
        src_dir: A folder written by ``save_pretrained`` (safetensors).
        dst_dir: Output folder (created; existing files of the same names are overwritten).
        direction: ``hf_to_openovis`` or ``openovis_to_hf``.
        backbone_feature: For ``hf_to_openovis``: ``post_norm`` (transformers' logits) or ``pre_norm``.
        accept_post_norm: For ``openovis_to_hf``: allow exporting a ``pre_norm`` model.
        max_shard_size: Largest safetensors shard written.
        overrides: Further `OvisConfig` fields for ``hf_to_openovis``.

    Returns:
        ``dst_dir`` as a ``Path``.
    """
    _check_direction(direction)
    src, dst = Path(src_dir), Path(dst_dir)
    state = rename_state_dict(read_safetensors(src), direction)
    if direction == "hf_to_openovis":
        hf_config = Ovis2Config.from_pretrained(src)
        config: PretrainedConfig = openovis_config_from_hf_ovis2(
            hf_config, backbone_feature=backbone_feature, **overrides
        )
        state = checkpoint_state_dict(OvisForConditionalGeneration, config, state)
    else:
        if overrides:
            raise ValueError(f"overrides {sorted(overrides)}: only used for hf_to_openovis")
        config = hf_ovis2_config_from_openovis(
            OvisConfig.from_pretrained(src), accept_post_norm=accept_post_norm
        )
        state = checkpoint_state_dict(Ovis2ForConditionalGeneration, config, state)
    dst.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(dst)
    write_safetensors(state, dst, max_shard_size)
    copy_passthrough_files(src, dst)
    return dst
