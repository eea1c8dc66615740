"""`openovis convert` on the golden official Ovis2.5 folder (tests/fixtures/official/ovis25).

One command, no other argument: the converted folder loads as a pipeline whose processor gives the
official pixels and ids, and the model reproduces what the official code computed (visual-word
probabilities with the reference VET, visual embeddings, logits); openovis -> official -> openovis
is bit-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ovis25_fixture import FIXTURES, IMAGE_SIZES, META, make_image, sha
from safetensors.torch import load_file
from torch.testing import assert_close
from typer.testing import CliRunner

from openovis.cli import app
from openovis.convert import detect_layout, official_placeholder_map
from openovis.convert.ovis2_hf import read_safetensors
from openovis.inference import OvisPipeline
from openovis.modeling.ovis import OvisForConditionalGeneration
from openovis.processing.processor import OvisProcessor

OUT = load_file(str(FIXTURES / "outputs.safetensors"))


def _convert(*args: object) -> str:
    result = CliRunner().invoke(app, ["convert", *map(str, args)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("ovis25") / "openovis"
    output = _convert(FIXTURES / "model", dst)
    assert "native resolution" in output and "Qwen3ConversationFormatter" in output
    return dst


def official_ids(model: OvisForConditionalGeneration) -> torch.Tensor:
    """The fixture's official input ids (atoms already one per visual token) in the converted vocabulary."""
    to_ours = official_placeholder_map(model.config)
    return torch.tensor([[to_ours.get(i, i) for i in META["model"]["input_ids"]]])


