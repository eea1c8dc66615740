"""Conversion between openovis and the official AIDC-AI Ovis layout (remote code, ``model_type: ovis``).

In openovis checkpoints the head, the VET and the LLM already have the official names (DESIGN §6;
in memory the head and VET sit under ``connector.``, see `openovis.modeling.connector`)::

    llm.*    visual_tokenizer.head.0.weight    visual_tokenizer.head.1.{weight,bias}    vte.weight

Backbones that are transformers classes in the official code as well (CLIP in Ovis 1.0, SigLIP in
Ovis 1.5/1.6) keep their keys, except that the official ``visual_tokenizer.backbone.vision_model.*``
(transformers 4's wrapper) loses ``vision_model.`` where the installed transformers builds these
models flat (transformers 5). Ovis2's AIMv2 encoder is
the official code's own module; its keys map to transformers' ``Aimv2VisionModel`` (both under
``visual_tokenizer.backbone.``; d the ViT width, P patches per crop)::

    official                                          openovis (Aimv2VisionModel)
    preprocessor.patchifier.proj.{weight,bias}        embeddings.patch_embed.{weight,bias}
    preprocessor.patchifier.norm.weight               embeddings.rms_norm.weight
    preprocessor.pos_embed             [1, P, d]      embeddings.position_embedding.weight  [P, d]
    trunk.blocks.{i}.attn.qkv.*        [3d, d]        encoder.layers.{i}.attention.{q,k,v}_proj.*  (thirds, in order)
    trunk.blocks.{i}.attn.proj.*                      encoder.layers.{i}.attention.out_proj.*
    trunk.blocks.{i}.norm_1.weight                    encoder.layers.{i}.rms_norm1.weight
    trunk.blocks.{i}.norm_2.weight                    encoder.layers.{i}.rms_norm2.weight
    trunk.blocks.{i}.mlp.fc1.*  (SiLU gate)           encoder.layers.{i}.ffn.gate_proj.*
    trunk.blocks.{i}.mlp.fc3.*  (up)                  encoder.layers.{i}.ffn.up_proj.*
    trunk.blocks.{i}.mlp.fc2.*  (down)                encoder.layers.{i}.ffn.down_proj.*
    trunk.post_trunk_norm.weight                      rms_norm.weight  (kept; official numerics skip it)

Ovis2.5's NaViT is the official code's own module too; `openovis.modeling.navit` uses its module
names, so only the prefix changes (``visual_tokenizer.vit.*`` <-> ``visual_tokenizer.backbone.*``);
its config is ``vit_config`` (`NavitConfig`), ``visual_vocab_size`` is K and the head leaves the
last 4 VET rows to the indicators (image start/end, video start/end).

The official code reads the encoder's ``hidden_states[-1]``, before ``post_trunk_norm``, so models
converted from it default to ``backbone_feature="pre_norm"``. Its input ids use negative
placeholders for the image atom and the indicators; openovis uses real tokens, so their ids (the
tokens added to the tokenizer) are given when converting.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Aimv2VisionConfig, AutoModel, PretrainedConfig

from openovis.configuration import NavitConfig, OvisConfig, _sub_config
from openovis.constants import INDICATOR_TOKENS_OVIS25
from openovis.convert.ovis2_hf import (
    StateDict,
    checkpoint_state_dict,
    copy_passthrough_files,
    default_indicator_tokens,
    load_exact,
    read_safetensors,
    saved_state_dict,
    write_safetensors,
)
from openovis.modeling.backbone import backbone_config
from openovis.modeling.ovis import OvisForConditionalGeneration
from openovis.options import BackboneFeature

BACKBONE = "visual_tokenizer.backbone."
OFFICIAL_AIMV2_TYPE = "aimv2"
# Backbones the official code takes from transformers (Ovis 1.0: CLIP; 1.5/1.6: SigLIP).
WRAPPED_TYPES = ("clip_vision_model", "siglip_vision_model")
# (official, openovis) key templates below ``visual_tokenizer.backbone.``; {i} a block, {p} weight|bias.
AIMV2_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("preprocessor.patchifier.proj.{p}", "embeddings.patch_embed.{p}"),
    ("preprocessor.patchifier.norm.weight", "embeddings.rms_norm.weight"),
    ("trunk.blocks.{i}.attn.proj.{p}", "encoder.layers.{i}.attention.out_proj.{p}"),
    ("trunk.blocks.{i}.norm_1.weight", "encoder.layers.{i}.rms_norm1.weight"),
    ("trunk.blocks.{i}.norm_2.weight", "encoder.layers.{i}.rms_norm2.weight"),
    ("trunk.blocks.{i}.mlp.fc1.{p}", "encoder.layers.{i}.ffn.gate_proj.{p}"),
    ("trunk.blocks.{i}.mlp.fc3.{p}", "encoder.layers.{i}.ffn.up_proj.{p}"),
    ("trunk.blocks.{i}.mlp.fc2.{p}", "encoder.layers.{i}.ffn.down_proj.{p}"),
    ("trunk.post_trunk_norm.weight", "rms_norm.weight"),
)
_POS_OFFICIAL, _POS_OURS = "preprocessor.pos_embed", "embeddings.position_embedding.weight"
_QKV_OFFICIAL = re.compile(r"trunk\.blocks\.(?P<i>\d+)\.attn\.qkv\.(?P<p>weight|bias)")
_QKV_OURS = re.compile(r"encoder\.layers\.(?P<i>\d+)\.attention\.(?P<x>[qkv])_proj\.(?P<p>weight|bias)")


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern)


_RULES = tuple((_template_regex(o), o, _template_regex(u), u) for o, u in AIMV2_TEMPLATES)


# ---- AIMv2 backbone keys ----------------------------------------------------------------------------
def _aimv2_from_official(key: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]] | None:
    """One official AIMv2 key (below the backbone prefix) -> openovis keys; ``None`` if unknown."""
    if key == _POS_OFFICIAL:
        return [(_POS_OURS, tensor.reshape(tensor.shape[-2:]))]  # [1, P, d] -> [P, d]
    qkv = _QKV_OFFICIAL.fullmatch(key)
    if qkv:
        q, k, v = tensor.chunk(3, dim=0)  # [3d, ...] -> 3 × [d, ...]
        i, p = qkv["i"], qkv["p"]
        return [
            (f"encoder.layers.{i}.attention.{x}_proj.{p}", t) for x, t in zip("qkv", (q, k, v), strict=True)
        ]
    for official, _, _, ours in _RULES:
        match = official.fullmatch(key)
        if match:
            return [(ours.format(**match.groupdict()), tensor)]
    return None


def _aimv2_to_official(keys: Mapping[str, torch.Tensor]) -> tuple[StateDict, list[str]]:
    """openovis AIMv2 keys (below the backbone prefix) -> official keys; also the unmapped keys."""
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unmapped = []
    for key, tensor in keys.items():
        if key == _POS_OURS:
            out[_POS_OFFICIAL] = tensor.unsqueeze(0)  # [P, d] -> [1, P, d]
            continue
        part = _QKV_OURS.fullmatch(key)
        if part:
            qkv.setdefault((part["i"], part["p"]), {})[part["x"]] = tensor
            continue
        for _, official, ours, _ in _RULES:
            match = ours.fullmatch(key)
            if match:
                out[official.format(**match.groupdict())] = tensor
                break
        else:
            unmapped.append(key)
    for (i, p), parts in qkv.items():
        if set(parts) != set("qkv"):
            unmapped += [f"encoder.layers.{i}.attention.{x}_proj.{p}" for x in parts]
            continue
        out[f"trunk.blocks.{i}.attn.qkv.{p}"] = torch.cat([parts[x] for x in "qkv"], dim=0)  # [3d, ...]
    return out, unmapped


def _split_backbone(state_dict: Mapping[str, torch.Tensor]) -> tuple[StateDict, StateDict]:
    """(backbone keys without the prefix, all other keys)."""
    backbone = {k[len(BACKBONE) :]: v for k, v in state_dict.items() if k.startswith(BACKBONE)}
    rest = {k: v for k, v in state_dict.items() if not k.startswith(BACKBONE)}
    return backbone, rest


def _is_aimv2(vision_config: PretrainedConfig) -> bool:
    return vision_config.model_type == "aimv2_vision_model"


def _missing_wrapper(vision_config: PretrainedConfig) -> str:
    """``"vision_model."`` when the installed transformers builds CLIP/SigLIP without that wrapper.

    The official Ovis 1.x code holds ``SiglipVisionModel``/``CLIPVisionModel`` from transformers 4,
    whose weights sit under ``vision_model.``; transformers 5 builds them flat.
    """
    if vision_config.model_type not in WRAPPED_TYPES:
        raise ValueError(
            f"vision_config.model_type={vision_config.model_type!r}: no official Ovis layout known"
        )
    with torch.device("meta"):
        model = AutoModel.from_config(backbone_config(vision_config))
    return "" if hasattr(model, "vision_model") else "vision_model."


def _wrapper_from_official(backbone: StateDict, wrapper: str) -> StateDict:
    """Strips the wrapper prefix; keys without it are kept as they are (and then rejected if unknown)."""
    return {(k[len(wrapper) :] if wrapper and k.startswith(wrapper) else k): v for k, v in backbone.items()}


def official_state_dict_to_openovis(
    state_dict: Mapping[str, torch.Tensor], vision_config: PretrainedConfig
) -> StateDict:
    """Official keys -> openovis checkpoint keys (`load_exact` or ``from_pretrained`` map them into a model).

    Args:
        state_dict: An official Ovis state dict.
        vision_config: The openovis model's vision config (``Aimv2VisionConfig`` for Ovis2, the
            CLIP/SigLIP config for Ovis 1.x).

    Raises:
        ValueError: Listing every AIMv2 key that has no mapping.
    """
    backbone, rest = _split_backbone(state_dict)
    if not _is_aimv2(vision_config):
        backbone = _wrapper_from_official(backbone, _missing_wrapper(vision_config))
        return {**rest, **{BACKBONE + k: v for k, v in backbone.items()}}
    out, unmapped = dict(rest), []
    for key, tensor in backbone.items():
        pairs = _aimv2_from_official(key, tensor)
        if pairs is None:
            unmapped.append(BACKBONE + key)
        else:
            out.update((BACKBONE + k, t) for k, t in pairs)
    if unmapped:
        raise ValueError(f"{len(unmapped)} official AIMv2 keys have no mapping: {sorted(unmapped)}")
    return out


def openovis_state_dict_to_official(
    state_dict: Mapping[str, torch.Tensor], vision_config: PretrainedConfig
) -> StateDict:
    """openovis checkpoint keys -> official keys (the inverse of `official_state_dict_to_openovis`)."""
    backbone, rest = _split_backbone(state_dict)
    if not _is_aimv2(vision_config):
        wrapper = _missing_wrapper(vision_config)
        return {**rest, **{BACKBONE + wrapper + k: v for k, v in backbone.items()}}
    converted, unmapped = _aimv2_to_official(backbone)
    if unmapped:
        raise ValueError(
            f"{len(unmapped)} AIMv2 keys have no official mapping: {sorted(BACKBONE + k for k in unmapped)}"
        )
    return {**rest, **{BACKBONE + k: v for k, v in converted.items()}}


def openovis_to_official_state_dict(model: OvisForConditionalGeneration) -> StateDict:
    """An openovis model's weights under the official names (the official model itself is remote code)."""
    if model.config.connector != "vet":
        raise ValueError(f"connector={model.config.connector!r}: the official Ovis layout has only the VET")
    return openovis_state_dict_to_official(saved_state_dict(model), model.config.vision_config)


