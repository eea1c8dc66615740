"""`openovis ablate`: the founding documents' three checks, each a grid of real training runs.

    connector  Ovis's head + VET against an MLP projector: same data, steps, rates, parameter count
    vocab      the visual vocabulary size K swept (VET)
    stages     which of the paper's three training stages run, at equal total steps

Every grid point is the base recipe (default `tiny-shapes`) changed in one place (`grid_point`),
trained, then evaluated on the Shapes World test splits (in-distribution and held-out composition);
runs are cached by hash and shared between experiments (`openovis.experiments.grid`): the connector
experiment's VET run is the vocab experiment's K = 512 run and the stages experiment's ``1+2+3`` run.
Results::

    <out>/<experiment>/results.json                 every run's numbers and the aggregate table
    <out>/<experiment>/results.md                   mean ± std over seeds, per question type, both splits
    <out>/<experiment>/<experiment>.png             the plot
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from openovis.experiments.grid import (
    Run,
    Workspace,
    recipe_data,
    run_grid,
    with_mlp_connector,
    with_stages,
    with_vocab,
)
from openovis.experiments.shapes import SPLITS
from openovis.experiments.tables import markdown_tables, plot_grouped_accuracy, plot_vocab, seed_spread_lines
from openovis.options import Device, check_device

Experiment = Literal["connector", "vocab", "stages"]
"""The three checks."""

EXPERIMENTS: tuple[str, ...] = get_args(Experiment)

DEFAULT_VALUES: dict[str, dict[bool, list[str]]] = {
    "connector": {False: ["vet", "mlp"], True: ["vet", "mlp"]},
    "vocab": {False: ["16", "64", "128", "512", "2048", "16384"], True: ["16", "128", "512"]},
    "stages": {False: ["1", "1+2", "3", "1+3", "2+3", "1+2+3"], True: ["1", "3", "1+2+3"]},
}
"""Grid points per experiment, full (False) and quick (True)."""

DEFAULT_RECIPES: dict[str, str] = {
    "connector": "tiny-shapes-regions",
    "vocab": "tiny-shapes-curriculum",
    "stages": "tiny-shapes",
}
"""Base recipe per experiment: the demo's for the connector (a regions stage as the pretrained ViT,
then the curriculum; both connectors read their images), the from-scratch curriculum for the
vocabulary (where its sweep was measured), the paper's stages where they are what is varied."""


def grid_point(experiment: str, value: str, base: dict[str, Any]) -> dict[str, Any]:
    """The recipe of one grid point: ``base`` changed as ``experiment`` says for ``value``."""
    if experiment == "connector":
        if value not in ("vet", "mlp"):
            raise ValueError(f"connector: grid values are vet and mlp, got {value!r}")
        return base if value == "vet" else with_mlp_connector(base)
    if experiment == "vocab":
        try:
            k = int(value)
        except ValueError:
            raise ValueError(
                f"vocab: grid values are integers (visual vocabulary sizes), got {value!r}"
            ) from None
        return with_vocab(base, k)
    if experiment == "stages":
        return with_stages(base, value)
    raise ValueError(f"experiment: must be one of {', '.join(EXPERIMENTS)}, got {experiment!r}")