def test_layout_and_folder(converted) -> None:
    assert detect_layout(FIXTURES / "model") == "official-2.5"
    assert detect_layout(converted) == "openovis"
    for name in ("config.json", "processor_config.json", "generation_config.json", "tokenizer_config.json"):
        assert (converted / name).is_file(), name
    config = json.loads((converted / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "openovis_navit"
    assert config["indicator_tokens"] == ["<IMG_START>", "<IMG_END>", "<VID_START>", "<VID_END>"]
    image = json.loads((converted / "processor_config.json").read_text())["image_processing"]
    assert (
        image["native_resolution"] and image["min_pixels"] == META["pixel_settings"]["default"]["min_pixels"]
    )
    assert image["max_pixels"] == META["pixel_settings"]["default"]["max_pixels"]
    generation = json.loads((converted / "generation_config.json").read_text())
    assert generation["eos_token_id"][0] == META["tokenizer"]["<|im_end|>"]


@torch.no_grad()
def test_converted_model_matches_the_official_outputs(converted) -> None:
    model = OvisForConditionalGeneration.from_pretrained(
        converted, dtype=torch.float32, vet_impl="reference"
    ).eval()
    pixels, grid = OUT["model.pixel_values"].float(), OUT["model.grid_thw"]
    # the reference VET on the official probabilities is bit-identical; the probabilities themselves
    # differ in the last bits (the encoder's attention sums in another order than the official one)
    assert torch.equal(model.connector.vte(OUT["model.probs"]), OUT["model.visual_embeds"])
    probs = model.visual_probabilities(pixels, grid)[0]  # [3, K]
    assert_close(probs, OUT["model.probs"], rtol=0, atol=1e-6)
    visual = model.visual_embeddings(pixels, grid)[0]
    assert_close(visual, OUT["model.visual_embeds"], rtol=0, atol=1e-6)
    ids = official_ids(model)
    embeds = model.embed_inputs(ids, pixels, grid_thw=grid)[0]
    assert_close(embeds, OUT["model.inputs_embeds"], rtol=0, atol=1e-6)
    logits = model(input_ids=ids, pixel_values=pixels, grid_thw=grid).logits[0]
    official = OUT["model.logits"]
    assert_close(logits[:, : official.shape[1]], official, rtol=0, atol=1e-5)
    model.config.vet_impl = "chunked"
    assert_close(model.visual_probabilities(pixels, grid)[0], OUT["model.probs"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("index", [0, 2, 3, 4, 5], ids=lambda i: "h{}_w{}".format(*IMAGE_SIZES[i]))
def test_processor_pixels_match_the_official_ones(converted, index) -> None:
    h, w = IMAGE_SIZES[index]
    processor = OvisProcessor.from_pretrained(converted)
    sample = processor("<image>\nDescribe the picture.", [make_image(h, w, index)], mode="generate")
    rec = META["images"][f"h{h}_w{w}"]["default"]
    t, gh, gw = sample["grid_thw"][0].tolist()
    assert int(sample["input_ids"].eq(processor.atom_token_id).sum()) == gh * gw // 4
    if "error" in rec:  # 1x1: the official code raises; ours resizes it to the smallest budget
        assert gh * gw * 256 >= META["pixel_settings"]["default"]["min_pixels"]
        return
    assert sample["grid_thw"].tolist() == rec["grid_thw"]
    assert sha(sample["pixel_values"]) == rec["sha256_f32"]


@torch.no_grad()
def test_pipeline_inputs_from_the_image_give_the_official_logits(converted) -> None:
    """End to end from the image, with the fixture run's pixel budget: official pixels, ids, logits."""
    budget = {k: META["model"][k] for k in ("min_pixels", "max_pixels")}
    pipe = OvisPipeline.from_pretrained(converted, device="cpu")
    pipe.model.config.vet_impl = "reference"
    processor = OvisProcessor.from_pretrained(converted, **budget)
    image = make_image(37, 100, IMAGE_SIZES.index((37, 100)))
    sample = processor(META["model"]["prompt_text"], [image], mode="generate")
    assert torch.equal(sample["pixel_values"].half(), OUT["model.pixel_values"])
    assert sample["input_ids"].tolist() == official_ids(pipe.model)[0].tolist()
    pixels = sample["pixel_values"].half().float()  # the official run's fp16-rounded pixels
    logits = pipe.model(input_ids=sample["input_ids"][None], pixel_values=pixels, grid_thw=sample["grid_thw"])
    official = OUT["model.logits"]
    assert_close(logits.logits[0, :, : official.shape[1]], official, rtol=0, atol=1e-5)


def test_round_trip_through_the_official_layout_is_bit_identical(converted, tmp_path) -> None:
    _convert(converted, tmp_path / "official", "--to", "official")
    assert detect_layout(tmp_path / "official") == "official-2.5"
    exported, original = read_safetensors(tmp_path / "official"), read_safetensors(FIXTURES / "model")
    assert set(exported) == set(original)
    for key, tensor in original.items():
        if "embed_tokens" in key:  # grown by the added tokens
            assert torch.equal(exported[key][: tensor.shape[0]], tensor), key
        else:
            assert torch.equal(exported[key], tensor), key
    config = json.loads((tmp_path / "official" / "config.json").read_text())
    official = json.loads((FIXTURES / "model" / "config.json").read_text())
    assert config["vit_config"] == {k: v for k, v in official["vit_config"].items()}
    assert config["visual_vocab_size"] == official["visual_vocab_size"]
    assert config["conversation_formatter_class"] == "Qwen3ConversationFormatter"
    _convert(tmp_path / "official", tmp_path / "back")
    back, ours = read_safetensors(tmp_path / "back"), read_safetensors(converted)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    first, second = (json.loads((p / "config.json").read_text()) for p in (converted, tmp_path / "back"))
    for field in ("image_atom_id", "indicator_token_ids", "indicator_tokens", "vision_config", "text_config"):
        assert first[field] == second[field], field


def test_hf_ovis2_export_is_refused(converted, tmp_path) -> None:
    result = CliRunner().invoke(app, ["convert", str(converted), str(tmp_path / "hf"), "--to", "hf-ovis2"])
    assert result.exit_code != 0 and "vision_config" in result.output


def test_thinking_switch_sets_the_generation_prompt(converted) -> None:
    pipe = OvisPipeline.from_pretrained(converted, device="cpu")
    decode = pipe.processor.tokenizer.decode
    off = decode(pipe.prepare("Hi", None, 4, thinking=False)["input_ids"])
    on = decode(pipe.prepare("Hi", None, 4, thinking=True)["input_ids"])
    default = decode(pipe.prepare("Hi", None, 4)["input_ids"])
    preface = META["model"]["generation_preface"]
    assert off == default and off.endswith("<|im_start|>assistant\n" + preface)
    assert on == off.removesuffix(preface)


@pytest.mark.parametrize("flag", ["--thinking", "--no-thinking"])
def test_chat_command_answers_with_thinking_on_and_off(converted, tmp_path, flag) -> None:
    path = tmp_path / "image.png"
    make_image(100, 37, 3).save(path)
    args = ["chat", "--model", str(converted), "--image", str(path), "--max-new-tokens", "4", flag]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "Describe the picture."])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert isinstance(result.output, str)


def test_pipeline_chat_keeps_a_multi_turn_history(converted) -> None:
    pipe = OvisPipeline.from_pretrained(converted, device="cpu")
    history = pipe.new_conversation()
    image = make_image(37, 100, 2)
    for thinking in (True, False):
        answer = pipe.chat("What is it?", [image], history=history, max_new_tokens=3, thinking=thinking)
        assert isinstance(answer, str)
    assert [m["role"] for m in history.messages] == ["user", "assistant"] * 2 and len(history.images) == 2


def test_thinking_budget_closes_the_block_and_leaves_room_for_the_answer(converted) -> None:
    pipe = OvisPipeline.from_pretrained(converted, device="cpu")
    sample = pipe.prepare("<image>\nDescribe the picture.", [make_image(37, 100, 2)], 8, thinking=True)
    inputs = {
        "input_ids": sample["input_ids"][None],
        "attention_mask": sample["attention_mask"][None],
        "pixel_values": sample["pixel_values"],
        "grid_thw": sample["grid_thw"],
    }
    end_think = pipe.processor.tokenizer.convert_tokens_to_ids("</think>")
    stops = set(pipe.processor.stop_token_ids)
    new = pipe._think_then_answer(inputs, 2, 8, False, None).tolist()
    # the random model closes its block within 2 tokens, or the block is closed for it
    first = new.index(end_think)
    assert first <= 3 and len(new) <= 8
    assert not stops.intersection(new[:first])
    with pytest.raises(ValueError, match="thinking_budget"):
        pipe.chat("Hi", thinking_budget=4)
    answer = pipe.chat("Hi", thinking=True, thinking_budget=2, max_new_tokens=6)
    assert isinstance(answer, str)
