"""`openovis ablate`: grid recipes, the run cache, aggregation and the written results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from openovis.builders import build_config
from openovis.cli import app
from openovis.experiments import ablation, grid
from openovis.experiments.ablation import AblationConfig, grid_runs
from openovis.experiments.grid import (
    Run,
    Workspace,
    paper_stages,
    recipe_data,
    with_mlp_connector,
    with_stages,
)
from openovis.experiments.shapes import SPLITS
from openovis.experiments.tables import aggregate
from openovis.modeling.connector import build_connector
from openovis.training.recipe import Recipe, parse

TYPES = ("color", "shape")


def test_mlp_twin_is_the_shipped_mlp_recipe():
    derived = with_mlp_connector(recipe_data("tiny-shapes"))
    shipped = recipe_data("tiny-shapes-mlp")
    derived.pop("output_dir"), shipped.pop("output_dir")
    assert derived == shipped
    assert "vte" in recipe_data("tiny-shapes")["stages"][1]["module_lr"]  # the original is untouched


def _connector_size(data: dict) -> int:
    config = build_config(data["model"]["preset"], **data["model"].get("overrides", {}))
    return sum(p.numel() for p in build_connector(config).parameters())


@pytest.mark.parametrize(
    "name", ["tiny-shapes", "tiny-shapes-curriculum", "tiny-shapes-regions", "small-shapes"]
)
def test_the_mlp_twin_has_about_the_vets_connector_size(name):
    vet = _connector_size(recipe_data(name))
    mlp = _connector_size(with_mlp_connector(recipe_data(name)))
    assert abs(mlp - vet) <= 0.05 * vet, (vet, mlp)


@pytest.mark.parametrize("variant", ["1", "3", "1+2", "1+3", "2+3", "1+2+3"])
def test_stage_variants_keep_stage0_and_the_total_steps(variant):
    base = recipe_data("tiny-shapes")
    data = with_stages(base, variant)
    parse(Recipe, data, "")  # still a valid recipe
    total = sum(base["stages"][i]["max_steps"] for i in paper_stages(base))
    assert data["stages"][0]["name"] == "stage0-text"
    assert data["stages"][0]["max_steps"] == base["stages"][0]["max_steps"]
    kept = [base["stages"][i]["name"] for i in paper_stages(base)]
    assert [s["name"] for s in data["stages"][1:]] == [kept[int(k) - 1] for k in variant.split("+")]
    assert abs(sum(s["max_steps"] for s in data["stages"][1:]) - total) <= 1


def test_a_regions_stage_is_a_stand_in_not_a_paper_stage():
    demo = recipe_data("tiny-shapes-regions")
    assert demo["stages"][0]["data"][0]["format"] == "regions"
    assert paper_stages(demo) == [1, 2]
    assert [s["name"] for s in with_stages(demo, "2")["stages"]] == ["stage0-regions", "stage3b-qa"]


@pytest.mark.parametrize(
    ("experiment", "values", "message"),
    [
        ("stages", ["4"], "paper stages 1..3"),
        ("stages", ["one"], "stage numbers joined by"),
        ("vocab", ["big"], "integers"),
        ("connector", ["cnn"], "vet and mlp"),
    ],
)
def test_bad_grid_values_name_the_problem(tmp_path, experiment, values, message):
    cfg = AblationConfig(experiment, tmp_path, values=values)
    with pytest.raises(ValueError, match=message):
        grid_runs(cfg, Workspace(tmp_path))


def test_unknown_experiment_and_seeds():
    with pytest.raises(ValueError, match="experiment: must be one of connector, vocab, stages"):
        AblationConfig("dropout")
    with pytest.raises(ValueError, match="seeds"):
        AblationConfig("vocab", seeds=0)
    with pytest.raises(ValueError, match="device: must be one of .*got 'tpu'"):
        AblationConfig("vocab", device="tpu")


def test_models_are_evaluated_on_the_configured_device(tmp_path, monkeypatch):
    seen = {}

    class Loaded(Exception):
        pass

    def load(folder, device=None, dtype=None):
        seen["device"] = device
        raise Loaded

    monkeypatch.setattr("openovis.training.run.train", lambda recipe, **_: {"final_model": str(tmp_path)})
    monkeypatch.setattr("openovis.inference.OvisPipeline.from_pretrained", load)
    ws = AblationConfig("connector", tmp_path, device="cpu").workspace()
    with pytest.raises(Loaded):
        grid.run(grid_runs(AblationConfig("connector", tmp_path), ws)[0], ws)
    assert seen["device"] == torch.device("cpu")


def test_recipes_without_shapes_world_are_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**recipe_data("tiny-shapes"), "generate": None}))
    with pytest.raises(ValueError, match="must generate it"):
        Workspace(tmp_path).base(str(recipe))


def test_run_key_ignores_locations_and_sees_everything_else(tmp_path):
    base = Workspace(tmp_path).base("tiny-shapes")
    moved = Workspace(tmp_path / "elsewhere").base("tiny-shapes")
    assert base["model"]["tokenizer"] != moved["model"]["tokenizer"]
    assert Run("vet", 0, base).key() == Run("vet", 0, moved).key()
    assert Run("vet", 0, base).key() != Run("vet", 1, base).key()
    assert Run("vet", 0, base).key() != Run("vet", 0, grid.with_vocab(base, 64)).key()
    quick = Workspace(tmp_path, quick=True).base("tiny-shapes")
    assert Run("vet", 0, base).key() != Run("vet", 0, quick).key()


def test_experiments_share_a_run_when_the_point_is_the_same(tmp_path):
    ws = Workspace(tmp_path)
    vet = grid_runs(AblationConfig("connector", tmp_path), ws)[0]  # the demo's recipe
    k512 = grid_runs(AblationConfig("vocab", tmp_path, values=["512"], recipe="tiny-shapes-regions"), ws)[0]
    assert vet.key() == k512.key()
    curriculum = grid_runs(AblationConfig("vocab", tmp_path, values=["512"]), ws)[0]  # vocab's default
    stages = AblationConfig("stages", tmp_path, values=["1+2"], recipe="tiny-shapes-curriculum")
    all_stages = grid_runs(stages, ws)[0]  # the curriculum's two QA stages, both kept
    assert curriculum.key() == all_stages.key() != vet.key()
    paper = grid_runs(AblationConfig("stages", tmp_path, values=["1+2+3"]), ws)[0]
    assert paper.key() != vet.key()  # by default, stages varies the paper's recipe
    folder = vet.folder(tmp_path)
    assert folder.name == f"vet-seed0-{vet.key()}"
    folder.mkdir(parents=True)
    assert k512.folder(tmp_path) == folder  # found under its first label
    first = curriculum.folder(tmp_path)
    first.mkdir(parents=True)
    assert all_stages.folder(tmp_path) == first


def _fake_result(point: Run, ws: Workspace, accuracy: float) -> dict:
    per_type = {t: {"accuracy": accuracy, "n": 10} for t in TYPES}
    metrics = {"overall": accuracy, "per_type": per_type, "n": 20}
    return {
        "label": point.label,
        "seed": point.seed,
        "connector": "vet",
        "run": str(point.folder(ws.out)),
        "model": "",
        "train_seconds": 1.0,
        "stages": [],
        "final_loss": 0.5,
        "params": 100,
        "connector_params": 10,
        "eval": {split: metrics for split in SPLITS},
        "usage": {"effective_vocab": 4.0, "mean_entropy": 1.0, "argmax_words": 3},
    }


def test_finished_runs_are_reused_not_recomputed(tmp_path, monkeypatch):
    ws = Workspace(tmp_path)
    point = grid_runs(AblationConfig("vocab", tmp_path, values=["64"]), ws)[0]
    folder = point.folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(_fake_result(point, ws, 0.7)))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("openovis.training.run.train", no_training)
    result = grid.run(point, ws)
    assert result["cached"] and result["eval"]["in-distribution"]["overall"] == 0.7
    again = grid.run(Run("another label", point.seed, point.recipe), ws)
    assert again["cached"] and again["label"] == "another label"


def test_aggregate_gives_mean_and_std_over_seeds():
    runs = [
        {"label": "a", "eval": {"s": {"overall": acc, "per_type": {"color": {"accuracy": acc}}}}}
        for acc in (0.5, 0.7)
    ] + [{"label": "b", "eval": {"s": {"overall": 1.0, "per_type": {"color": {"accuracy": 1.0}}}}}]
    table = aggregate(runs)
    assert list(table) == ["a", "b"]
    mean, std = table["a"]["s"]["color"]
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1414, abs=1e-3)
    assert table["b"]["s"]["overall"] == (1.0, 0.0)


@pytest.mark.parametrize("experiment", ["vocab", "stages"])
def test_run_ablation_writes_table_plot_and_json(tmp_path, monkeypatch, experiment):
    accuracies = iter([0.25, 0.5, 0.75, 0.3, 0.6, 0.9])
    calls = []

    def fake_run(point, ws):
        calls.append(point.label)
        return {**_fake_result(point, ws, next(accuracies)), "cached": False}

    monkeypatch.setattr(grid, "run", fake_run)
    monkeypatch.setattr(Workspace, "prepare", lambda self: None)
    monkeypatch.setattr(grid, "chance_levels", lambda path: {"color": 0.125, "shape": 0.2})
    monkeypatch.setattr(grid, "majority_levels", lambda path: {"color": 0.3, "shape": 0.5})
    values = ["16", "64", "256"] if experiment == "vocab" else ["1", "3", "1+2+3"]
    results = ablation.run_ablation(
        AblationConfig(experiment, tmp_path, seeds=2, values=values, progress=False)
    )
    assert calls == values * 2
    folder = tmp_path / experiment
    assert (folder / f"{experiment}.png").stat().st_size > 0
    saved = json.loads((folder / "results.json").read_text())
    assert saved["grid"] == values and len(saved["runs"]) == 6
    mean, std = saved["table"][values[0]]["in-distribution"]["overall"]
    assert mean == pytest.approx((0.25 + 0.3) / 2)
    report = (folder / "results.md").read_text()
    assert f"| {values[0]} | 0.275 ± 0.035 |" in report
    assert "| chance | 0.125 | 0.200 |" in report
    assert "| best constant answer | 0.300 | 0.500 |" in report
    assert json.loads(json.dumps(results["table"])) == saved["table"]


def test_cli_rejects_an_unknown_experiment(tmp_path):
    res = CliRunner().invoke(app, ["ablate", "dropout", "--out", str(tmp_path)])
    assert res.exit_code == 2  # refused when the command line is parsed, with the choices named
    assert all(f"'{word}'" in res.output for word in ("dropout", "connector", "vocab", "stages"))
    with pytest.raises(ValueError, match="experiment: must be one of"):
        AblationConfig("dropout", out=tmp_path)


def test_cli_help_lists_the_options():
    res = CliRunner().invoke(app, ["ablate", "--help"])
    assert res.exit_code == 0
    for option in ("--seeds", "--quick", "--values", "--recipe", "--out", "--steps"):
        assert option in res.output


def test_shipped_recipes_resolve():
    assert Path(recipe_data("tiny-shapes")["output_dir"]).name == "tiny-shapes"
    with pytest.raises(FileNotFoundError, match="shipped recipes"):
        recipe_data("no-such-recipe")


def test_step_multiplier_scales_every_stage_and_changes_the_run(tmp_path):
    full, half = Workspace(tmp_path).base("tiny-shapes"), Workspace(tmp_path, steps=0.5).base("tiny-shapes")
    assert [s["max_steps"] for s in half["stages"]] == [round(s["max_steps"] / 2) for s in full["stages"]]
    assert Workspace(tmp_path, quick=True).step_scale == 0.1
    assert Run("vet", 0, full).key() != Run("vet", 0, half).key()
    with pytest.raises(ValueError, match="steps: the step multiplier must be > 0"):
        AblationConfig("vocab", steps=0)


def test_cli_passes_every_option_to_the_ablation(tmp_path, monkeypatch):
    seen = {}

    def fake(cfg):
        seen["cfg"] = cfg
        return {"experiment": cfg.experiment, "table": {}}

    monkeypatch.setattr(ablation, "run_ablation", fake)
    args = ["ablate", "vocab", "--out", str(tmp_path), "--seeds", "2", "--quick", "--values", "16, 64"]
    res = CliRunner().invoke(app, [*args, "--steps", "0.3", "--recipe", "tiny-shapes-mlp", "--no-progress"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.experiment, cfg.out, cfg.seeds, cfg.quick) == ("vocab", tmp_path, 2, True)
    assert (cfg.values, cfg.steps, cfg.recipe, cfg.progress) == (["16", "64"], 0.3, "tiny-shapes-mlp", False)
