"""Every registered preset builds; real presets carry the real numbers; pretrained parts load from folders."""

from __future__ import annotations

import pytest
import torch
from model_helpers import image_span
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedTokenizerFast

from openovis import PRESETS, build_config, build_model
from openovis.builders import scaled_down


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_runs_scaled_down(name):
    model = build_model(name, scale_down=True, vet_impl="reference").eval()
    cfg = model.config
    assert type(cfg.vision_config) is type(build_config(name).vision_config)
    assert type(cfg.text_config) is type(build_config(name).text_config)
    if cfg.native_resolution:  # Ovis2.5: one image of 4x6 patches, packed rows, 6 visual tokens
        vc = cfg.vision_config
        images = {
            "pixel_values": torch.randn(24, 3 * vc.temporal_patch_size * vc.patch_size**2),
            "grid_thw": torch.tensor([[1, 4, 6]]),
        }
        ids = [cfg.indicator_token_ids[0], *[cfg.image_atom_id] * 6, cfg.indicator_token_ids[1], 3]
    else:
        crops = 1 if cfg.num_indicators == 2 else 2  # Ovis 1.0 layout has only start/end indicators
        images = {"pixel_values": torch.randn(crops, 3, cfg.crop_size, cfg.crop_size)}
        ids = [
            cfg.indicator_token_ids[0],
            *[cfg.image_atom_id] * (cfg.visual_tokens_per_crop * crops),
            cfg.indicator_token_ids[-1],
            3,
        ]
    out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]), **images)
    assert torch.isfinite(out.loss)


def test_tiny_is_small_and_fast():
    model = build_model("tiny")
    n = sum(p.numel() for p in model.parameters())
    assert 1e5 < n < 5e6


@pytest.mark.parametrize(
    ("name", "k", "s", "n", "tokens"),
    [
        ("paper-ovis-8b-like", 131072, 1, 2, 576),
        ("ovis1.6-gemma2-9b-like", 65536, 2, 5, 196),
        ("ovis2-2b-like", 65536, 2, 5, 256),
    ],
)
def test_real_presets_carry_design_numbers(name, k, s, n, tokens):
    cfg = build_config(name)
    assert (cfg.visual_vocab_size, cfg.hidden_stride, cfg.num_indicators, cfg.visual_tokens_per_crop) == (
        k,
        s,
        n,
        tokens,
    )


def test_real_preset_sizes():
    assert build_config("paper-ovis-8b-like").text_config.hidden_size == 4096
    assert build_config("ovis2-2b-like").vision_config.model_type == "aimv2_vision_model"


@pytest.mark.parametrize(
    ("name", "width", "layers", "heads", "kv_heads", "ffn", "tied"),
    [("ovis2.5-9b", 4096, 36, 32, 8, 12288, False), ("ovis2.5-2b", 2048, 28, 16, 8, 6144, True)],
)
def test_ovis25_presets_have_the_official_shapes(name, width, layers, heads, kv_heads, ffn, tied):
    cfg = build_config(name)
    vc, tc = cfg.vision_config, cfg.text_config
    assert cfg.native_resolution and vc.model_type == "openovis_navit"
    vit = (vc.hidden_size, vc.num_hidden_layers, vc.num_attention_heads, vc.intermediate_size)
    assert vit == (1152, 27, 16, 4304)
    assert (vc.patch_size, vc.hidden_stride, vc.temporal_patch_size, vc.image_size) == (16, 2, 1, 512)
    assert (vc.num_patches, vc.window_size, vc.full_attention_blocks, vc.use_rope) == (-1, 112, None, True)
    assert (cfg.visual_vocab_size, cfg.num_indicators, cfg.hidden_stride) == (65536, 4, 2)
    assert cfg.visual_feature_size == 4 * 1152  # the head is Linear(4608, 65532)
    assert tc.model_type == "qwen3" and tc.vocab_size == 151936 and tc.head_dim == 128
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads) == (width, layers, heads)
    assert (tc.num_key_value_heads, tc.intermediate_size, tc.tie_word_embeddings) == (kv_heads, ffn, tied)
    assert tc.max_position_embeddings == 40960 and tc.rope_parameters["rope_theta"] == 1e6


def test_the_approximate_ovis25_preset_name_points_to_the_real_one():
    with pytest.raises(ValueError, match="replaced by 'ovis2.5-9b'"):
        build_config("ovis2.5-9b-like")


def _word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "a", "red", "circle", "[UNK]"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def test_pretrained_parts_load_from_local_folders(tmp_path):
    """The hub-loading path, exercised on folders saved here (no network)."""
    small = scaled_down(build_config("ovis2-2b-like"))
    vision = AutoModel.from_config(small.vision_config)
    llm = AutoModelForCausalLM.from_config(small.text_config)
    vision.save_pretrained(tmp_path / "vision")
    llm.save_pretrained(tmp_path / "llm")
    tok = _word_tokenizer()
    model = build_model(
        "ovis2-2b-like",
        scale_down=True,
        vision_path=str(tmp_path / "vision"),
        llm_path=str(tmp_path / "llm"),
        tokenizer=tok,
    )
    backbone_state = model.visual_tokenizer.backbone.state_dict()
    for key, value in vision.state_dict().items():
        if key in backbone_state:
            assert torch.equal(backbone_state[key], value), key
    assert torch.equal(model.llm.model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    # The image tokens were added to the tokenizer and the embeddings resized to match.
    assert model.config.image_atom_id == tok.convert_tokens_to_ids("<IMG_ATOM>")
    assert model.get_input_embeddings().num_embeddings >= len(tok)
    cfg = model.config
    ids = torch.tensor([[2, *image_span(cfg), 3]])
    assert torch.isfinite(
        model(input_ids=ids, pixel_values=torch.randn(1, 3, cfg.crop_size, cfg.crop_size)).logits
    ).all()


def test_tokenizer_ids_go_into_config():
    tok = _word_tokenizer()
    model = build_model("tiny", tokenizer=tok)
    assert model.config.text_config.vocab_size == len(tok)
    assert model.config.indicator_token_ids == tok.convert_tokens_to_ids(list(model.config.indicator_tokens))
    assert model.config.pad_token_id == tok.pad_token_id


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match="known: .*tiny"):
        build_model("nope")
