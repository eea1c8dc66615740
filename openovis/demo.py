"""`openovis demo`: the paper's central claim measured end to end on a laptop CPU.

Generates Shapes World, trains the `tiny-shapes` recipe (Ovis: head + VET) and its MLP-projector
twin (same data, steps, rates, and parameter count within ~1%), evaluates both on the
in-distribution and held-out-composition test splits, and writes a report folder::

    <out>/report.md            what was run, sizes, wall times, accuracy per question type vs chance
    <out>/accuracy.png         VET vs MLP per question type, both splits
    <out>/loss_curves.png      per stage, VET vs MLP
    <out>/visual_words.png     the top visual word of every visual token, drawn over test images
    <out>/results.json         every number of the report
    <out>/runs/, <out>/data/   the trained models (loadable by `openovis chat` / `eval`) and the data
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from openovis.evaluation.runner import chance_levels, evaluate, load_records

SPLITS = {"in-distribution": "qa_test_id.json", "held-out composition": "qa_test_heldout.json"}
CONNECTORS = {"vet": "tiny-shapes", "mlp": "tiny-shapes-mlp"}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs."""

    out: Path = Path("demo_out")
    """Report folder."""
    quick: bool = False
    """A smaller data set and 1/10 of the steps: a smoke run of the whole pipeline (not a measurement)."""
    seeds: int = 1
    """Training seeds per connector; the report gives mean ± std over them."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds: must be >= 1, got {self.seeds}")

    @property
    def shapes(self) -> dict[str, Any]:
        return {"seed": 0, "n_train": 1000, "n_test": 70} if self.quick else {"seed": 0}

    @property
    def step_scale(self) -> float:
        return 0.1 if self.quick else 1.0


def _recipe(name: str, cfg: DemoConfig, seed: int, tokenizer: Path) -> Any:
    from openovis.training.recipe import load_recipe

    recipe = load_recipe(name)
    run = f"{name}-quick-seed{seed}" if cfg.quick else f"{name}-seed{seed}"
    overrides = [
        f"output_dir={cfg.out / 'runs' / run}",
        f"data_root={cfg.out / 'data'}",
        f"seed={seed}",
        f"model.tokenizer={tokenizer}",
        f"shapes={json.dumps(cfg.shapes)}",
    ]
    for i, stage in enumerate(recipe.stages):
        overrides.append(f"stages.{i}.max_steps={max(1, round(stage.max_steps * cfg.step_scale))}")
    return load_recipe(name, overrides)


def _prepare(cfg: DemoConfig) -> Path:
    """Generates the data and trains the shared tokenizer once."""
    from openovis.data.shapes import ShapesConfig, generate_shapes_world
    from openovis.data.text_tokenizer import tokenizer_for_shapes

    data = cfg.out / "data"
    meta = data / "meta.json"
    if not meta.exists() or ShapesConfig(**json.loads(meta.read_text())["config"]) != ShapesConfig(
        **cfg.shapes
    ):
        generate_shapes_world(data, ShapesConfig(**cfg.shapes), progress=cfg.progress)
    tokenizer = cfg.out / "tokenizer"
    if not (tokenizer / "tokenizer.json").exists():
        tokenizer_for_shapes(data, out_dir=tokenizer)
    return tokenizer


def _train_and_eval(cfg: DemoConfig, connector: str, seed: int, tokenizer: Path) -> dict[str, Any]:
    from openovis.inference import OvisPipeline
    from openovis.training.run import train

    recipe = _recipe(CONNECTORS[connector], cfg, seed, tokenizer)
    t0 = time.perf_counter()
    summary = train(recipe, resume="auto", progress=cfg.progress)
    train_seconds = time.perf_counter() - t0
    pipe = OvisPipeline.from_pretrained(summary["final_model"], device="cpu")
    evals = {}
    for split, file in SPLITS.items():
        path = cfg.out / "data" / file
        result = evaluate(
            pipe,
            load_records(path),
            batch_size=64,
            max_new_tokens=8,
            progress=cfg.progress,
            chance=chance_levels(path),
        )
        (Path(summary["final_model"]) / f"eval_{Path(file).stem}.json").write_text(
            json.dumps(result, indent=1)
        )
        evals[split] = result["metrics"]
    params = sum(p.numel() for p in pipe.model.parameters())
    conn = pipe.model.connector if connector == "mlp" else [pipe.model.visual_tokenizer.head, pipe.model.vte]
    conn_params = sum(p.numel() for m in (conn if isinstance(conn, list) else [conn]) for p in m.parameters())
    return {
        "connector": connector,
        "seed": seed,
        "model": summary["final_model"],
        "run": str(recipe.output_dir),
        "train_seconds": round(train_seconds, 1),
        "stages": summary["stages"],
        "params": params,
        "connector_params": conn_params,
        "eval": evals,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of every accuracy, per connector, split and question type."""
    table: dict[str, Any] = {}
    for connector in sorted({r["connector"] for r in runs}):
        mine = [r for r in runs if r["connector"] == connector]
        table[connector] = {}
        for split in SPLITS:
            types = mine[0]["eval"][split]["per_type"]
            cell = {t: _mean_std([r["eval"][split]["per_type"][t]["accuracy"] for r in mine]) for t in types}
            cell["overall"] = _mean_std([r["eval"][split]["overall"] for r in mine])
            table[connector][split] = cell
    return table


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Runs the whole demo and writes the report; returns the results (also in results.json)."""
    from openovis.evaluation.report import write_report

    t0 = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    tokenizer = _prepare(cfg)
    runs = [_train_and_eval(cfg, c, s, tokenizer) for s in range(cfg.seeds) for c in CONNECTORS]
    results = {
        "config": {
            "quick": cfg.quick,
            "seeds": cfg.seeds,
            "shapes": cfg.shapes,
            "step_scale": cfg.step_scale,
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
        "chance": chance_levels(cfg.out / "data" / SPLITS["in-distribution"]),
        "runs": runs,
        "table": aggregate(runs),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (cfg.out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(cfg.out, results)
    return results


def summary_lines(results: dict[str, Any], out: Path) -> list[str]:
    """The five lines printed at the end of a demo."""
    t = results["table"]
    fmt = lambda c, s: f"{t[c][s]['overall'][0]:.3f}"  # noqa: E731
    vet_id, mlp_id = t["vet"]["in-distribution"], t["mlp"]["in-distribution"]
    return [
        f"openovis demo: {len(results['runs'])} models trained and evaluated in {results['seconds'] / 60:.1f} min",
        f"in-distribution accuracy:      VET {fmt('vet', 'in-distribution')}  MLP {fmt('mlp', 'in-distribution')}",
        f"held-out composition accuracy: VET {fmt('vet', 'held-out composition')}  MLP {fmt('mlp', 'held-out composition')}",
        f"VET colour / shape (in-dist.): {vet_id.get('color', (float('nan'),))[0]:.3f} / {vet_id.get('shape', (float('nan'),))[0]:.3f}"
        f"   MLP: {mlp_id.get('color', (float('nan'),))[0]:.3f} / {mlp_id.get('shape', (float('nan'),))[0]:.3f}",
        f"report: {out / 'report.md'}",
    ]
