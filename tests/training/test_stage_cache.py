"""Text-only LLM stages (and regions stages, tests/training/test_regions.py) are trained once and
reused by later runs, whatever their connector."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from openovis.builders import build_model
from openovis.training import stage_cache
from openovis.training.recipe import Recipe, StageSpec, parse
from openovis.training.run import train

TEXT = {"name": "stage0-text", "data": [{"path": "corpus.txt", "format": "text"}], "module_lr": {"llm": 2e-3}}
TEXT.update(max_steps=4, batch_size=4, max_length=48)
REGIONS = {"name": "stage0-regions", "data": [{"path": "scenes_train.jsonl", "format": "regions"}]}
REGIONS.update(module_lr={"visual_tokenizer.backbone": 2e-3})
CAPTIONS = {"name": "stage1", "data": [{"path": "captions_train.jsonl", "format": "caption"}]}
CAPTIONS.update(module_lr={"all": 1e-3}, max_steps=2, batch_size=2, max_length=96)


def _recipe(tmp_path, name: str, connector: str, text_steps: int = 4) -> Recipe:
    data = {
        "model": {
            "preset": "tiny",
            "overrides": {"connector": connector},
            "tokenizer": {"train_on": "corpus.txt", "vocab_size": 320},
        },
        "generate": {"source": "shapes", "config": {"n_train": 8, "n_test": 7}},
        "data_root": str(tmp_path / "data"),
        "output_dir": str(tmp_path / name),
        "stage_cache": str(tmp_path / "cache"),
        "stages": [{**TEXT, "max_steps": text_steps}, CAPTIONS],
        "report_to": [],
    }
    return parse(Recipe, data, "")


def test_a_second_run_reuses_the_text_stage_instead_of_training_it(tmp_path):
    first = train(_recipe(tmp_path, "vet", "vet"), progress=False)
    assert "cached" not in first["stages"][0]
    (entry,) = (tmp_path / "cache").iterdir()
    assert entry.name.startswith("stage0-text-")

    second = train(_recipe(tmp_path, "mlp", "mlp"), progress=False)  # another connector, same LLM stage
    assert second["stages"][0]["cached"] == str(entry)
    assert second["stages"][0]["steps"] == first["stages"][0]["steps"]
    assert not (tmp_path / "mlp" / "stage0-text").exists()  # not retrained
    assert (tmp_path / "mlp" / "stage1" / "final").exists()  # the visual stage still trained
    assert len(list((tmp_path / "cache").iterdir())) == 1

    # what the second run loaded is the first run's text-trained LLM
    trained = load_file(tmp_path / "vet" / "stage0-text" / "final" / "model.safetensors")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "vet" / "tokenizer")
    model = build_model("tiny", tokenizer=tokenizer, connector="mlp")
    stage_cache.load(model, parse(StageSpec, TEXT, ""), entry)
    compared = 0
    for name, value in model.llm.state_dict().items():
        if f"llm.{name}" in trained:
            torch.testing.assert_close(value, trained[f"llm.{name}"], rtol=0, atol=0)
            compared += 1
    assert compared >= 10

    third = train(_recipe(tmp_path, "longer", "vet", text_steps=5), progress=False)  # another stage spec
    assert "cached" not in third["stages"][0]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_only_leading_text_llm_and_regions_backbone_stages_are_cacheable():
    text = parse(StageSpec, TEXT, "")
    visual = parse(StageSpec, CAPTIONS, "")
    everything = parse(StageSpec, {**TEXT, "module_lr": {"all": 1e-3}}, "")
    regions = parse(StageSpec, REGIONS, "")
    assert stage_cache.cacheable([text], 0)
    assert stage_cache.cacheable([text, text], 1)
    assert stage_cache.cacheable([regions, text], 1) and stage_cache.cacheable([text, regions], 1)
    assert not stage_cache.cacheable([visual, regions], 1)
    assert not stage_cache.cacheable([text, visual], 1)
    assert not stage_cache.cacheable([visual, text], 1)  # the LLM entering it is not the fresh one
    assert not stage_cache.cacheable([everything], 0)  # it would train the visual side too
