"""Recipes: every shipped one parses and builds (tiny-sized); malformed ones name the bad field."""

from __future__ import annotations

import pytest
import torch

from openovis.builders import build_model
from openovis.training.param_groups import assign_learning_rates
from openovis.training.recipe import (
    GeneratedDataSpec,
    Recipe,
    TokenizerTrainingSpec,
    apply_overrides,
    load_recipe,
    parse,
    shipped_recipes,
)


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
    recipe = load_recipe(
        "recipes/tiny-shapes.yaml", ["stages.1.max_steps=7", "seed=3", "model.overrides.vet_impl=reference"]
    )
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
        (
            {"stages": [{"name": "s", "data": [{"path": "x", "format": "csv"}], "module_lr": {"vte": 1.0}}]},
            r"stages.0.data.0.format: must be one of",
        ),
        ({**_minimal(), "precision": "fp8"}, "precision: must be one of"),
        ({**_minimal(), "model": {"preset": None}}, "model: give exactly one of preset or checkpoint"),
        (
            {**_minimal(), "shapes": {"seed": 0}},
            r"shapes: unknown field \(generated data is now declared as generate:",
        ),
        ({**_minimal(), "generate": {"source": "mnist"}}, "generate.source: unknown generator 'mnist'"),
        (
            {**_minimal(), "generate": {"source": "shapes", "config": {"n_train": 0}}},
            "generate.config.n_train: must be in",
        ),
        (
            {**_minimal(), "generate": {"source": "shapes", "config": {"sizes": 2}}},
            "generate.config.sizes: unknown setting",
        ),
        ({**_minimal(), "model": {"tokenizer": "shapes"}}, "model.tokenizer: 'shapes' is not a tokenizer"),
        ({**_minimal(), "model": {"tokenizer": {"vocab_size": 300}}}, "model.tokenizer: .*train_on"),
        (
            {**_minimal(), "model": {"tokenizer": {"train_on": "c.txt", "size": 3}}},
            "model.tokenizer.size: unknown field",
        ),
        (
            {"stages": [{"name": "s", "data": [{"path": "x"}], "module_lr": {"vte": {"head": 1.0}}}]},
            r"stages.0.module_lr.vte: expected a number, got \{'head': 1.0\}",
        ),
        (
            {
                "stages": [
                    {"name": "s", "data": [{"path": "x"}], "module_lr": {"vte": 1.0}, "min_lr_ratio": "low"}
                ]
            },
            "stages.0.min_lr_ratio: expected a number, got 'low'",
        ),
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


def test_an_override_names_a_dotted_module_of_module_lr():
    base = {"stages": [{"module_lr": {"all": 1e-3, "visual_tokenizer.backbone": 0.0}}]}
    data = apply_overrides(base, ["stages.0.module_lr.visual_tokenizer.head=3e-3"])
    assert data["stages"][0]["module_lr"] == {
        "all": 1e-3,
        "visual_tokenizer.backbone": 0.0,
        "visual_tokenizer.head": "3e-3",  # YAML 1.1 reads 3e-3 as text; parsing makes it a number
    }
    recipe = load_recipe("tiny-shapes-regions", ["stages.1.module_lr.visual_tokenizer.head=3e-3"])
    assert recipe.stages[1].module_lr["visual_tokenizer.head"] == 3e-3
    assert recipe.stages[1].module_lr["visual_tokenizer.backbone"] == 0.0


def test_generated_data_and_trained_tokenizer_are_declared_not_named():
    recipe = load_recipe("tiny-shapes", ["generate.config.n_train=100", "model.tokenizer.vocab_size=512"])
    assert recipe.generate == GeneratedDataSpec("shapes", {"seed": 0, "n_train": 100})
    assert recipe.model.tokenizer == TokenizerTrainingSpec(train_on="corpus.txt", vocab_size=512)
    assert load_recipe("ovis2-2b").model.tokenizer == "Qwen/Qwen2.5-1.5B-Instruct"  # a hub id stays a string


_TRAINED = {"train_on": "corpus.txt"}


def test_a_preset_without_a_tokenizer_is_refused_naming_the_field():
    with pytest.raises(
        ValueError, match=r"model.tokenizer: a preset model needs a tokenizer.*\{train_on: FILE\}"
    ):
        parse(Recipe, {**_minimal(), "model": {"preset": "tiny"}}, "")
    recipe = parse(Recipe, {**_minimal(), "model": {"preset": "tiny", "tokenizer": _TRAINED}}, "")
    assert recipe.model.tokenizer == TokenizerTrainingSpec(train_on="corpus.txt")
    assert parse(Recipe, {**_minimal(), "model": {"preset": "tiny", "tokenizer": "some/hub-id"}}, "")
    assert (
        parse(Recipe, {**_minimal(), "model": {"preset": "tiny", "llm_path": "some/llm"}}, "").model.tokenizer
        is None
    )


def test_recipe_processing_settings_are_checked():
    recipe = parse(
        Recipe, {**_minimal(), "model": {"tokenizer": _TRAINED}, "processing": {"max_image_pixels": 1000}}, ""
    )
    assert recipe.processing == {"max_image_pixels": 1000}
    with pytest.raises(ValueError, match="processing.bogus: unknown setting"):
        parse(Recipe, {**_minimal(), "model": {"tokenizer": _TRAINED}, "processing": {"bogus": 1}}, "")