# ---- configs ----------------------------------------------------------------------------------------
def _official_vision_config(visual_tokenizer: Mapping[str, Any]) -> PretrainedConfig:
    """The transformers vision config of an official ``visual_tokenizer_config`` dict."""
    backbone = dict(visual_tokenizer["backbone_config"])
    depths = visual_tokenizer.get("depths")
    if isinstance(depths, str):
        depths = [int(x) for x in depths.split("|")]
    if depths:  # the official config cuts the backbone to its first depths[0] blocks
        backbone["num_hidden_layers"] = depths[0]
    if backbone.get("model_type") != OFFICIAL_AIMV2_TYPE:
        return backbone_config(_sub_config(backbone, "visual_tokenizer_config.backbone_config"))
    use_bias = backbone.get("use_bias", False)
    qkv_bias = backbone.get("qkv_bias", False)
    if use_bias != qkv_bias:
        # transformers' AIMv2 gives the attention output projection the qkv bias flag; the official
        # code gives it use_bias (as the MLP).
        raise ValueError(
            f"backbone_config: qkv_bias={qkv_bias} with use_bias={use_bias} has no transformers form"
        )
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels")
    fields += ("image_size", "patch_size", "rms_norm_eps", "attention_dropout")
    return Aimv2VisionConfig(
        **{f: backbone[f] for f in fields if f in backbone},
        qkv_bias=qkv_bias,
        mlp_bias=use_bias,
        hidden_act="silu",  # the official SwiGLU hard-codes SiLU
        use_head=False,
        is_native=False,
    )


