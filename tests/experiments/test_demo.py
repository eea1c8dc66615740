"""The README's main command in quick mode, then `openovis eval` and `openovis chat` on what it saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from openovis.cli import app
from openovis.experiments.demo import DemoConfig, run_demo, summary_lines


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(DemoConfig(out=out, quick=True, progress=False))


def test_quick_demo_writes_the_report(demo):
    out, results = demo
    for name in ("report.md", "accuracy.png", "loss_curves.png", "visual_words.png", "results.json"):
        assert (out / name).stat().st_size > 0, name
    assert {r["connector"] for r in results["runs"]} == {"vet", "mlp"}
    vet, mlp = (next(r for r in results["runs"] if r["connector"] == c) for c in ("vet", "mlp"))
    assert abs(vet["connector_params"] - mlp["connector_params"]) / vet["connector_params"] < 0.02
    assert abs(vet["params"] - mlp["params"]) / vet["params"] < 0.01
    for split in ("in-distribution", "held-out composition"):
        metrics = vet["eval"][split]
        assert metrics["n"] == 70
        assert set(metrics["per_type"]) == {"color", "shape", "count", "position", "exist", "relation", "mcq"}
    report = (out / "report.md").read_text()
    assert "| color |" in report and "VET in-distribution" in report
    assert json.loads((out / "results.json").read_text())["table"]["mlp"]
    lines = summary_lines(results, out)
    assert len(lines) == 5 and lines[-1].endswith("report.md")
    for run in results["runs"]:  # every run's image check is stored and shown; its sign is tested on a
        # longer run (test_demo_models_read_their_images, slow tier): 1/10 of the steps on the quick data
        # leaves the gap at ~1e-4, and 0.4x only at 0.003-0.018 (measured), too close to 0 to assert
        assert set(run["image_check"]) >= {"own", "mismatched", "gap", "gap_per_type"}
    assert "## Does the model read the image?" in report and "| VET seed 0 |" in report
    for run in results["runs"]:  # the loss fell in every stage
        for stage in run["stages"]:
            assert stage["final_loss"] < stage["first_loss"], (run["connector"], stage["stage"])


def test_eval_and_chat_commands_on_the_demo_model(demo, tmp_path):
    out, results = demo
    model = results["runs"][0]["model"]
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "eval",
            "--model",
            model,
            "--data",
            str(Path(results["data"]) / "qa_test_id.json"),
            "--limit",
            "10",
            "--out",
            str(tmp_path / "r.json"),
            "--image-check",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "| **overall** | 10 |" in res.output
    assert "image check (nats per answer token): own " in res.output and " gap " in res.output
    saved = json.loads((tmp_path / "r.json").read_text())
    check = saved["image_check"]
    assert check["n"] == 10 and abs(check["gap"] - (check["mismatched"] - check["own"])) < 1e-6
    assert len(saved["predictions"]) == 10 and {"prediction", "answer", "correct"} <= set(
        saved["predictions"][0]
    )
    image = Path(results["data"]) / "images" / "test_id" / "000000.png"
    res = runner.invoke(app, ["chat", "--model", model, "--image", str(image), "What color is the circle?"])
    assert res.exit_code == 0, res.output
    assert res.output.strip()
    data = Path(results["data"])
    args = [
        "analyze",
        "--model",
        model,
        "--data",
        str(data / "qa_test_id.json"),
        "--max-images",
        "6",
        "--out",
        str(tmp_path / "a"),
    ]
    res = runner.invoke(app, [*args, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "analysis.md").exists() and (
        tmp_path / "a" / "word_usage.png"
    ).stat().st_size > 0
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["images"] == 6


def test_demo_command_passes_its_options(tmp_path, monkeypatch):
    seen = {}

    def fake(cfg):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr("openovis.experiments.demo.run_demo", fake)
    monkeypatch.setattr("openovis.experiments.demo.summary_lines", lambda results, out: ["ok"])
    args = ["demo", "--out", str(tmp_path), "--seeds", "3", "--steps", "2", "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert (cfg.out, cfg.seeds, cfg.steps, cfg.quick, cfg.progress) == (tmp_path, 3, 2.0, False, False)
    with pytest.raises(ValueError, match="steps: the step multiplier must be > 0"):
        DemoConfig(steps=0)
    with pytest.raises(ValueError, match="device: must be one of"):
        DemoConfig(device="gpu")


@pytest.mark.slow
def test_demo_models_read_their_images(tmp_path):
    """The default demo (~7 min on 2 CPU cores, seed 0): both connectors' answers depend on the image,
    colour and shape answers among them. Accuracy is not asserted. Measured image gaps (3 seeds):
    +0.57 to +1.04 nats; shape +0.46 to +1.50; colour MLP +1.7 to +2.4, VET +1.64 / +0.06 / +1.33 —
    seed 1's VET reads no colour, seed 0's (this run, bit-reproducible on a CPU) does."""
    results = run_demo(DemoConfig(out=tmp_path, progress=False))
    for run in results["runs"]:
        check = run["image_check"]
        assert check["gap"] > 0.05, (run["connector"], check["gap"], check["gap_per_type"])
        assert check["gap_per_type"]["color"] > 0.3, (run["connector"], check["gap_per_type"])
        assert check["gap_per_type"]["shape"] > 0.3, (run["connector"], check["gap_per_type"])