@dataclass(frozen=True)
class AblationConfig:
    """What `openovis ablate` runs."""

    experiment: Experiment
    """Which check: connector (VET vs MLP), vocab (K swept) or stages (which training stages run)."""
    out: Path = Path("ablate_out")
    """Workspace: data, runs (the cache) and one folder of results per experiment."""
    seeds: int = 1
    """Training seeds per grid point (tables give mean ± std)."""
    quick: bool = False
    """Smaller data, 1/10 of the steps and a smaller grid: a smoke run, not a measurement."""
    recipe: str | None = None
    """Base recipe (a shipped name or a path; a Shapes World recipe, since evaluation uses its test
    splits). Default: the demo's `tiny-shapes-regions` for connector, `tiny-shapes-curriculum` for
    vocab, `tiny-shapes` (the paper's stages 1-3 after a text-only stage 0) for stages."""
    values: list[str] = field(default_factory=list)
    """Grid points instead of the default (K values for vocab, variants like ``1+3`` for stages)."""
    steps: float | None = None
    """Multiplier of the recipe's steps (default: 1, or 1/10 with ``quick``)."""
    device: Device = "auto"
    """Where the trained models are evaluated: auto (CUDA when present), cpu or cuda."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        # ``--values 64,512`` and ``--values 64 --values 512`` both give ["64", "512"]
        values = [v.strip() for item in self.values for v in str(item).split(",") if v.strip()]
        object.__setattr__(self, "values", values)
        if self.experiment not in EXPERIMENTS:
            raise ValueError(f"experiment: must be one of {', '.join(EXPERIMENTS)}, got {self.experiment!r}")
        if self.seeds < 1:
            raise ValueError(f"seeds: must be >= 1, got {self.seeds}")
        if self.steps is not None and not self.steps > 0:
            raise ValueError(f"steps: the step multiplier must be > 0, got {self.steps}")
        check_device(self.device)

    @property
    def base_recipe(self) -> str:
        """The recipe the grid changes (`recipe`, or the experiment's default)."""
        return self.recipe or DEFAULT_RECIPES[self.experiment]

    @property
    def grid(self) -> list[str]:
        return list(self.values) or DEFAULT_VALUES[self.experiment][self.quick]

    def workspace(self) -> Workspace:
        """The workspace this ablation runs in (with the base recipe's own Shapes World settings)."""
        generate = recipe_data(self.base_recipe).get("generate") or {}
        own = {k: v for k, v in (generate.get("config") or {}).items() if k != "seed"}
        return Workspace(
            self.out,
            quick=self.quick,
            progress=self.progress,
            steps=self.steps,
            device=self.device,
            shapes_config=tuple(sorted(own.items())),
        )


def grid_runs(cfg: AblationConfig, ws: Workspace) -> list[Run]:
    """The runs of an experiment: every grid point at every seed (seeds outermost)."""
    base = ws.base(cfg.base_recipe)
    points = {value: grid_point(cfg.experiment, value, base) for value in cfg.grid}
    return [Run(value, seed, points[value]) for seed in range(cfg.seeds) for value in cfg.grid]


def run_ablation(cfg: AblationConfig) -> dict[str, Any]:
    """Runs (or reuses) every run of the experiment and writes its results folder."""
    ws = cfg.workspace()
    runs = grid_runs(cfg, ws)  # validates the grid before any data is made
    results = {
        "experiment": cfg.experiment,
        "recipe": cfg.base_recipe,
        "quick": cfg.quick,
        "seeds": cfg.seeds,
        "grid": cfg.grid,
        **run_grid(runs, ws),
    }
    folder = cfg.out / cfg.experiment
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    plot = folder / f"{cfg.experiment}.png"
    if cfg.experiment == "vocab":
        plot_vocab(results, plot)
    else:
        plot_grouped_accuracy(results["table"], results["chance"], plot, title=cfg.experiment)
    (folder / "results.md").write_text(_report(results, plot.name))
    return results


_ABOUT = {
    "connector": "Ovis (head + visual embedding table, VET) against an MLP projector with about the same "
    "parameter count; same data, steps and learning rates.",
    "vocab": "The visual vocabulary size K swept; everything else fixed. *effective vocab* is exp of the "
    "entropy of the mean visual-word distribution over 64 in-distribution test images.",
    "stages": "Which of the paper's training stages run (1: captions, 2: descriptions, 3: QA "
    "instructions); the text-only stage 0 of from-scratch recipes always runs, and the steps of the "
    "kept stages are scaled so that every variant trains for the same total. Variants without "
    "stage 3 never see the question format.",
}


def _report(results: dict[str, Any], plot: str) -> str:
    m = results["machine"]
    quick = (
        "\n**Quick grid**: smaller data and 1/10 of the steps: a smoke run, not a measurement.\n"
        if results["quick"]
        else ""
    )
    seeds = "mean ± std over seeds" if results["seeds"] > 1 else "one seed (`--seeds N` for spread)"
    device = f", evaluated on {results['device']}" if "device" in results else ""
    return f"""# openovis ablation: {results["experiment"]}

{_ABOUT[results["experiment"]]}
{quick}
- Base recipe `{results["recipe"]}`, grid {", ".join(results["grid"])}, {seeds}.
- Shapes World {json.dumps(results["shapes"])}, step scale {results["step_scale"]}.
- {len(results["runs"])} runs ({results["cached_runs"]} reused from the cache) in {results["seconds"] / 60:.1f} min
  on {m["threads"]} CPU threads (torch {m["torch"]}){device}.

Accuracy: greedy answers, normalized exact match (option letter for mcq); chance is a uniform guess
over each type's answers; the best constant answer always gives the type's most common answer in
that split (what a model that ignores the image can reach).

{markdown_tables(results)}

{chr(10).join("- " + line for line in seed_spread_lines(results))}

![{results["experiment"]}]({plot})

Raw numbers: `results.json`; every prediction: `runs/*/*/final/eval_*.json`.
"""


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A line per grid point: overall accuracy on both splits (mean over seeds)."""
    lines = []
    for label, cell in results["table"].items():
        accs = "  ".join(f"{split} {cell[split]['overall'][0]:.3f}" for split in SPLITS if split in cell)
        lines.append(f"{results['experiment']} {label:>8s}: {accs}")
    return lines
