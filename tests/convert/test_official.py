"""The official AIDC-AI Ovis layout: a random state dict with the official names and shapes, run through
a plain-PyTorch reference of the official AIMv2 visual tokenizer, equals the converted openovis model.

The reference follows the official remote code's structure: patchify -> RMSNorm -> + pos_embed ->
pre-norm blocks (fused qkv, SwiGLU fc1/fc3/fc2) with no ``post_trunk_norm`` (features are
``hidden_states[-1]``) -> hidden-stride merge -> Linear -> LayerNorm -> softmax -> 5 zero columns -> VET.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.testing import assert_close
from transformers import Qwen2Config, Qwen2ForCausalLM

from openovis import OvisForConditionalGeneration, build_model
from openovis.convert import (
    convert_official_checkpoint,
    official_state_dict_to_openovis,
    official_to_openovis,
    openovis_config_from_official,
    openovis_to_official_state_dict,
)
from openovis.modeling.connector import to_checkpoint_names

K, N_IND, CROP, PATCH, STRIDE, WIDTH, LAYERS, HEADS = 64, 5, 32, 8, 2, 32, 2, 2
ATOM, INDICATORS = 90, [91, 92, 93, 94, 95]
IDS = {"image_atom_id": ATOM, "indicator_token_ids": INDICATORS}
BB = "visual_tokenizer.backbone."


def official_config(bias: bool = False, tie: bool = True) -> dict[str, Any]:
    """A tiny config in the official ``config.json`` format (``model_type: ovis``)."""
    llm = Qwen2Config(
        vocab_size=96,
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tie,
    )
    backbone = {
        "model_type": "aimv2",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_channels": 3,
        "image_size": CROP,
        "patch_size": PATCH,
        "rms_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "projection_dropout": 0.0,
        "qkv_bias": bias,
        "use_bias": bias,
    }
    return {
        "model_type": "ovis",
        "llm_config": llm.to_dict(),
        "visual_tokenizer_config": {
            "model_type": "aimv2_visual_tokenizer",
            "vocab_size": K,
            "tokenize_function": "softmax",
            "tau": 1.0,
            "depths": None,
            "drop_cls_token": False,
            "hidden_stride": STRIDE,
            "backbone_config": backbone,
        },
        "hidden_size": WIDTH,
        "multimodal_max_length": 8192,
        "conversation_formatter_class": "QwenConversationFormatter",
        "disable_tie_weight": False,
    }


def official_state_dict(config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Random tensors under the official names and shapes (norm weights near 1, the rest near 0)."""
    bb = config["visual_tokenizer_config"]["backbone_config"]
    d, f, bias = bb["hidden_size"], bb["intermediate_size"], bb["use_bias"]
    num_patches = (bb["image_size"] // bb["patch_size"]) ** 2

    def r(*shape: int) -> torch.Tensor:
        return 0.1 * torch.randn(*shape)

    sd = {
        "preprocessor.patchifier.proj.weight": r(d, 3, PATCH, PATCH),
        "preprocessor.patchifier.proj.bias": r(d),
        "preprocessor.patchifier.norm.weight": 1 + r(d),
        "preprocessor.pos_embed": r(1, num_patches, d),
        "trunk.post_trunk_norm.weight": 1 + r(d),
    }
    for i in range(bb["num_hidden_layers"]):
        b = f"trunk.blocks.{i}."
        sd |= {b + "norm_1.weight": 1 + r(d), b + "norm_2.weight": 1 + r(d)}
        sd |= {b + "attn.qkv.weight": r(3 * d, d), b + "attn.proj.weight": r(d, d)}
        sd |= {b + "mlp.fc1.weight": r(f, d), b + "mlp.fc3.weight": r(f, d), b + "mlp.fc2.weight": r(d, f)}
        if bias:
            sd |= {b + "attn.qkv.bias": r(3 * d), b + "attn.proj.bias": r(d)}
            sd |= {b + "mlp.fc1.bias": r(f), b + "mlp.fc3.bias": r(f), b + "mlp.fc2.bias": r(d)}
    sd = {BB + k: v for k, v in sd.items()}
    head = K - N_IND
    sd |= {"visual_tokenizer.head.0.weight": r(head, d * STRIDE**2)}
    sd |= {"visual_tokenizer.head.1.weight": 1 + r(head), "visual_tokenizer.head.1.bias": r(head)}
    sd |= {"vte.weight": torch.randn(K, WIDTH)}
    llm = Qwen2ForCausalLM(Qwen2Config(**config["llm_config"]))
    return sd | {"llm." + k: v for k, v in llm.state_dict().items()}


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def official_features(sd: dict[str, torch.Tensor], pixel_values: torch.Tensor) -> torch.Tensor:
    """The official AIMv2 trunk, without post_trunk_norm: ``[C, 3, S, S]`` -> ``[C, P, d]``."""

    def w(name: str) -> torch.Tensor | None:
        return sd.get(BB + name)

    x = F.conv2d(
        pixel_values,
        w("preprocessor.patchifier.proj.weight"),
        w("preprocessor.patchifier.proj.bias"),
        stride=PATCH,
    )
    x = _rms(x.flatten(2).transpose(1, 2), w("preprocessor.patchifier.norm.weight"))  # [C, P, d]
    x = x + w("preprocessor.pos_embed")[:, : x.shape[1]]
    c, p, d = x.shape
    for i in range(LAYERS):
        b = f"trunk.blocks.{i}."
        h = _rms(x, w(b + "norm_1.weight"))
        qkv = F.linear(h, w(b + "attn.qkv.weight"), w(b + "attn.qkv.bias"))  # [C, P, 3d]
        q, k, v = qkv.reshape(c, p, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(c, p, d)
        x = x + F.linear(attn, w(b + "attn.proj.weight"), w(b + "attn.proj.bias"))
        h = _rms(x, w(b + "norm_2.weight"))
        gate = F.silu(F.linear(h, w(b + "mlp.fc1.weight"), w(b + "mlp.fc1.bias")))
        x = x + F.linear(
            gate * F.linear(h, w(b + "mlp.fc3.weight"), w(b + "mlp.fc3.bias")),
            w(b + "mlp.fc2.weight"),
            w(b + "mlp.fc2.bias"),
        )
    return x


def official_visual_embeddings(sd: dict[str, torch.Tensor], pixel_values: torch.Tensor) -> torch.Tensor:
    """The official visual tokenizer + VET: ``[C, 3, S, S]`` -> ``[C, T, D]``."""
    x = official_features(sd, pixel_values)
    c, p, d = x.shape
    g = int(p**0.5)
    x = x.reshape(c, g // STRIDE, STRIDE, g // STRIDE, STRIDE, d).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(c, -1, STRIDE * STRIDE * d)  # [C, T, d·s²]
    logits = F.linear(x, sd["visual_tokenizer.head.0.weight"])
    logits = F.layer_norm(
        logits, logits.shape[-1:], sd["visual_tokenizer.head.1.weight"], sd["visual_tokenizer.head.1.bias"]
    )
    probs = F.pad(logits.softmax(dim=-1), (0, N_IND))  # [C, T, K]
    return probs @ sd["vte.weight"]


# ---- tests ------------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("bias", [False, True])
def test_official_aimv2_matches_reference(bias: bool) -> None:
    config = official_config(bias)
    sd = official_state_dict(config)
    ours = official_to_openovis(sd, config, vet_impl="reference", **IDS)
    assert ours.config.backbone_feature == "pre_norm"
    pixel_values = torch.randn(3, 3, CROP, CROP)
    assert_close(ours.visual_embeddings(pixel_values), official_visual_embeddings(sd, pixel_values))
    assert_close(ours.connector.vte.weight[K - N_IND + 2], sd["vte.weight"][K - N_IND + 2])


def test_official_round_trip_is_bit_identical() -> None:
    config = official_config(bias=True)
    sd = official_state_dict(config)
    back = openovis_to_official_state_dict(official_to_openovis(sd, config, **IDS))
    assert back.keys() == sd.keys()
    for key, tensor in sd.items():
        assert torch.equal(back[key], tensor), key


@torch.no_grad()
def test_official_folder_converts_and_loads(tmp_path) -> None:
    config = official_config()
    sd = official_state_dict(config)
    src = tmp_path / "official"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in sd.items() if k != "llm.lm_head.weight"}, src / "model.safetensors"
    )
    convert_official_checkpoint(src, tmp_path / "ours", vet_impl="reference", **IDS)
    ours = OvisForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    assert ours.llm.lm_head.weight is ours.llm.model.embed_tokens.weight
    pixel_values = torch.randn(1, 3, CROP, CROP)
    assert_close(ours.visual_embeddings(pixel_values), official_visual_embeddings(sd, pixel_values))


def test_unknown_official_keys_are_listed() -> None:
    sd = {BB + "trunk.blocks.0.attn.rope.freqs": torch.zeros(1), "vte.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"trunk\.blocks\.0\.attn\.rope\.freqs"):
        official_state_dict_to_openovis(
            sd, openovis_config_from_official(official_config(), **IDS).vision_config
        )


def test_official_config_fields() -> None:
    config = official_config()
    config["visual_tokenizer_config"]["depths"] = "1"
    config["disable_tie_weight"] = True
    ours = openovis_config_from_official(config, **IDS)
    assert ours.vision_config.num_hidden_layers == 1
    assert ours.vision_config.mlp_bias is False and ours.vision_config.hidden_act == "silu"
    assert ours.text_config.tie_word_embeddings is False
    assert (ours.visual_vocab_size, ours.hidden_stride, ours.image_atom_id) == (K, STRIDE, ATOM)
    gumbel = copy.deepcopy(config)
    gumbel["visual_tokenizer_config"] |= {"tokenize_function": "gumbel_argmax", "tau": 0.5}
    with pytest.raises(ValueError, match="tau"):
        openovis_config_from_official(gumbel, **IDS)
    mixed = copy.deepcopy(config)
    mixed["visual_tokenizer_config"]["backbone_config"] |= {"qkv_bias": True, "use_bias": False}
    with pytest.raises(ValueError, match="use_bias"):
        openovis_config_from_official(mixed, **IDS)


@pytest.mark.parametrize("preset", ["tiny", "paper-ovis-8b-like"])
def test_transformers_backbones_take_the_vision_model_prefix(preset: str) -> None:
    """Ovis 1.x: the official SigLIP/CLIP are transformers 4 classes, with weights under ``vision_model.``."""
    ours = build_model(preset, scale_down=preset != "tiny")
    sd = openovis_to_official_state_dict(ours)
    assert {k.replace(BB + "vision_model.", BB) for k in sd} == set(to_checkpoint_names(ours.state_dict()))
    assert all(k.startswith(BB + "vision_model.") for k in sd if k.startswith(BB))
    config = {
        "llm_config": ours.config.text_config.to_dict(),
        "visual_tokenizer_config": {
            "model_type": f"{ours.config.vision_config.model_type.split('_')[0]}_visual_tokenizer",
            "vocab_size": ours.config.visual_vocab_size,
            "hidden_stride": ours.config.hidden_stride,
            "backbone_config": ours.config.vision_config.to_dict(),
        },
    }
    ids = {"image_atom_id": ours.config.image_atom_id, "indicator_token_ids": ours.config.indicator_token_ids}
    back = official_to_openovis(sd, config, **ids)
    assert back.config.indicator_tokens == ours.config.indicator_tokens  # n read off the head's shape
    for key, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key