def _official_text_config(config: Mapping[str, Any]) -> PretrainedConfig:
    llm = dict(config["llm_config"])
    if config.get("disable_tie_weight", False):  # the official model then never ties lm_head
        llm["tie_word_embeddings"] = False
    return _sub_config(llm, "llm_config")


def openovis_config_from_official(
    config: Mapping[str, Any],
    *,
    image_atom_id: int | None = None,
    indicator_token_ids: list[int] | None = None,
    num_indicators: int = 5,
    backbone_feature: BackboneFeature = "pre_norm",
    **overrides: Any,
) -> OvisConfig:
    """The `OvisConfig` of an official ``config.json`` (as a dict).

    Args:
        config: The official config: ``llm_config``, ``visual_tokenizer_config`` (with
            ``backbone_config``, ``vocab_size``, ``hidden_stride``, ``tokenize_function``, ``tau``).
        image_atom_id: Text-vocabulary id of ``<IMG_ATOM>`` in the tokenizer used with the model.
        indicator_token_ids: Ids of the indicator tokens, in VET-row order.
        num_indicators: n, the VET rows after the head's ``K - n`` columns (5 in Ovis2, 2 in Ovis 1.0);
            `official_to_openovis` and `convert_official_checkpoint` read it off the head's shape.
        backbone_feature: ``pre_norm`` (the official numerics) or ``post_norm``.
        overrides: Further `OvisConfig` fields (e.g. ``indicator_tokens`` for a model with n != 5).
    """
    vt = config["visual_tokenizer_config"]
    function, tau = vt.get("tokenize_function", "softmax"), vt.get("tau", 1.0)
    if function == "gumbel_argmax" and tau != 1.0:
        # official: softmax((l + g) / tau); openovis: softmax(l / T + g). Equal only at 1.
        raise ValueError(f"visual_tokenizer_config.tau={tau}: gumbel_argmax is only convertible with tau=1")
    fields: dict[str, Any] = {
        "vision_config": _official_vision_config(vt),
        "text_config": _official_text_config(config),
        "visual_vocab_size": vt["vocab_size"],
        "hidden_stride": vt.get("hidden_stride", 1),
        "indicator_tokens": overrides.pop("indicator_tokens", None)
        or default_indicator_tokens(num_indicators),
        "tokenize_function": function,
        "backbone_feature": backbone_feature,
        "image_atom_id": image_atom_id,
        "indicator_token_ids": indicator_token_ids,
        "architectures": [OvisForConditionalGeneration.__name__],
    }
    return OvisConfig(**{**fields, **overrides})


