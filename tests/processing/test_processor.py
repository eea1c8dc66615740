"""OvisProcessor: outputs, save/load, construction from a model config, batching."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

from openovis.constants import IGNORE_INDEX, INDICATOR_TOKENS_OVIS1, INDICATOR_TOKENS_OVIS2
from openovis.processing.image import ImageProcessingConfig
from openovis.processing.processor import PROCESSOR_CONFIG_NAME, OvisProcessor, add_ovis_tokens

TURNS = [
    {"from": "human", "value": "<image>\nWhat is in the image?"},
    {"from": "gpt", "value": "A red circle."},
]


def image(size: tuple[int, int] = (28, 28), colour: tuple[int, int, int] = (255, 0, 0)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_one_sample_keys_shapes_and_dtypes(processor: OvisProcessor) -> None:
    out = processor(TURNS, [image((100, 50))])
    length = len(out["input_ids"])
    assert set(out) == {"input_ids", "attention_mask", "labels", "pixel_values", "grids"}
    assert out["input_ids"].dtype == out["labels"].dtype == out["attention_mask"].dtype == torch.long
    assert out["labels"].shape == out["attention_mask"].shape == (length,)
    assert bool(out["attention_mask"].all())
    rows, cols = out["grids"][0]
    assert out["pixel_values"].shape == (1 + rows * cols, 3, 28, 28)
    atoms = int((out["input_ids"] == processor.atom_token_id).sum())
    assert atoms == out["pixel_values"].shape[0] * processor.tokens_per_crop


def test_images_may_be_paths(processor: OvisProcessor, tmp_path: Path) -> None:
    image().save(tmp_path / "red.png")
    from_path = processor(TURNS, [tmp_path / "red.png"])
    from_pil = processor(TURNS, image())
    torch.testing.assert_close(from_path["pixel_values"], from_pil["pixel_values"])


def test_save_and_load_round_trip(processor: OvisProcessor, tmp_path: Path) -> None:
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / PROCESSOR_CONFIG_NAME).read_text())
    assert saved["image_processing"]["image_size"] == 28 and saved["chat_format"] == "chatml"
    loaded = OvisProcessor.from_pretrained(tmp_path)
    assert loaded.image_config == processor.image_config
    assert loaded.indicator_tokens == processor.indicator_tokens
    a, b = processor(TURNS, [image((90, 40))]), loaded(TURNS, [image((90, 40))])
    for key in ("input_ids", "labels", "pixel_values"):
        torch.testing.assert_close(a[key], b[key])
    assert OvisProcessor.from_pretrained(tmp_path, max_partition=1).image_config.max_partition == 1


def test_load_errors(processor: OvisProcessor, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        OvisProcessor.from_pretrained(tmp_path / "nowhere")
    processor.save_pretrained(tmp_path)
    data = json.loads((tmp_path / PROCESSOR_CONFIG_NAME).read_text())
    (tmp_path / PROCESSOR_CONFIG_NAME).write_text(json.dumps({**data, "bogus": 1}))
    with pytest.raises(ValueError, match="^bogus"):
        OvisProcessor.from_pretrained(tmp_path)


def _model_config(**extra: Any) -> SimpleNamespace:
    vision = SimpleNamespace(image_size=28, patch_size=7)
    fields = {"vision_config": vision, "hidden_stride": 2, "indicator_tokens": list(INDICATOR_TOKENS_OVIS2)}
    return SimpleNamespace(**{**fields, **extra})


def test_from_model_config(tokenizer: Any) -> None:
    processor = OvisProcessor.from_model_config(_model_config(), tokenizer)
    assert processor.image_config.tokens_per_crop == 4
    assert processor.image_config.image_mean == (0.5, 0.5, 0.5)
    clip = {
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "crop_size": 1,
    }
    processor = OvisProcessor.from_model_config(
        _model_config(), tokenizer, image_stats=clip, max_partition=4, max_length=64
    )
    assert processor.image_config.image_std[0] == pytest.approx(0.26862954)
    assert processor.image_config.max_partition == 4 and processor.max_length == 64
    dict_config = {"vision_config": {"image_size": [28, 28], "patch_size": 7}, "hidden_stride": 2}
    assert OvisProcessor.from_model_config(dict_config, tokenizer).tokens_per_crop == 4


def test_from_model_config_ovis1_and_checks(tokenizer: Any) -> None:
    ovis1 = OvisProcessor.from_model_config(
        _model_config(indicator_tokens=list(INDICATOR_TOKENS_OVIS1)), tokenizer
    )
    assert ovis1.image_config.max_partition == 1
    out = ovis1(TURNS, [image((300, 100))])
    ids = out["input_ids"].tolist()
    assert out["pixel_values"].shape[0] == 1 and ids.count(ovis1.atom_token_id) == ovis1.tokens_per_crop
    start, end = ovis1.indicator_token_ids
    assert ids.index(end) - ids.index(start) == ovis1.tokens_per_crop + 1
    assert tokenizer.convert_tokens_to_ids("<IMG_GRID>") not in ids
    atom = tokenizer.convert_tokens_to_ids("<IMG_ATOM>")
    with pytest.raises(ValueError, match="image_atom_id"):
        OvisProcessor.from_model_config(_model_config(image_atom_id=atom + 1), tokenizer)
    OvisProcessor.from_model_config(_model_config(image_atom_id=atom), tokenizer)
    with pytest.raises(TypeError, match="colour"):
        OvisProcessor.from_model_config(_model_config(), tokenizer, colour="red")
    with pytest.raises(ValueError, match="vision_config"):
        OvisProcessor.from_model_config(SimpleNamespace(hidden_stride=2), tokenizer)


def test_construction_checks(tokenizer: Any, image_config: ImageProcessingConfig) -> None:
    with pytest.raises(ValueError, match="max_partition"):
        OvisProcessor(tokenizer, image_config, INDICATOR_TOKENS_OVIS1)  # 2 indicators need max_partition 1
    with pytest.raises(ValueError, match="chat_format"):
        OvisProcessor(tokenizer, image_config, chat_format="template")  # no template on this tokenizer
    with pytest.raises(ValueError, match="max_length"):
        OvisProcessor(tokenizer, image_config, max_length=0)
    with pytest.raises(ValueError, match="mode"):
        OvisProcessor(tokenizer, image_config)(TURNS, [image()], mode="chat")  # type: ignore[arg-type]


def test_missing_special_tokens_are_a_clear_error_and_add_ovis_tokens_fixes_it(
    tokenizer: Any, image_config: ImageProcessingConfig
) -> None:
    from transformers import PreTrainedTokenizerFast

    fresh = PreTrainedTokenizerFast(tokenizer_object=_plain_bpe(), eos_token="x")
    with pytest.raises(ValueError, match="image_placeholder"):
        OvisProcessor(fresh, image_config)
    assert add_ovis_tokens(fresh) == 2 + 5 + 2 + 1  # placeholder, atom, 5 indicators, ChatML pair, pad
    processor = OvisProcessor(fresh, image_config)
    assert len(processor(TURNS, [image()])["input_ids"]) > 0


def _plain_bpe() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["x"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["What is in the image? A red circle."], trainer)
    return tok


def test_batch_pads_left_for_generation_and_right_for_training(processor: OvisProcessor) -> None:
    prompts = ["Hi", [{"role": "user", "content": "<image>\nWhat is in the image?"}]]
    batch = processor.batch(prompts, [None, [image((100, 50))]])
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values"}
    short = len(processor("Hi", mode="generate")["input_ids"])
    width = batch["input_ids"].shape[1]
    assert batch["attention_mask"][0].tolist() == [0] * (width - short) + [1] * short
    assert bool((batch["input_ids"][0, : width - short] == processor.pad_token_id).all())
    assert bool(batch["attention_mask"][1].all())
    longer = TURNS[:1] + [{"from": "gpt", "value": "A red circle and a blue square, both small."}]
    train = processor.batch([longer, TURNS], [[image()], [image()]], mode="train")
    assert train["pixel_values"].shape[0] == 2
    assert train["attention_mask"][1, -1] == 0 and train["labels"][1, -1] == IGNORE_INDEX
    with pytest.raises(ValueError, match="images"):
        processor.batch(["a", "b"], [None])


def test_processor_pickles_for_spawned_workers(
    template_tokenizer: Any, image_config: ImageProcessingConfig
) -> None:
    import pickle

    for processor in (
        OvisProcessor(template_tokenizer, image_config),
        OvisProcessor(template_tokenizer, image_config, chat_format="chatml"),
    ):
        clone = pickle.loads(pickle.dumps(processor))
        assert torch.equal(clone(TURNS, [image()])["input_ids"], processor(TURNS, [image()])["input_ids"])
