"""The spliced model: shapes, gradients, batches with 0/1/several images, save/load, generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import image_span
from transformers import AutoModelForImageTextToText

from openovis import OvisForConditionalGeneration, build_model
from openovis.experiments.grid import recipe_data
from openovis.modeling.visual_tokenizer import merge_hidden_stride
from openovis.ops.vet import tokenize_logits as tokenize


def _batch(config, spans: list[list[int]], pad_left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads sequences of ids into [B, L] with pad id 0 and an attention mask."""
    width = max(len(s) for s in spans)
    ids = torch.zeros(len(spans), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(spans):
        sl = slice(width - len(s), width) if pad_left else slice(0, len(s))
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask


def test_stage_shapes(tiny_model):
    cfg = tiny_model.config
    vt = tiny_model.visual_tokenizer
    pixels = torch.randn(3, 3, 64, 64)
    features = vt.features(pixels)
    assert features.shape == (3, cfg.visual_tokens_per_crop, cfg.visual_feature_size)
    logits = tiny_model.connector.logits(features)
    assert logits.shape == (3, 16, cfg.visual_vocab_size - cfg.num_indicators)
    probs = tiny_model.visual_probabilities(pixels)
    assert probs.shape == (3, 16, cfg.visual_vocab_size)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 16))
    assert probs[..., -cfg.num_indicators :].abs().max() == 0
    assert tiny_model.visual_embeddings(pixels).shape == (3, 16, cfg.text_config.hidden_size)


def test_merge_matches_official_layout():
    # 3×3 grid of 1-d features, s = 2 -> padded to 4×4, four tokens of 4 features each.
    x = torch.arange(1, 10, dtype=torch.float).reshape(1, 9, 1)
    merged = merge_hidden_stride(x, 2)
    expected = torch.tensor([[[1, 2, 4, 5], [3, 0, 6, 0], [7, 8, 0, 0], [9, 0, 0, 0]]], dtype=torch.float)
    torch.testing.assert_close(merged, expected)


def test_visual_embedding_is_expectation_over_vet(tiny_model):
    pixels = torch.randn(1, 3, 64, 64)
    probs = tiny_model.visual_probabilities(pixels)  # [1, T, K]
    expected = probs @ tiny_model.connector.vte.weight
    torch.testing.assert_close(tiny_model.visual_embeddings(pixels), expected)


def test_splice_puts_visual_tokens_and_indicator_rows_in_place(tiny_model):
    cfg = tiny_model.config
    ids = torch.tensor([[7, *image_span(cfg), 9]])
    pixels = torch.randn(1, 3, 64, 64)
    embeds = tiny_model.embed_inputs(ids, pixels)
    text = tiny_model.get_input_embeddings()(ids)
    visual = tiny_model.visual_embeddings(pixels)[0]
    k, n = cfg.visual_vocab_size, cfg.num_indicators
    torch.testing.assert_close(embeds[0, 0], text[0, 0])
    torch.testing.assert_close(embeds[0, -1], text[0, -1])
    torch.testing.assert_close(embeds[0, 1], tiny_model.connector.vte.weight[k - n])  # <IMG_START>
    torch.testing.assert_close(embeds[0, 2 : 2 + 16], visual)
    torch.testing.assert_close(embeds[0, 18], tiny_model.connector.vte.weight[k - n + 1])  # <IMG_GRID>
    torch.testing.assert_close(embeds[0, 19], tiny_model.connector.vte.weight[k - 1])  # <IMG_END>


def test_gradients_reach_head_vet_backbone_and_llm(tiny_model):
    cfg = tiny_model.config
    ids = torch.tensor([[7, *image_span(cfg), 9, 10]])
    out = tiny_model(input_ids=ids, pixel_values=torch.randn(1, 3, 64, 64), labels=ids)
    out.loss.backward()
    parts = {
        "head": tiny_model.connector.head[0].weight,
        "head_norm": tiny_model.connector.head[1].weight,
        "vte": tiny_model.connector.vte.weight,
        "backbone": next(tiny_model.visual_tokenizer.backbone.parameters()),
        "llm": tiny_model.llm.model.layers[0].mlp.up_proj.weight,
    }
    for name, p in parts.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Every indicator row used gets a gradient; unused visual words still get one through the softmax.
    k, n = cfg.visual_vocab_size, cfg.num_indicators
    assert tiny_model.connector.vte.weight.grad[k - n].abs().sum() > 0


