"""OvisProcessor with native-resolution (Ovis2.5) preprocessing: layout, packed rows, grid_thw, save/load."""

from __future__ import annotations

import pytest
from ovis25_fixture import FIXTURES, META, make_image, sha
from transformers import AutoTokenizer

from openovis.configuration import NavitConfig, OvisConfig
from openovis.constants import INDICATOR_TOKENS_OVIS25
from openovis.processing.image_processor import OvisImageProcessor
from openovis.processing.processor import OvisProcessor, add_ovis_tokens


@pytest.fixture(scope="module")
def processor() -> OvisProcessor:
    tok = AutoTokenizer.from_pretrained(str(FIXTURES / "model"), local_files_only=True)
    add_ovis_tokens(tok, INDICATOR_TOKENS_OVIS25)
    vision = NavitConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = OvisConfig(
        vision_config=vision,
        text_config={"model_type": "qwen3", "vocab_size": len(tok), "hidden_size": 16},
        visual_vocab_size=64,
        indicator_tokens=INDICATOR_TOKENS_OVIS25,
    )
    small = META["pixel_settings"]["small"]
    return OvisProcessor.from_model_config(config, tok, chat_format="chatml", **small)


def test_model_config_chooses_native_preprocessing(processor):
    cfg = processor.image_config
    assert cfg.native_resolution and (cfg.patch_size, cfg.hidden_stride) == (16, 2)
    assert (cfg.min_pixels, cfg.max_pixels) == (32 * 32, 96 * 96)


def test_one_image_is_start_atoms_end_with_packed_rows(processor):
    rec = META["images"]["h37_w100"]["small"]  # 2 x 6 patches -> 3 visual tokens
    out = processor("<image>\nDescribe the picture.", [make_image(37, 100, seed=2)], mode="generate")
    assert out["grid_thw"].tolist() == rec["grid_thw"]
    assert sha(out["pixel_values"]) == rec["sha256_f32"]
    start, end = processor.indicator_token_ids[:2]
    ids = out["input_ids"].tolist()
    i = ids.index(start)
    assert ids[i : i + 5] == [start, *[processor.atom_token_id] * 3, end]
    assert out["grids"] == [(2, 6)]


def test_tiny_and_flat_images_work(processor):
    # the official preprocessing raises on a 1-px-tall image and misreads a 3-px-tall one
    for h, w in ((1, 1), (3, 50)):
        out = processor("<image>\nHi", [make_image(h, w, seed=0)], mode="generate")
        t, gh, gw = out["grid_thw"][0].tolist()
        assert out["pixel_values"].shape == (t * gh * gw, 3 * 16 * 16)
        assert out["input_ids"].eq(processor.atom_token_id).sum() == gh * gw // 4


def test_batch_concatenates_rows_and_grids(processor):
    images = [[make_image(37, 100, 2)], [make_image(100, 37, 3), make_image(640, 480, 4)]]
    batch = processor.batch(["<image>\na", "<image><image>\nb"], images, mode="generate")
    grids = batch["grid_thw"]
    assert grids.tolist() == [[1, 2, 6], [1, 6, 2], [1, 6, 4]]
    assert batch["pixel_values"].shape[0] == int(grids.prod(-1).sum())
    assert int(batch["input_ids"].eq(processor.atom_token_id).sum()) == int(grids.prod(-1).sum()) // 4


def test_save_and_load_keep_the_pixel_budget(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    again = OvisProcessor.from_pretrained(tmp_path)
    assert again.image_config == processor.image_config
    image_processor = OvisImageProcessor.from_pretrained(tmp_path)
    out = image_processor.preprocess([make_image(37, 100, 2)])
    assert out["grid_thw"].tolist() == [[1, 2, 6]]
    assert sha(out["pixel_values"]) == META["images"]["h37_w100"]["small"]["sha256_f32"]


def test_native_layout_needs_four_indicators(processor):
    with pytest.raises(ValueError, match="4 distinct"):
        OvisProcessor(processor.tokenizer, processor.image_config, processor.indicator_tokens[:2])
