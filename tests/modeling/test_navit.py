"""The NaViT encoder against the official Ovis2.5 ViT's outputs (tests/fixtures/official/ovis25)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openovis.modeling.navit import (
    NavitConfig,
    NavitModel,
    merge_units,
    official_vit_state_dict,
    window_order,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "ovis25"
OUT = load_file(str(FIXTURES / "outputs.safetensors"))
TOL = dict(rtol=0, atol=1e-5)


def fp32(sd):
    return {k: v.float() for k, v in sd.items()}


def load_vit():
    config = json.loads((FIXTURES / "model" / "config.json").read_text())
    sd = fp32(load_file(str(FIXTURES / "model" / "model.safetensors")))
    model = NavitModel(NavitConfig.from_official(config["vit_config"])).eval()
    model.load_state_dict(official_vit_state_dict(sd), strict=True)
    return model, sd, config


def test_official_keys_load_without_renaming():
    sd = load_file(str(FIXTURES / "model" / "model.safetensors"))
    vit = official_vit_state_dict(sd)
    config = json.loads((FIXTURES / "model" / "config.json").read_text())
    ours = NavitModel(NavitConfig.from_official(config["vit_config"])).state_dict()
    assert set(vit) == set(ours)
    assert all(vit[k].shape == ours[k].shape for k in vit)


@torch.no_grad()
def test_encoder_matches_official_window_and_full_attention_rope():
    model, sd, config = load_vit()
    pv, grid = OUT["vit.pixel_values"].float(), OUT["vit.grid_thw"]
    feats, states = model(pv, grid, output_hidden_states=True)
    torch.testing.assert_close(feats, OUT["vit.hidden_last"], **TOL)
    torch.testing.assert_close(states[0], OUT["vit.hidden_first"], **TOL)
    torch.testing.assert_close(model(pv, grid, feature="post_norm"), OUT["vit.post_layernorm"], **TOL)
    # the Ovis2.5 visual tokenizer on top: merge units -> head -> softmax -> n zero columns
    head = torch.nn.Sequential(
        torch.nn.Linear(sd["visual_tokenizer.head.0.weight"].shape[1], 60, bias=False), torch.nn.LayerNorm(60)
    )
    head.load_state_dict(
        {
            k[len("visual_tokenizer.head.") :]: v
            for k, v in sd.items()
            if k.startswith("visual_tokenizer.head.")
        }
    )
    probs = torch.softmax(head(merge_units(feats, 2)), -1)
    probs = torch.cat([probs, probs.new_zeros(probs.shape[0], 4)], -1)
    torch.testing.assert_close(probs, OUT["vit.probs"], **TOL)


@torch.no_grad()
def test_encoder_matches_official_in_the_model_run():
    model, _, _ = load_vit()
    feats = model(OUT["model.pixel_values"].float(), OUT["model.grid_thw"])
    # the model run's image is the first one of the ViT batch; images do not see each other
    torch.testing.assert_close(feats, OUT["vit.hidden_last"][: feats.shape[0]], **TOL)


@torch.no_grad()
def test_linear_patch_embedding_no_rope_video_frames():
    config = json.loads((FIXTURES / "vit2" / "config.json").read_text())
    model = NavitModel(NavitConfig.from_official(config)).eval()
    model.load_state_dict(fp32(load_file(str(FIXTURES / "vit2" / "model.safetensors"))), strict=True)
    feats = model(OUT["vit2.pixel_values"].float(), OUT["vit2.grid_thw"])
    torch.testing.assert_close(feats, OUT["vit2.hidden_last"], **TOL)


def test_window_order_covers_every_unit_once():
    grid = torch.tensor([[1, 3, 5], [2, 2, 2], [1, 4, 4]])
    order, lengths = window_order(grid, 2)
    assert sorted(order.tolist()) == list(range(15 + 8 + 16))
    assert sum(lengths) == len(order)
    assert lengths[:6] == [4, 4, 2, 2, 2, 1]  # 3x5 units in 2x2 windows, row by row


@torch.no_grad()
def test_temporal_patch_size_2_runs_and_frames_are_separate_sequences():
    cfg = NavitConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        temporal_patch_size=2,
        window_size=64,
        fullatt_block_indexes=[1],
    )
    model = NavitModel(cfg).eval()
    grid = torch.tensor([[2, 2, 4]])
    pv = torch.randn(16, 3 * 2 * 16 * 16)
    out = model(pv, grid)
    assert out.shape == (16, 16)
    # each temporal patch (frame group) is its own sequence, as in the official code
    torch.testing.assert_close(model(pv[8:], torch.tensor([[1, 2, 4]])), out[8:], **TOL)


def test_bad_inputs_are_refused():
    model = NavitModel(
        NavitConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=64
        )
    ).eval()
    with pytest.raises(ValueError, match="rows"):
        model(torch.zeros(3, 768), torch.tensor([[1, 2, 2]]))
    with pytest.raises(ValueError, match="multiples"):
        model(torch.zeros(3, 768), torch.tensor([[1, 1, 3]]))


@torch.no_grad()
def test_ovis25_logits_from_the_encoder_head_vet_and_llm_composed_by_hand():
    """The Ovis2.5 wiring composed by hand (the converted model does the same, tests/convert/test_official25.py):
    NaViT -> merge units -> head (K-4 columns) -> softmax -> 4 zero columns -> VET; one atom per
    visual token; indicators -301..-304 are VET rows K-4..K-1; Qwen3 on the spliced embeddings."""
    from transformers import AutoModelForCausalLM

    from openovis.configuration import _sub_config

    model, sd, config = load_vit()
    feats = model(OUT["model.pixel_values"].float(), OUT["model.grid_thw"])
    logits = torch.nn.functional.linear(merge_units(feats, 2), sd["visual_tokenizer.head.0.weight"])
    n_words = logits.shape[-1]
    logits = torch.nn.functional.layer_norm(
        logits, (n_words,), sd["visual_tokenizer.head.1.weight"], sd["visual_tokenizer.head.1.bias"]
    )
    vte = sd["vte.weight"]
    n_indicators = vte.shape[0] - n_words
    assert n_indicators == 4
    probs = torch.cat([logits.softmax(-1), logits.new_zeros(logits.shape[0], n_indicators)], -1)
    torch.testing.assert_close(probs, OUT["model.probs"], **TOL)
    visual = probs @ vte  # [tokens, D]
    torch.testing.assert_close(visual, OUT["model.visual_embeds"], **TOL)

    llm = AutoModelForCausalLM.from_config(_sub_config(config["llm_config"], "llm_config")).eval()
    result = llm.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("llm.")}, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}  # tied
    ids = OUT["model.input_ids"]
    text = llm.get_input_embeddings()(ids.clamp(min=0))
    atoms = (ids == -300).nonzero().flatten()
    assert len(atoms) == visual.shape[0]  # one atom per visual token (3 for the 37x100 image)
    text[atoms] = visual
    for i in range(n_indicators):
        text[ids == -301 - i] = vte[n_words + i]
    torch.testing.assert_close(text, OUT["model.inputs_embeds"], **TOL)
    out = llm(inputs_embeds=text[None]).logits[0]
    torch.testing.assert_close(out, OUT["model.logits"], **TOL)