def test_st_argmax_is_one_hot_forward_with_soft_gradient():
    logits = torch.randn(4, 10, requires_grad=True)
    probs = tokenize(logits, "st_argmax")
    assert torch.equal(probs, F.one_hot(logits.argmax(-1), 10).float())
    weights = torch.randn(10)
    (probs * weights).sum().backward()
    soft = logits.detach().softmax(-1)
    expected = soft * (weights - (soft * weights).sum(-1, keepdim=True))  # softmax Jacobian-vector product
    torch.testing.assert_close(logits.grad, expected)


def test_gumbel_argmax_is_one_hot():
    torch.manual_seed(1)
    probs = tokenize(torch.randn(5, 7), "gumbel_argmax")
    assert torch.equal(probs.sum(-1), torch.ones(5)) and set(probs.unique().tolist()) == {0.0, 1.0}


def test_text_only_batch_skips_the_vision_tower(tiny_model):
    calls = []
    tiny_model.visual_tokenizer.backbone.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    out = tiny_model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss) and calls == []
    text_only = tiny_model.llm(input_ids=ids, labels=ids)
    torch.testing.assert_close(out.logits, text_only.logits)


def test_mixed_batch_with_zero_one_and_several_images(tiny_model):
    cfg = tiny_model.config
    spans = [
        [5, 6, 7],  # no image
        [5, *image_span(cfg), 6],  # one image, one crop
        [5, *image_span(cfg, crops=3), *image_span(cfg), 6],  # an image of 3 crops, then one of 1 crop
    ]
    ids, mask = _batch(cfg, spans)
    pixels = torch.randn(5, 3, 64, 64)
    out = tiny_model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert out.logits.shape == (3, ids.shape[1], cfg.text_config.vocab_size)
    # Each sample alone gives the same logits as in the batch (right padding, causal LM).
    crops = [slice(0, 0), slice(0, 1), slice(1, 5)]
    for i, span in enumerate(spans):
        alone = tiny_model(input_ids=torch.tensor([span]), pixel_values=pixels[crops[i]] if i else None)
        torch.testing.assert_close(out.logits[i, : len(span)], alone.logits[0], atol=1e-5, rtol=1e-4)


def test_atom_count_mismatch_is_a_clear_error(tiny_model):
    cfg = tiny_model.config
    ids = torch.tensor([[5, *image_span(cfg), 6]])
    with pytest.raises(ValueError, match="atom tokens"):
        tiny_model(input_ids=ids, pixel_values=torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="no pixel_values"):
        tiny_model(input_ids=ids)


def test_save_load_gives_identical_logits(tiny_model, tmp_path):
    cfg = tiny_model.config
    ids = torch.tensor([[5, *image_span(cfg), 6]])
    pixels = torch.randn(1, 3, 64, 64)
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for loader in (OvisForConditionalGeneration, AutoModelForImageTextToText):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, OvisForConditionalGeneration)
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(input_ids=ids, pixel_values=pixels).logits,
                tiny_model(input_ids=ids, pixel_values=pixels).logits,
                rtol=0,
                atol=0,
            )


def _greedy_without_cache(model, ids, mask, pixels, steps):
    for _ in range(steps):
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            pixel_values=pixels,
            use_cache=False,
        ).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


def test_greedy_generate_with_cache_equals_stepwise_without(tiny_model):
    cfg = tiny_model.config
    spans = [[5, *image_span(cfg), 6, 7, 8], [9, *image_span(cfg, crops=3), 6]]
    ids, mask = _batch(cfg, spans, pad_left=True)
    pixels = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = _greedy_without_cache(tiny_model, ids, mask, pixels, steps=6)
        got = tiny_model.generate(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=pixels,
            max_new_tokens=6,
            do_sample=False,
            min_new_tokens=6,
        )
    assert torch.equal(got, expected)


