"""`openovis demo`: the paper's central claim measured end to end on a laptop CPU.

Generates Shapes World, trains the `tiny-shapes-regions` recipe (Ovis: head + VET) and its MLP-projector
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openovis.experiments.ablation import DEFAULT_RECIPES, AblationConfig, grid_runs
from openovis.experiments.grid import run_grid
from openovis.options import Device, check_device

DEFAULT_RECIPE = DEFAULT_RECIPES["connector"]
"""The demo's recipe: a regions stage stands in for a pretrained ViT, which then stays frozen; captions
mixed with single-turn colour/shape/count/position questions, then the full question mixture
(docs/from-scratch-recipe.md)."""
DEFAULT_STEPS = 1.0
"""The default demo trains the recipe's steps: both models, evaluation and report in about 7 minutes on
2 quiet CPU cores (measured; README)."""


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
    steps: float | None = None
    """Multiplier of the recipe's steps (default `DEFAULT_STEPS`, 0.1 with ``quick``)."""
    device: Device = "auto"
    """Where the trained models are evaluated and drawn: auto (CUDA when present), cpu or cuda."""
    recipe: str = DEFAULT_RECIPE
    """Recipe of the VET model (a shipped name or a path); the MLP twin is derived from it."""

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds: must be >= 1, got {self.seeds}")
        if self.steps is not None and not self.steps > 0:
            raise ValueError(f"steps: the step multiplier must be > 0, got {self.steps}")
        check_device(self.device)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Runs the whole demo and writes the report; returns the results (also in results.json).

    The demo is the ``connector`` experiment of `openovis.experiments.ablation` on the default recipe,
    with a report of its own; runs already finished in ``cfg.out`` are reused.
    """
    from openovis.experiments.report import write_report

    cfg.out.mkdir(parents=True, exist_ok=True)
    steps = cfg.steps if cfg.steps is not None else (None if cfg.quick else DEFAULT_STEPS)
    ablation = AblationConfig(
        "connector",
        cfg.out,
        seeds=cfg.seeds,
        quick=cfg.quick,
        steps=steps,
        device=cfg.device,
        progress=cfg.progress,
        recipe=cfg.recipe,
    )
    ws = ablation.workspace()
    grid = grid_runs(ablation, ws)
    results = run_grid(grid, ws)
    results["config"] = {
        "quick": cfg.quick,
        "recipe": cfg.recipe,
        "seeds": cfg.seeds,
        "shapes": results["shapes"],
        "step_scale": results["step_scale"],
    }
    (cfg.out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(cfg.out, results, device=cfg.device)
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
