"""Recipes: every shipped one parses and builds (tiny-sized); malformed ones name the bad field."""

from __future__ import annotations

import pytest
import torch

from openovis.builders import build_model
from openovis.training.param_groups import assign_learning_rates
from openovis.training.recipe import Recipe, apply_overrides, load_recipe, parse, shipped_recipes


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_parses_and_builds_tiny(name):
    recipe = load_recipe(name)
    spec = recipe.model
    model = build_model(spec.preset, scale_down=True, **spec.overrides)  # no pretrained weights here
    for stage in recipe.stages:
        rates = assign_learning_rates(model, stage.module_lr)
        assert any(r > 0 for r in rates.values()), stage.name
    assert torch.isfinite(next(model.parameters())).all()


def test_shipped_defaults():
    assert {"tiny-shapes", "tiny-shapes-mlp", "paper-ovis-8b", "ovis2-2b"} <= set(shipped_recipes())
    paper = load_recipe("paper-ovis-8b")
    assert [s.module_lr for s in paper.stages][2] == {"all": 2e-5}
    assert paper.stages[0].reinit_last_block


def test_recipe_path_and_overrides(tmp_path):
    recipe = load_recipe("recipes/tiny-shapes.yaml", ["stages.1.max_steps=7", "seed=3", "model.overrides.vet_impl=reference"])
    assert recipe.stages[1].max_steps == 7 and recipe.seed == 3
    assert recipe.model.overrides == {"vet_impl": "reference"}


def _minimal(**stage):
    return {"stages": [{"name": "s", "data": [{"path": "x.json"}], "module_lr": {"vte": 1e-3}, **stage}]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stages": []}, "stages: a recipe needs at least one stage"),
        ({**_minimal(), "bogus": 1}, "bogus: unknown field"),
        (_minimal(module_lr={"vision": 1e-3}), r"stages.0.module_lr.vision: unknown module"),
        (_minimal(module_lr={"vte": 0.0}), "every module is frozen"),
        (_minimal(max_steps=0), "stages.0.max_steps: must be >= 1"),
        (_minimal(batch_size="big"), "stages.0.batch_size: expected int"),
        ({"stages": [{"name": "s", "data": [{"path": "x", "format": "csv"}], "module_lr": {"vte": 1.0}}]}, r"stages.0.data.0.format: must be one of"),
        ({**_minimal(), "precision": "fp8"}, "precision: must be one of"),
        ({**_minimal(), "model": {"preset": None}}, "model: give exactly one of preset or checkpoint"),
    ],
)
def test_malformed_recipes_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        parse(Recipe, data, "")


def test_missing_recipe_lists_shipped_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny-shapes"):
        load_recipe(tmp_path / "nope.yaml")


def test_apply_overrides_parses_yaml_values():
    data = apply_overrides({"stages": [{"a": 1}]}, ["stages.0.a=2.5e-3", "x.y=[1, 2]"])
    assert data == {"stages": [{"a": 2.5e-3}], "x": {"y": [1, 2]}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides({}, ["novalue"])


def test_a_preset_without_a_tokenizer_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="model.tokenizer: a preset model needs a tokenizer"):
        parse(Recipe, {**_minimal(), "model": {"preset": "tiny"}}, "")
    assert parse(Recipe, {**_minimal(), "model": {"preset": "tiny", "tokenizer": "shapes"}}, "").model.tokenizer == "shapes"
    assert parse(Recipe, {**_minimal(), "model": {"preset": "tiny", "llm_path": "some/llm"}}, "").model.tokenizer is None


def test_recipe_processing_settings_are_checked():
    recipe = parse(Recipe, {**_minimal(), "model": {"tokenizer": "shapes"}, "processing": {"max_image_pixels": 1000}}, "")
    assert recipe.processing == {"max_image_pixels": 1000}
    with pytest.raises(ValueError, match="processing.bogus: unknown setting"):
        parse(Recipe, {**_minimal(), "model": {"tokenizer": "shapes"}, "processing": {"bogus": 1}}, "")
