"""`openovis convert` on the golden official Ovis1.6 / Ovis2 folders (tests/fixtures/official).

One command, no other argument: the converted folder loads as a pipeline, and the converted model
reproduces what the official code computed on the stored pixel values (visual-word probabilities
bit-identical with the reference VET, logits within 1e-5); openovis -> official -> openovis is
bit-identical.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.testing import assert_close
from transformers import AutoTokenizer
from typer.testing import CliRunner

from openovis.cli import app
from openovis.convert import detect_layout, official_placeholder_map
from openovis.convert.ovis2_hf import read_safetensors
from openovis.inference import OvisPipeline
from openovis.modeling.ovis import OvisForConditionalGeneration
from openovis.processing.processor import OvisProcessor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official"
GENERATIONS = ["ovis16", "ovis2"]
ATOM, FIRST_INDICATOR = -300, -301


def _convert(*args: object) -> str:
    result = CliRunner().invoke(app, ["convert", *map(str, args)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _refused(*args: object) -> str:
    result = CliRunner().invoke(app, ["convert", *map(str, args)])
    assert result.exit_code != 0
    return result.output


@pytest.fixture(scope="module", params=GENERATIONS)
def converted(request, tmp_path_factory) -> tuple[str, Path, str]:
    dst = tmp_path_factory.mktemp(request.param) / "openovis"
    output = _convert(FIXTURES / request.param / "model", dst)
    return request.param, dst, output


def _official_inputs(model: OvisForConditionalGeneration, meta: dict, tokens_per_crop: int) -> torch.Tensor:
    """The fixture prompt's official ids with the placeholders mapped (each atom -> T atoms)."""
    to_ours = official_placeholder_map(model.config)
    ids: list[int] = []
    for i in meta["model"]["input_ids"]:
        ids += [to_ours[ATOM]] * tokens_per_crop if i == ATOM else [to_ours.get(i, i)]
    return torch.tensor([ids])


def test_layouts_are_detected() -> None:
    assert detect_layout(FIXTURES / "ovis16" / "model") == "official"
    assert detect_layout(FIXTURES / "ovis2" / "model") == "official"
    assert detect_layout(FIXTURES / "ovis25" / "model") == "official-2.5"


@torch.no_grad()
def test_converted_model_matches_the_official_outputs(converted) -> None:
    generation, dst, output = converted
    assert ("attention-pooling head" in output) == (generation == "ovis16")
    outputs = load_file(FIXTURES / generation / "outputs.safetensors")
    meta = json.loads((FIXTURES / generation / "meta.json").read_text())
    model = OvisForConditionalGeneration.from_pretrained(
        dst, dtype=torch.float32, vet_impl="reference"
    ).eval()
    pixel_values = outputs["model.pixel_values"].float()
    probs = model.visual_probabilities(pixel_values)
    assert torch.equal(probs, outputs["model.probs"])
    assert torch.equal(model.visual_embeddings(pixel_values), outputs["model.visual_embeds"])
    ids = _official_inputs(model, meta, probs.shape[1])
    logits = model(input_ids=ids, pixel_values=pixel_values, attention_mask=torch.ones_like(ids)).logits[0]
    official = outputs["model.logits"]
    assert_close(logits[:, : official.shape[1]], official, rtol=0, atol=1e-5)

    model.config.vet_impl = "chunked"
    assert_close(model.visual_probabilities(pixel_values), outputs["model.probs"], rtol=0, atol=1e-5)


def test_converted_folder_is_complete(converted) -> None:
    generation, dst, _ = converted
    for name in ("config.json", "processor_config.json", "generation_config.json", "tokenizer_config.json"):
        assert (dst / name).is_file(), name
    processor = json.loads((dst / "processor_config.json").read_text())["image_processing"]
    official = json.loads((FIXTURES / generation / "model" / "preprocessor_config.json").read_text())
    assert (
        processor["image_mean"] == official["image_mean"] and processor["image_std"] == official["image_std"]
    )
    if generation == "ovis2":  # AIMv2: CLIP normalization
        assert processor["image_mean"][0] == pytest.approx(0.48145466)
    else:  # SigLIP
        assert processor["image_mean"] == [0.5, 0.5, 0.5]
    assert processor["max_partition"] == 9
    config = json.loads((dst / "config.json").read_text())
    generation_config = json.loads((dst / "generation_config.json").read_text())
    stop = {"ovis16": 5, "ovis2": 2}[generation]  # <end_of_turn>, <|im_end|>
    assert generation_config["eos_token_id"][0] == stop

    pipe = OvisPipeline.from_pretrained(dst, device="cpu")
    assert pipe.processor.atom_token_id == config["image_atom_id"]
    assert isinstance(
        pipe.chat("Describe the picture.", images=[Image.new("RGB", (40, 30))], max_new_tokens=3), str
    )


def test_chat_template_is_the_official_formatter(converted) -> None:
    generation, dst, _ = converted
    meta = json.loads((FIXTURES / generation / "meta.json").read_text())
    pipe = OvisPipeline.from_pretrained(dst, device="cpu")
    rendered = pipe.processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": meta["model"]["prompt_text"]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered == meta["model"]["formatted_prompt"]