def test_mlp_connector_is_a_drop_in_replacement():
    model = build_model("tiny", connector="mlp").eval()
    cfg = model.config
    assert model.connector.indicator_embeddings() is None and not hasattr(model.connector, "vte")
    with pytest.raises(NotImplementedError, match="no visual vocabulary"):
        model.visual_probabilities(torch.randn(1, 3, 64, 64))
    ids = torch.tensor([[5, *image_span(cfg), 6]])
    out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 64, 64), labels=ids)
    out.loss.backward()
    assert model.connector[0].weight.grad.abs().sum() > 0
    # Indicators keep their text embeddings: the MLP has no table.
    text = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model.embed_inputs(ids, torch.randn(1, 3, 64, 64))[0, 0], text[0, 0])


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model):
    cfg = tiny_model.config
    ids = torch.tensor([[5, *image_span(cfg), 6, 7]])
    pixels = torch.randn(1, 3, 64, 64)
    grads = []
    for checkpointing in (False, True):
        model = build_model("tiny", vet_impl="reference")
        model.load_state_dict(tiny_model.state_dict())
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.llm.model.gradient_checkpointing
        model(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward()
        grads.append(model.connector.vte.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attn_implementation_passes_through(impl, tmp_path):
    model = build_model("tiny")
    model.save_pretrained(tmp_path)
    loaded = OvisForConditionalGeneration.from_pretrained(tmp_path, attn_implementation=impl)
    assert loaded.llm.config._attn_implementation == impl
    assert loaded.visual_tokenizer.backbone.config._attn_implementation == impl


def test_mlp_out_init_std_scales_only_the_connectors_output_layer():
    default = build_model("tiny", connector="mlp", vet_impl="reference")
    scaled = build_model("tiny", connector="mlp", vet_impl="reference", mlp_out_init_std=0.002)
    assert abs(float(scaled.connector[-1].weight.std()) - 0.002) < 0.0005
    assert abs(float(default.connector[-1].weight.std()) - 0.02) < 0.005
    assert abs(float(scaled.connector[0].weight.std()) - 0.02) < 0.005


@pytest.mark.parametrize(
    ("recipe", "change", "low", "high"),
    [
        ("tiny-shapes-curriculum", {"connector": "vet"}, 0.4, 0.8),  # K = 512: a near-uniform mixture, ~0.6x
        ("tiny-shapes-curriculum", {"connector": "vet", "visual_vocab_size": 128}, 0.8, 1.4),  # 2x the RMS
        ("tiny-shapes-curriculum", {"connector": "mlp"}, 0.8, 1.4),
        ("tiny-shapes-curriculum", {"connector": "mlp", "mlp_hidden_size": 128}, 0.4, 0.8),
        ("tiny-shapes-regions", {"connector": "vet"}, 7.0, 13.0),  # tau 1/8: ~one row of std 0.25, ~10x
        ("tiny-shapes-regions", {"connector": "mlp"}, 0.8, 1.4),
    ],
)
def test_demo_init_starts_visual_tokens_near_the_text_scale(recipe, change, low, high):
    """docs/from-scratch-recipe.md §3: the demo recipes' `vte_init_std` / `mlp_out_init_std` put a
    visual token's initial RMS near a text embedding's (0.02), where the connector's width moves it, and
    how far above it the regions recipe's low VET temperature puts the VET's (a near one-hot mixture)."""
    model_spec = recipe_data(recipe)["model"]
    torch.manual_seed(0)
    model = build_model(model_spec["preset"], **{**model_spec["overrides"], **change})
    size = model.config.vision_config.image_size
    with torch.no_grad():
        tokens = model.connector(model.visual_tokenizer.features(torch.randn(4, 3, size, size)))
    text = model.llm.get_input_embeddings().weight
    ratio = float(tokens.pow(2).mean().sqrt() / text.pow(2).mean().sqrt())
    assert low < ratio < high, ratio
