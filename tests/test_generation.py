"""The token streamer: same greedy tokens as `generate`, static cache and compiled decode step included."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_folder import save_tiny_folder

from openovis.generation import SamplingParams, TokenStreamer, pick_token
from openovis.inference import OvisPipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> OvisPipeline:
    folder = save_tiny_folder(tmp_path_factory.mktemp("gen"), seed=3)
    pipe = OvisPipeline.from_pretrained(folder, device="cpu")
    with torch.no_grad():  # larger weights than at initialization, so that greedy answers vary by position
        for p in pipe.model.llm.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    return pipe


def prompt(pipe: OvisPipeline) -> dict:
    image = Image.new("RGB", (50, 30), (0, 0, 255))
    return pipe.processor([{"role": "user", "content": "<image>What color?"}], [image], mode="generate")


def reference(pipe: OvisPipeline, sample: dict, n: int) -> list[int]:
    proc = pipe.processor
    image_ids = [proc.placeholder_id, proc.atom_token_id, *proc.indicator_token_ids]
    out = pipe.model.generate(
        input_ids=sample["input_ids"][None],
        attention_mask=sample["attention_mask"][None],
        pixel_values=sample["pixel_values"],
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=proc.stop_token_ids,
        pad_token_id=proc.pad_token_id,
        suppress_tokens=image_ids,
    )
    return out[0, sample["input_ids"].shape[0] :].tolist()


@pytest.mark.parametrize(
    ("cache", "compile_backend"),
    [
        ("dynamic", None),
        ("static", None),
        ("static", "aot_eager"),  # traces the decode step with dynamo, as inductor does; seconds
        pytest.param("static", "inductor", marks=pytest.mark.slow),  # real codegen: minutes on a busy CPU
    ],
)
def test_greedy_tokens_match_generate(pipe: OvisPipeline, cache: str, compile_backend: str | None) -> None:
    sample = prompt(pipe)
    expected = reference(pipe, sample, 12)
    assert len(set(expected)) > 1  # a sequence that can tell positions apart
    streamer = TokenStreamer.for_processor(
        pipe.model,
        pipe.processor,
        cache=cache,
        compile=compile_backend is not None,
        compile_backend=compile_backend or "inductor",
        max_cache_len=128,
    )
    params = SamplingParams(max_new_tokens=12)
    assert streamer.generate(sample["input_ids"], sample["pixel_values"], params) == expected
    # the static cache is reset between sequences
    assert streamer.generate(sample["input_ids"], sample["pixel_values"], params) == expected


@pytest.mark.slow
def test_compiled_pipeline_chat_matches_generate(pipe: OvisPipeline) -> None:
    image = Image.new("RGB", (50, 30), (0, 0, 255))
    proc = pipe.processor
    image_ids = [proc.placeholder_id, proc.atom_token_id, *proc.indicator_token_ids]
    fast = OvisPipeline(pipe.model, proc, compile=True, max_cache_len=128)
    expected = pipe.chat("What color?", [image], max_new_tokens=8, suppress_tokens=image_ids)
    assert fast.chat("What color?", [image], max_new_tokens=8) == expected


def test_static_cache_too_short_and_sampling(pipe: OvisPipeline) -> None:
    sample = prompt(pipe)
    streamer = TokenStreamer.for_processor(pipe.model, pipe.processor, cache="static", max_cache_len=16)
    with pytest.raises(ValueError, match="exceed the static cache"):
        streamer.generate(sample["input_ids"], sample["pixel_values"], SamplingParams(max_new_tokens=4))
    logits = torch.tensor([0.0, 5.0, 4.9, -3.0])
    assert pick_token(logits, SamplingParams(), None) == 1
    nucleus = SamplingParams(temperature=1.0, top_p=0.5)
    assert {pick_token(logits, nucleus, torch.Generator().manual_seed(s)) for s in range(20)} == {1}
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="compile: needs"):
        TokenStreamer(pipe.model, [0], compile=True)