# ---- Ovis2.5 (vit_config) ---------------------------------------------------------------------------
VIT = "visual_tokenizer.vit."
OFFICIAL_NAVIT_TYPE = "siglip2_navit"
OFFICIAL_NAVIT_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
    "num_patches", "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout",
    "hidden_stride", "window_size", "fullatt_block_indexes", "temporal_patch_size",
    "preserve_original_pe", "use_rope",
)  # fmt: skip
"""The official ``Siglip2NavitConfig`` fields; its RoPE base is fixed at 10000."""
OFFICIAL_NAVIT_ROPE_THETA = 10000.0


def official25_state_dict_to_openovis(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Official Ovis2.5 keys -> openovis checkpoint keys: ``visual_tokenizer.vit.`` becomes the backbone prefix."""
    return {(BACKBONE + k[len(VIT) :] if k.startswith(VIT) else k): v for k, v in state_dict.items()}


def openovis_state_dict_to_official25(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """openovis checkpoint keys of a NaViT model -> official Ovis2.5 keys."""
    return {(VIT + k[len(BACKBONE) :] if k.startswith(BACKBONE) else k): v for k, v in state_dict.items()}


def openovis_config_from_official25(
    config: Mapping[str, Any],
    *,
    image_atom_id: int | None = None,
    indicator_token_ids: list[int] | None = None,
    **overrides: Any,
) -> OvisConfig:
    """The `OvisConfig` of an official Ovis2.5 ``config.json`` (``llm_config``, ``vit_config``,
    ``visual_vocab_size``); the numerics of the official code: pre-norm features, softmax."""
    vit = dict(config["vit_config"])
    if vit.get("model_type") != OFFICIAL_NAVIT_TYPE:
        raise ValueError(
            f"vit_config.model_type: expected {OFFICIAL_NAVIT_TYPE!r}, got {vit.get('model_type')!r}"
        )
    vision = NavitConfig.from_official(vit)
    fields: dict[str, Any] = {
        "vision_config": vision,
        "text_config": _sub_config(dict(config["llm_config"]), "llm_config"),
        "visual_vocab_size": config.get("visual_vocab_size", 65536),
        "hidden_stride": vision.hidden_stride,
        "indicator_tokens": INDICATOR_TOKENS_OVIS25,
        "tokenize_function": "softmax",
        "backbone_feature": "pre_norm",
        "image_atom_id": image_atom_id,
        "indicator_token_ids": indicator_token_ids,
        "architectures": [OvisForConditionalGeneration.__name__],
    }
    return OvisConfig(**{**fields, **overrides})


def official25_vit_config(vision: NavitConfig) -> dict[str, Any]:
    """The official ``vit_config`` dict of a `NavitConfig`."""
    if vision.rope_theta != OFFICIAL_NAVIT_ROPE_THETA:
        raise ValueError(
            f"vision_config.rope_theta={vision.rope_theta}: the official NaViT fixes it at {OFFICIAL_NAVIT_ROPE_THETA}"
        )
    out = {"model_type": OFFICIAL_NAVIT_TYPE, **{f: getattr(vision, f) for f in OFFICIAL_NAVIT_FIELDS}}
    blocks = out["fullatt_block_indexes"]
    if isinstance(blocks, (list, tuple)):
        out["fullatt_block_indexes"] = "|".join(str(i) for i in blocks)  # the official string form
    return out


# ---- models and folders -----------------------------------------------------------------------------
def _num_indicators(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> int:
    """n = K - (rows of the head's Linear): the official head leaves the last n VET rows to indicators."""
    head = state_dict.get("visual_tokenizer.head.0.weight")
    if head is None:
        raise ValueError("visual_tokenizer.head.0.weight: missing from the official state dict")
    return config["visual_tokenizer_config"]["vocab_size"] - head.shape[0]


def official_to_openovis(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], **config_fields: Any
) -> OvisForConditionalGeneration:
    """Builds the openovis model holding an official state dict.

    Args:
        state_dict: Official weights.
        config: The official config (dict).
        config_fields: Keyword arguments of `openovis_config_from_official` (token ids, overrides).
    """
    n = _num_indicators(config, state_dict)
    ours = openovis_config_from_official(config, **{"num_indicators": n, **config_fields})
    state = official_state_dict_to_openovis(state_dict, ours.vision_config)
    return load_exact(OvisForConditionalGeneration(ours), state)


def convert_official_checkpoint(
    src_dir: str | Path, dst_dir: str | Path, *, max_shard_size: str = "5GB", **config_fields: Any
) -> Path:
    """Converts an official Ovis folder (``config.json`` + safetensors) to an openovis folder.

    Tensors are renamed without building the model; tokenizer files are copied (add the atom and
    indicator tokens to the tokenizer if it lacks them, and pass their ids).

    Args:
        src_dir: The official checkpoint folder.
        dst_dir: Output folder.
        max_shard_size: Largest safetensors shard written.
        config_fields: Keyword arguments of `openovis_config_from_official`.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    official = json.loads((src / "config.json").read_text())
    state = read_safetensors(src)
    n = _num_indicators(official, state)
    config = openovis_config_from_official(official, **{"num_indicators": n, **config_fields})
    state = official_state_dict_to_openovis(state, config.vision_config)
    state = checkpoint_state_dict(OvisForConditionalGeneration, config, state)
    dst.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(dst)
    write_safetensors(state, dst, max_shard_size)
    copy_passthrough_files(src, dst)
    return dst
