"""The transformers side of the processor: Auto classes, chat template, the keyword call form, pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_folder import save_tiny_folder
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, pipeline
from transformers.utils.chat_template_utils import render_jinja_template

from openovis.processing.image import process_image
from openovis.processing.image_processor import OvisImageProcessor
from openovis.processing.processor import OvisProcessor


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_folder(tmp_path_factory.mktemp("tiny"))


def red(size=(60, 40)) -> Image.Image:
    return Image.new("RGB", size, (255, 0, 0))


def mm_messages(img) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": img}, {"type": "text", "text": "What color?"}],
        }
    ]


def test_auto_classes_load_the_saved_folder(folder: Path) -> None:
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(processor, OvisProcessor)
    assert isinstance(processor.image_processor, OvisImageProcessor)
    image_processor = AutoImageProcessor.from_pretrained(folder)
    assert image_processor.image_config == processor.image_config
    saved = json.loads((folder / "preprocessor_config.json").read_text())
    assert (
        saved["image_processor_type"] == "OvisImageProcessor" and saved["processor_class"] == "OvisProcessor"
    )
    # the image processor is the library's crops, exactly
    out = image_processor(red((90, 30)))
    ref = process_image(red((90, 30)), processor.image_config)
    torch.testing.assert_close(out["pixel_values"], ref.pixel_values)
    assert out["image_grids"].tolist() == [list(ref.grid)]


def test_generation_config_carries_every_stop_id(folder: Path) -> None:
    processor = OvisProcessor.from_pretrained(folder)
    config = json.loads((folder / "generation_config.json").read_text())
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert set(config["eos_token_id"]) == {im_end, processor.tokenizer.eos_token_id}
    assert config["pad_token_id"] == processor.pad_token_id


def test_save_load_round_trip(folder: Path, tmp_path: Path) -> None:
    processor = AutoProcessor.from_pretrained(folder)
    processor.save_pretrained(tmp_path)
    again = AutoProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == processor.to_dict()
    a = processor([{"role": "user", "content": "<image>hi"}], [red()], mode="generate")
    b = again([{"role": "user", "content": "<image>hi"}], [red()], mode="generate")
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def test_chat_template_accepts_parts_and_strings(folder: Path) -> None:
    processor = AutoProcessor.from_pretrained(folder)
    img = red()
    as_parts = processor.apply_chat_template(mm_messages(img), add_generation_prompt=True)
    as_string = processor.apply_chat_template(
        [{"role": "user", "content": "<image>What color?"}], add_generation_prompt=True
    )
    assert as_parts == as_string == "<|im_start|>user\n<image>What color?<|im_end|>\n<|im_start|>assistant\n"
    # the saved chat_template renders the same for tools that use it directly
    rendered = render_jinja_template(
        conversations=[mm_messages(img)], chat_template=processor.chat_template, add_generation_prompt=True
    )[0][0]
    assert rendered == as_parts


def test_apply_chat_template_returns_model_inputs(folder: Path) -> None:
    processor = AutoProcessor.from_pretrained(folder)
    img = red()
    inputs = processor.apply_chat_template(
        mm_messages(img), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}
    ref = processor([{"role": "user", "content": "<image>What color?"}], [img], mode="generate")
    assert torch.equal(inputs["input_ids"][0], ref["input_ids"])
    torch.testing.assert_close(inputs["pixel_values"], ref["pixel_values"])
    # images given beside the messages, for parts without one
    bare = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]}]
    again = processor.apply_chat_template(
        bare, add_generation_prompt=True, tokenize=True, return_dict=True, images=[img]
    )
    assert torch.equal(again["input_ids"], inputs["input_ids"])
    # the keyword (transformers) call form on the rendered prompt gives the same ids
    prompt = processor.apply_chat_template(mm_messages(img), add_generation_prompt=True)
    keyword = processor(text=prompt, images=[img], return_tensors="pt")
    assert torch.equal(keyword["input_ids"], inputs["input_ids"])


def test_keyword_form_batches_with_padding(folder: Path) -> None:
    processor = AutoProcessor.from_pretrained(folder)
    out = processor(
        text=["<image>a", "<image><image>a longer prompt"],
        images=[red(), red(), red((30, 30))],
        padding_side="left",
    )
    assert out["input_ids"].shape[0] == 2 and out["attention_mask"][0, 0] == 0
    with pytest.raises(ValueError, match="placeholders"):
        processor(text="<image>a", images=[red(), red()])
    with pytest.raises(ValueError, match="local paths"):
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image", "url": "https://example.com/a.png"}]}],
            tokenize=True,
        )


def test_auto_model_generates_an_answer_from_multimodal_messages(folder: Path) -> None:
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    inputs = processor.apply_chat_template(
        mm_messages(red()), add_generation_prompt=True, tokenize=True, return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert isinstance(processor.batch_decode(out[:, inputs["input_ids"].shape[1] :])[0], str)


def test_transformers_pipeline(folder: Path) -> None:
    pipe = pipeline("image-text-to-text", model=str(folder))
    out = pipe(text=mm_messages(red()), max_new_tokens=3, return_full_text=False)
    assert isinstance(out[0]["generated_text"], str)
    out = pipe(images=red(), text="<image>What color?", max_new_tokens=3)
    assert isinstance(out[0]["generated_text"], str)


def test_a_tokenizer_template_is_wrapped_to_take_parts(template_tokenizer, image_config) -> None:
    processor = OvisProcessor(template_tokenizer, image_config)
    assert processor.chat_format == "template"
    messages = mm_messages(red())
    rendered = render_jinja_template(
        conversations=[messages], chat_template=processor.chat_template, add_generation_prompt=True
    )[0][0]
    assert rendered == processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == "[user]: <image>What color?<|endoftext|>\n[assistant]: "
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    ref = processor([{"role": "user", "content": "<image>What color?"}], [red()], mode="generate")
    assert torch.equal(inputs["input_ids"][0], ref["input_ids"])


def test_several_conversations_encode_as_a_left_padded_batch(folder: Path) -> None:
    processor = AutoProcessor.from_pretrained(folder)
    chats = [mm_messages(red()), [{"role": "user", "content": "A longer question without an image?"}]]
    texts = processor.apply_chat_template(chats, add_generation_prompt=True)
    assert len(texts) == 2 and texts[1].endswith("<|im_start|>assistant\n")
    out = processor.apply_chat_template(chats, add_generation_prompt=True, tokenize=True, return_dict=True)
    ref = processor.batch([[{"role": "user", "content": "<image>What color?"}], chats[1]], [[red()], None])
    assert torch.equal(out["input_ids"], ref["input_ids"]) and out["pixel_values"].shape[0] == 1