def test_round_trip_through_the_official_layout_is_bit_identical(converted, tmp_path) -> None:
    generation, dst, _ = converted
    _convert(dst, tmp_path / "official", "--to", "official")
    assert detect_layout(tmp_path / "official") == "official"
    exported = read_safetensors(tmp_path / "official")
    original = read_safetensors(FIXTURES / generation / "model")
    kept = {k for k in original if ".vision_model.head." not in k}
    assert set(exported) == kept
    for key in kept:
        if "embed_tokens" in key or "lm_head" in key:  # grown by the added tokens
            assert torch.equal(exported[key][: original[key].shape[0]], original[key]), key
        else:
            assert torch.equal(exported[key], original[key]), key
    _convert(tmp_path / "official", tmp_path / "back")
    back, ours = read_safetensors(tmp_path / "back"), read_safetensors(dst)
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    first, second = (json.loads((p / "config.json").read_text()) for p in (dst, tmp_path / "back"))
    for field in (
        "image_atom_id",
        "indicator_token_ids",
        "indicator_tokens",
        "visual_vocab_size",
        "backbone_feature",
    ):
        assert first[field] == second[field], field


def test_hf_ovis2_export_needs_consent(tmp_path) -> None:
    src = FIXTURES / "ovis2" / "model"
    output = _refused(src, tmp_path / "hf", "--to", "hf-ovis2")
    assert "pre_norm" in output and "accept_post_norm" in output
    _convert(src, tmp_path / "hf", "--to", "hf-ovis2", "--accept-post-norm")
    assert detect_layout(tmp_path / "hf") == "hf-ovis2"
    # transformers' Ovis2 is post-norm: back to official needs the other consent
    assert "accept-pre-norm" in _refused(tmp_path / "hf", tmp_path / "off", "--to", "official")
    _convert(tmp_path / "hf", tmp_path / "off", "--to", "official", "--accept-pre-norm")


def test_refusals_name_what(tmp_path) -> None:
    assert "vision_config" in _refused(FIXTURES / "ovis16" / "model", tmp_path / "a", "--to", "hf-ovis2")


def test_deprecated_direction_still_works(tmp_path) -> None:
    output = _convert(FIXTURES / "ovis2" / "model", tmp_path / "d", "--direction", "official-to-openovis")
    assert detect_layout(tmp_path / "d") == "openovis" and "wrote" in output
    _refused(FIXTURES / "ovis2" / "model", tmp_path / "e", "--direction", "hf-to-openovis")


def test_spare_embedding_rows_are_used_without_resizing(tmp_path) -> None:
    """Real Qwen2 checkpoints have more embedding rows than tokens: the added tokens go there."""
    src = tmp_path / "official"
    shutil.copytree(FIXTURES / "ovis2" / "model", src)
    config = json.loads((src / "config.json").read_text())
    rows = config["llm_config"]["vocab_size"] + 16
    config["llm_config"]["vocab_size"] = rows
    (src / "config.json").write_text(json.dumps(config))
    state = read_safetensors(src)
    key = "llm.model.embed_tokens.weight"
    state[key] = torch.cat([state[key], torch.zeros(16, state[key].shape[1], dtype=state[key].dtype)])
    save_file(state, src / "model.safetensors")
    output = _convert(src, tmp_path / "ours")
    assert "spare embedding rows" in output and "resized" not in output
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert ours["text_config"]["vocab_size"] == rows
    assert max(ours["indicator_token_ids"]) < rows
    assert torch.equal(read_safetensors(tmp_path / "ours")[key], state[key])


def _make_fixtures_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def test_pipeline_inputs_from_the_image_match_the_official_ones(converted) -> None:
    """End to end from the image: the converted folder's processor cuts the official crops and lays
    them out as the official code does, so the model's logits are the official ones."""
    generation, dst, _ = converted
    fixtures = _make_fixtures_module()
    outputs = load_file(FIXTURES / generation / "outputs.safetensors")
    meta = json.loads((FIXTURES / generation / "meta.json").read_text())
    image = fixtures.make_image(*fixtures.MODEL_IMAGE, seed=fixtures.IMAGE_SIZES.index(fixtures.MODEL_IMAGE))
    pipe = OvisPipeline.from_pretrained(dst, device="cpu")
    pipe.model.config.vet_impl = "reference"
    sample = OvisProcessor.from_pretrained(dst, max_partition=meta["model"]["max_partition"])(
        meta["model"]["prompt_text"], [image], mode="generate"
    )
    official_pixels = outputs["model.pixel_values"]  # stored in fp16
    assert_close(sample["pixel_values"], official_pixels.float(), rtol=0, atol=1e-3)
    pixel_values = sample["pixel_values"].half().float()
    assert torch.equal(pixel_values, official_pixels.float())
    expected = _official_inputs(pipe.model, meta, outputs["model.probs"].shape[1])[0]
    ids = sample["input_ids"]
    if generation == "ovis16":  # the fixture's byte-level BPE saved as Gemma (see docs): layout only
        first, last = (expected >= pipe.model.config.image_atom_id).nonzero().flatten()[[0, -1]]
        expected = expected[first : last + 1]
        ids = ids[(ids >= pipe.model.config.image_atom_id).nonzero().flatten()[0] :][: len(expected)]
    assert ids.tolist() == expected.tolist()
    if generation == "ovis2":
        logits = pipe.model(input_ids=ids[None], pixel_values=pixel_values).logits[0]
        assert_close(
            logits[:, : outputs["model.logits"].shape[1]], outputs["model.logits"], rtol=0, atol=1e-5
        )


def test_ovis25_chat_template_renders_the_official_prompt() -> None:
    from openovis.convert.folders import QWEN3_TEMPLATE

    meta = json.loads((FIXTURES / "ovis25" / "meta.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "ovis25" / "model")
    chat = [{"role": "user", "content": meta["model"]["prompt_text"]}]
    kwargs = {"chat_template": QWEN3_TEMPLATE, "tokenize": False, "add_generation_prompt": True}
    assert tokenizer.apply_chat_template(chat, **kwargs) == meta["model"]["formatted_prompt"]
    thinking = tokenizer.apply_chat_template(chat, enable_thinking=True, **kwargs)
    assert thinking == meta["model"]["formatted_prompt"].removesuffix(meta["model"]["generation_preface"])
