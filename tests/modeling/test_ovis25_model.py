"""The Ovis2.5 wiring: a NaViT backbone selected by config, packed rows + grid_thw through the model."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Config

from openovis import OvisForConditionalGeneration
from openovis.configuration import NavitConfig, OvisConfig
from openovis.constants import INDICATOR_TOKENS_OVIS25
from openovis.modeling.navit import merge_units

ROW = 3 * 16 * 16  # C·T·p² with p = 16, T = 1


def tiny25(**overrides) -> OvisForConditionalGeneration:
    vision = NavitConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
        window_size=64,
        fullatt_block_indexes=[1],
    )
    text = Qwen3Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=True,
    )
    config = OvisConfig(
        vision_config=vision.to_dict(),  # as read from config.json
        text_config=text,
        **{"visual_vocab_size": 64, "hidden_stride": 2, **overrides},
        indicator_tokens=INDICATOR_TOKENS_OVIS25,
        image_atom_id=100,
        indicator_token_ids=[101, 102, 103, 104],
    )
    torch.manual_seed(0)
    return OvisForConditionalGeneration(config).eval()


def images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two images: 2x6 and 4x2 patches -> 3 + 2 visual tokens."""
    grid = torch.tensor([[1, 2, 6], [1, 4, 2]])
    return torch.randn(12 + 8, ROW), grid


def prompt(n_tokens: list[int]) -> torch.Tensor:
    ids = [5, 6]
    for n in n_tokens:
        ids += [101, *[100] * n, 102, 7]
    return torch.tensor([ids])


def test_config_selects_the_navit_backbone_and_round_trips(tmp_path):
    model = tiny25()
    assert model.config.native_resolution
    assert type(model.visual_tokenizer.backbone).__name__ == "NavitModel"
    model.save_pretrained(tmp_path)
    again = OvisForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert isinstance(again.config.vision_config, NavitConfig)
    pixels, grid = images()
    with torch.no_grad():
        torch.testing.assert_close(
            again.visual_embeddings(pixels, grid), model.visual_embeddings(pixels, grid)
        )


def test_hidden_stride_must_match_the_encoder():
    with pytest.raises(ValueError, match="hidden_stride"):
        tiny25(hidden_stride=1)


@torch.no_grad()
def test_visual_tokens_are_the_merged_rows_through_head_and_vet():
    model = tiny25(vet_impl="reference")
    pixels, grid = images()
    feats = model.visual_tokenizer.backbone(pixels, grid)  # [20, d]
    merged = merge_units(feats, 2)  # [5, 4d]
    expected = model.connector(merged[None])  # [1, 5, D]
    assert model.visual_embeddings(pixels, grid).shape == (1, 5, 32)
    torch.testing.assert_close(model.visual_embeddings(pixels, grid), expected)
    probs = model.visual_probabilities(pixels, grid)
    assert probs.shape == (1, 5, 64) and probs[..., -4:].abs().max() == 0
    # the splice: atoms take the tokens in order, start/end take VET rows K-4 and K-3
    ids = prompt([3, 2])
    embeds = model.embed_inputs(ids, pixels, grid_thw=grid)[0]
    atoms = (ids[0] == 100).nonzero().flatten()
    torch.testing.assert_close(embeds[atoms], expected[0])
    vte = model.connector.vte.weight
    torch.testing.assert_close(embeds[ids[0] == 101], vte[60].expand(2, -1))
    torch.testing.assert_close(embeds[ids[0] == 102], vte[61].expand(2, -1))


@torch.no_grad()
def test_missing_grid_and_mismatched_atoms_are_clear_errors():
    model = tiny25()
    pixels, grid = images()
    with pytest.raises(ValueError, match="grid_thw"):
        model(input_ids=prompt([3, 2]), pixel_values=pixels)
    with pytest.raises(ValueError, match="atom"):
        model(input_ids=prompt([3, 3]), pixel_values=pixels, grid_thw=grid)


def test_loss_reaches_the_encoder_and_the_vet():
    model = tiny25().train()
    pixels, grid = images()
    ids = prompt([3, 2])
    out = model(input_ids=ids, pixel_values=pixels, grid_thw=grid, labels=ids)
    out.loss.backward()
    assert model.visual_tokenizer.backbone.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert model.connector.vte.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_generate_with_cache_equals_stepwise_recomputation():
    model = tiny25()
    pixels, grid = images()
    ids = prompt([3, 2])
    out = model.generate(
        input_ids=ids, pixel_values=pixels, grid_thw=grid, max_new_tokens=4, do_sample=False, pad_token_id=0
    )
    seq = ids
    for _ in range(4):
        logits = model(input_ids=seq, pixel_values=pixels, grid_thw=grid).logits[:, -1]
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    assert out.tolist() == seq.tolist()
