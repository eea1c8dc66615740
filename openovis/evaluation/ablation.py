"""`openovis ablate`: the founding documents' three checks, each a grid of real training runs.

    connector  Ovis's head + VET against an MLP projector: same data, steps, rates, parameter count
    vocab      the visual vocabulary size K swept (VET)
    stages     which of the paper's three training stages run, at equal total steps

Every grid point is the base recipe (default `tiny-shapes`) changed in one place, trained, then
evaluated on the Shapes World test splits (in-distribution and held-out composition). A run's
folder is named by a hash of everything that defines it (the changed recipe, its seed, the data
settings), so a finished run is reused rather than recomputed, an interrupted grid continues where it
stopped, and experiments that share a point share its run (the connector experiment's VET run is
the vocab experiment's K = 512 run and the stages experiment's ``1+2+3`` run). Layout::

    <out>/data[-quick]/, <out>/tokenizer[-quick]/   Shapes World and its tokenizer, made once
    <out>/runs/<label>-seed<s>-<hash>/              one training run + its result.json
    <out>/<experiment>/results.json                 every run's numbers and the aggregate table
    <out>/<experiment>/results.md                   mean ± std over seeds, per question type, both splits
    <out>/<experiment>/<experiment>.png             the plot
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from openovis.data.datasets import read_records as load_records_raw
from openovis.evaluation.image_check import image_check
from openovis.evaluation.runner import chance_levels, evaluate, load_records, majority_levels

SPLITS = {"in-distribution": "qa_test_id.json", "held-out composition": "qa_test_heldout.json"}
"""Evaluation splits of Shapes World: display name -> file in the data folder."""

QUICK_SHAPES = {"n_train": 1000, "n_test": 70}
"""Shapes World settings of quick runs (smoke runs of the whole pipeline, not measurements)."""
QUICK_STEP_SCALE = 0.1

DEFAULT_VALUES: dict[str, dict[bool, list[str]]] = {
    "connector": {False: ["vet", "mlp"], True: ["vet", "mlp"]},
    "vocab": {False: ["64", "256", "512", "1024", "4096", "16384"], True: ["16", "64", "512"]},
    "stages": {False: ["1", "1+2", "3", "1+3", "2+3", "1+2+3"], True: ["1", "3", "1+2+3"]},
}
"""Grid points per experiment, full (False) and quick (True)."""

EXPERIMENTS = tuple(DEFAULT_VALUES)


# ---- recipes of the grid points ---------------------------------------------------------------------


def recipe_data(name_or_path: str) -> dict[str, Any]:
    """The plain data of a recipe YAML (a path or the name of a shipped recipe), unvalidated."""
    from openovis.training.recipe import shipped_recipes

    path = Path(name_or_path)
    if not path.exists() and name_or_path in shipped_recipes():
        path = shipped_recipes()[name_or_path]
    if not path.exists():
        raise FileNotFoundError(
            f"recipe {name_or_path} does not exist; shipped recipes: {', '.join(shipped_recipes())}"
        )
    return yaml.safe_load(path.read_text()) or {}


def with_mlp_connector(data: dict[str, Any]) -> dict[str, Any]:
    """The MLP-projector twin of a VET recipe: ``connector: mlp``, and the VET's rates go to the MLP.

    The preset sizes the MLP's hidden layer so that both connectors have about the same parameter
    count (see `openovis.builders`); everything else is unchanged.
    """
    data = copy.deepcopy(data)
    data.setdefault("model", {}).setdefault("overrides", {})["connector"] = "mlp"
    for stage in data["stages"]:
        rates = stage.get("module_lr", {})
        if "vte" in rates:
            rates["connector"] = rates.pop("vte")
    return data


def with_vocab(data: dict[str, Any], k: int) -> dict[str, Any]:
    """The recipe with visual vocabulary size K."""
    data = copy.deepcopy(data)
    data.setdefault("model", {}).setdefault("overrides", {})["visual_vocab_size"] = k
    return data


def paper_stages(data: dict[str, Any]) -> list[int]:
    """Indices of the paper's stages 1, 2, 3, … in a recipe: every stage that is not text-only.

    Text-only stages (the from-scratch recipes' stage 0, which teaches the tiny LLM the corpus
    language) are kept by every variant of the stages experiment.
    """
    return [i for i, s in enumerate(data["stages"]) if not all(d.get("format") == "text" for d in s["data"])]


def with_stages(data: dict[str, Any], variant: str) -> dict[str, Any]:
    """Keeps the paper stages named by ``variant`` (e.g. ``1+3``), at the recipe's total steps.

    The steps of the paper stages are summed and shared among the kept stages in proportion to their
    own steps, so every variant trains for the same number of steps.
    """
    data = copy.deepcopy(data)
    paper = paper_stages(data)
    try:
        keep = sorted({int(v) for v in variant.split("+")})
    except ValueError:
        raise ValueError(
            f"stages variant {variant!r}: expected stage numbers joined by '+', e.g. 1+2+3"
        ) from None
    if not keep or keep[0] < 1 or keep[-1] > len(paper):
        raise ValueError(f"stages variant {variant!r}: the recipe has paper stages 1..{len(paper)}")
    total = sum(data["stages"][i]["max_steps"] for i in paper)
    kept = [paper[k - 1] for k in keep]
    share = sum(data["stages"][i]["max_steps"] for i in kept)
    for i in kept:
        data["stages"][i]["max_steps"] = max(1, round(total * data["stages"][i]["max_steps"] / share))
    data["stages"] = [s for i, s in enumerate(data["stages"]) if i not in paper or i in kept]
    return data


def scale_steps(data: dict[str, Any], scale: float) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for stage in data["stages"]:
        stage["max_steps"] = max(1, round(stage["max_steps"] * scale))
    return data


def _point(experiment: str, value: str, base: dict[str, Any]) -> dict[str, Any]:
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


# ---- one run, cached --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One grid point at one seed."""

    label: str
    seed: int
    recipe: dict[str, Any]
    """Plain recipe data; ``output_dir``, ``data_root`` and ``model.tokenizer`` are filled in by `run`."""

    def key(self) -> str:
        """Hash of everything that defines the run (not where its files live)."""
        data = copy.deepcopy(self.recipe)
        for name in ("output_dir", "data_root"):
            data.pop(name, None)
        model = data.get("model", {})
        model.pop("tokenizer", None)
        if model.get("preset") and model.get("overrides"):  # an override that changes nothing is no change
            from openovis.builders import get_preset

            preset = get_preset(model["preset"]).config()
            model["overrides"] = {
                k: v
                for k, v in model["overrides"].items()
                if k in ("vision", "text") or getattr(preset, k, None) != v
            }
        if not model.get("overrides", True):
            model.pop("overrides")
        data["seed"] = self.seed
        blob = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def folder(self, out: Path) -> Path:
        """``<out>/runs/<label>-seed<s>-<hash>``; an existing folder with the same hash is reused, so
        the same run reached from another experiment (another label) is found."""
        key = self.key()
        existing = sorted((out / "runs").glob(f"*-seed{self.seed}-{key}"))
        if existing:
            return existing[0]
        slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", self.label)
        return out / "runs" / f"{slug}-seed{self.seed}-{key}"


@dataclass(frozen=True)
class Workspace:
    """Where runs, data and tokenizer live, and how big the data is."""

    out: Path
    quick: bool = False
    progress: bool = True
    shapes_seed: int = 0
    steps: float | None = None
    """Multiplier of every stage's steps (default: 1, or 1/10 when quick)."""

    @property
    def shapes(self) -> dict[str, Any]:
        return {"seed": self.shapes_seed, **(QUICK_SHAPES if self.quick else {})}

    @property
    def data(self) -> Path:
        return self.out / ("data-quick" if self.quick else "data")

    @property
    def tokenizer(self) -> Path:
        return self.out / ("tokenizer-quick" if self.quick else "tokenizer")

    @property
    def step_scale(self) -> float:
        if self.steps is not None:
            return self.steps
        return QUICK_STEP_SCALE if self.quick else 1.0

    def prepare(self) -> None:
        """Generates Shapes World and trains its tokenizer, unless already there with these settings."""
        from openovis.data.shapes import ShapesConfig, generate_shapes_world
        from openovis.data.text_tokenizer import tokenizer_for_shapes

        meta = self.data / "meta.json"
        wanted = ShapesConfig(**self.shapes)
        if not meta.exists() or ShapesConfig(**json.loads(meta.read_text())["config"]) != wanted:
            generate_shapes_world(self.data, wanted, progress=self.progress)
        if not (self.tokenizer / "tokenizer.json").exists():
            tokenizer_for_shapes(self.data, out_dir=self.tokenizer)

    def base(self, recipe: str) -> dict[str, Any]:
        """A recipe's data pointed at this workspace's data, tokenizer and step scale."""
        data = recipe_data(recipe)
        data["shapes"] = self.shapes
        if data.get("model", {}).get("tokenizer") == "shapes":
            data["model"]["tokenizer"] = str(self.tokenizer)
        return scale_steps(data, self.step_scale)


def connector_params(model: torch.nn.Module) -> int:
    """Parameters between the backbone features and the LLM: head + VET, or the MLP projector."""
    parts = [model.connector] if model.connector is not None else [model.visual_tokenizer.head, model.vte]
    return sum(p.numel() for m in parts for p in m.parameters())


@torch.inference_mode()
def vocabulary_usage(pipeline: Any, images: list[Path]) -> dict[str, float]:
    """Effective vocabulary (exp of the entropy of the summed visual-word distributions) over images,
    the mean per-token entropy, and how many distinct words are ever a token's most probable one."""
    from PIL import Image

    from openovis.evaluation.analysis import effective_vocabulary, token_entropy, visual_word_probabilities

    model = pipeline.model
    probs = []
    for file in images:
        sample = pipeline.processor(None, [Image.open(file).convert("RGB")], mode="caption")
        pixels = sample["pixel_values"].to(pipeline.device, model.dtype)
        probs.append(
            visual_word_probabilities(model.visual_tokenizer, pixels).flatten(0, 1).float()
        )  # [C·T, K']
    probs = torch.cat(probs)  # [N, K']
    return {
        "effective_vocab": effective_vocabulary(probs.sum(0)),
        "mean_entropy": float(token_entropy(probs).mean()),
        "argmax_words": int(probs.argmax(-1).unique().numel()),
    }


def run(point: Run, ws: Workspace) -> dict[str, Any]:
    """Trains and evaluates one grid point, or returns its stored result when it already finished."""
    from openovis.inference import OvisPipeline
    from openovis.training.recipe import Recipe, parse
    from openovis.training.run import train

    folder = point.folder(ws.out)
    done = folder / "result.json"
    if done.exists():
        return {**json.loads(done.read_text()), "label": point.label, "cached": True}
    data = {
        **copy.deepcopy(point.recipe),
        "output_dir": str(folder),
        "data_root": str(ws.data),
        "seed": point.seed,
    }
    recipe = parse(Recipe, data, "")
    t0 = time.perf_counter()
    summary = train(recipe, resume="auto", progress=ws.progress)
    train_seconds = time.perf_counter() - t0
    pipe = OvisPipeline.from_pretrained(summary["final_model"], device="cpu")
    evals = {}
    for split, file in SPLITS.items():
        path = ws.data / file
        result = evaluate(
            pipe,
            load_records(path),
            batch_size=64,
            max_new_tokens=8,
            progress=ws.progress,
            chance=chance_levels(path),
        )
        (Path(summary["final_model"]) / f"eval_{Path(file).stem}.json").write_text(
            json.dumps(result, indent=1)
        )
        evals[split] = result["metrics"]
    model = pipe.model
    check = image_check(
        model, pipe.processor, load_records_raw(ws.data / SPLITS["in-distribution"]), ws.data
    )
    result = {
        "label": point.label,
        "seed": point.seed,
        "connector": model.config.connector,
        "vocab_size": model.config.visual_vocab_size,
        "model": summary["final_model"],
        "run": str(folder),
        "train_seconds": round(train_seconds, 1),
        "stages": summary["stages"],
        "final_loss": summary["stages"][-1]["final_loss"],
        "params": sum(p.numel() for p in model.parameters()),
        "connector_params": connector_params(model),
        "eval": evals,
        "image_check": {k: check[k] for k in ("own", "mismatched", "gap", "gap_per_type", "answer_tokens")},
    }
    if model.connector is None:
        images = sorted((ws.data / "images" / "test_id").glob("*.png"))[:64]
        result["usage"] = vocabulary_usage(pipe, images)
    done.write_text(json.dumps(result, indent=1))
    return {**result, "cached": False}


# ---- aggregation, table, plot -----------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of every accuracy, per label, split and question type (plus overall)."""
    table: dict[str, Any] = {}
    for label in dict.fromkeys(r["label"] for r in runs):  # grid order
        mine = [r for r in runs if r["label"] == label]
        table[label] = {}
        for split in mine[0]["eval"]:
            types = mine[0]["eval"][split]["per_type"]
            cell = {t: mean_std([r["eval"][split]["per_type"][t]["accuracy"] for r in mine]) for t in types}
            cell["overall"] = mean_std([r["eval"][split]["overall"] for r in mine])
            table[label][split] = cell
    return table


def format_cell(cell: tuple[float, float], seeds: int) -> str:
    """``mean ± std`` over seeds, or the mean alone for one seed."""
    mean, std = cell
    return f"{mean:.3f} ± {std:.3f}" if seeds > 1 else f"{mean:.3f}"


def markdown_tables(results: dict[str, Any]) -> str:
    """One table per split: a row per grid point, a column per question type, chance in the first row."""
    table, chance, seeds = results["table"], results["chance"], results["seeds"]
    extras = _extras(results)
    parts = []
    for split in SPLITS:
        labels = [label for label in table if split in table[label]]
        if not labels:
            continue
        types = [t for t in table[labels[0]][split] if t != "overall"] + ["overall"]
        extra_names = list(next(iter(extras.values())))
        head = f"| {results['experiment']} | " + " | ".join(types + extra_names) + " |"
        lines = [f"**{split}**", "", head, "|---|" + "---|" * (len(types) + len(extra_names))]
        lines.append(
            "| chance | "
            + " | ".join(f"{chance[t]:.3f}" if t in chance else "" for t in types)
            + " |"
            + " |" * len(extra_names)
        )
        constant = results.get("majority", {}).get(split, {})
        if constant:
            cells = " | ".join(f"{constant[t]:.3f}" if t in constant else "" for t in types)
            lines.append("| best constant answer | " + cells + " |" + " |" * len(extra_names))
        for label in labels:
            cells = [format_cell(table[label][split][t], seeds) for t in types]
            cells += [extras[label][name] for name in extra_names]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _extras(results: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per label: final loss, parameters, and for VET runs the vocabulary actually used."""
    out: dict[str, dict[str, str]] = {}
    seeds = results["seeds"]
    for label in results["table"]:
        mine = [r for r in results["runs"] if r["label"] == label]
        cells = {
            "final loss": format_cell(mean_std([r["final_loss"] for r in mine]), seeds),
            "connector params": f"{mine[0]['connector_params']:,}",
        }
        usage = [r["usage"] for r in mine if "usage" in r]
        cells["effective vocab"] = (
            format_cell(mean_std([u["effective_vocab"] for u in usage]), seeds) if usage else "–"
        )
        gaps = [r["image_check"]["gap"] for r in mine if "image_check" in r]
        cells["image gap"] = format_cell(mean_std(gaps), seeds) if gaps else "–"
        cells["train s"] = f"{statistics.fmean(r['train_seconds'] for r in mine):.0f}"
        out[label] = cells
    return out


def plot_grouped_accuracy(
    table: dict[str, Any], chance: dict[str, float], path: Path, title: str = ""
) -> Path:
    """Grouped bars per question type, one bar per label, chance dashed; one panel per split."""
    from openovis.plots import _pyplot

    plt = _pyplot()
    labels = list(table)
    splits = [s for s in SPLITS if all(s in table[label] for label in labels)]
    fig, axes = plt.subplots(
        1, len(splits), figsize=(6.2 * len(splits), 3.9), dpi=110, sharey=True, squeeze=False
    )
    colours = plt.get_cmap("tab10")
    width = 0.8 / len(labels)
    for ax, split in zip(axes[0], splits, strict=True):
        types = [t for t in table[labels[0]][split] if t != "overall"] + ["overall"]
        x = np.arange(len(types))
        for j, label in enumerate(labels):
            means = [table[label][split][t][0] for t in types]
            stds = [table[label][split][t][1] for t in types]
            offset = (j - (len(labels) - 1) / 2) * width
            ax.bar(x + offset, means, width, yerr=stds, label=label, color=colours(j % 10), capsize=2)
        for i, t in enumerate(types):
            if t in chance:
                ax.hlines(chance[t], i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1)
        ax.set_xticks(x, types, rotation=30)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{title} — {split}" if title else split)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("accuracy (dashes: chance)")
    axes[0, 0].legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_vocab(results: dict[str, Any], path: Path) -> Path:
    """Accuracy on both splits and the effective vocabulary used, against K (log scale)."""
    from openovis.plots import _pyplot

    plt = _pyplot()
    table = results["table"]
    labels = list(table)
    ks = [int(label) for label in labels]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for split, style in zip(SPLITS, ("-o", "--s"), strict=True):
        means = np.array([table[label][split]["overall"][0] for label in labels])
        stds = np.array([table[label][split]["overall"][1] for label in labels])
        ax.errorbar(ks, means, yerr=stds, fmt=style, capsize=3, label=split)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("visual vocabulary size K")
    ax.set_ylabel("overall accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    for label, k in zip(labels, ks, strict=True):
        mine = [r for r in results["runs"] if r["label"] == label and "usage" in r]
        ax2.scatter([k] * len(mine), [r["usage"]["effective_vocab"] for r in mine], color="#1f77b4", s=18)
        ax2.scatter(
            [k] * len(mine), [r["usage"]["argmax_words"] for r in mine], color="#ff7f0e", marker="x", s=18
        )
    ax2.plot(ks, ks, color="grey", linewidth=0.8, linestyle=":", label="K (all words)")
    ax2.scatter([], [], color="#1f77b4", s=18, label="effective vocabulary")
    ax2.scatter([], [], color="#ff7f0e", marker="x", s=18, label="distinct top words")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log", base=2)
    ax2.set_xlabel("visual vocabulary size K")
    ax2.set_ylabel("words used (test images)")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- the command ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AblationConfig:
    """What `openovis ablate` runs."""

    experiment: str
    """connector | vocab | stages."""
    out: Path = Path("ablate_out")
    """Workspace: data, runs (the cache) and one folder of results per experiment."""
    seeds: int = 1
    """Training seeds per grid point (tables give mean ± std)."""
    quick: bool = False
    """Smaller data, 1/10 of the steps and a smaller grid: a smoke run, not a measurement."""
    recipe: str = "tiny-shapes"
    """Base recipe (a shipped name or a path); a Shapes World recipe, since evaluation uses its test splits."""
    values: list[str] = field(default_factory=list)
    """Grid points instead of the default (K values for vocab, variants like ``1+3`` for stages)."""
    steps: float | None = None
    """Multiplier of the recipe's steps (default: 1, or 1/10 with ``quick``)."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise ValueError(f"experiment: must be one of {', '.join(EXPERIMENTS)}, got {self.experiment!r}")
        if self.seeds < 1:
            raise ValueError(f"seeds: must be >= 1, got {self.seeds}")
        if self.steps is not None and not self.steps > 0:
            raise ValueError(f"steps: the step multiplier must be > 0, got {self.steps}")

    @property
    def grid(self) -> list[str]:
        return list(self.values) or DEFAULT_VALUES[self.experiment][self.quick]


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }


def grid_runs(cfg: AblationConfig, ws: Workspace) -> list[Run]:
    """The runs of an experiment: every grid point at every seed (seeds outermost)."""
    base = ws.base(cfg.recipe)
    points = {value: _point(cfg.experiment, value, base) for value in cfg.grid}
    return [Run(value, seed, points[value]) for seed in range(cfg.seeds) for value in cfg.grid]


def run_grid(runs: list[Run], ws: Workspace) -> dict[str, Any]:
    """Prepares the workspace, runs (or reuses) every run, and returns what every report needs: the
    runs' results, their aggregate table, the baselines of the test splits, machine and wall time."""
    t0 = time.perf_counter()
    ws.prepare()
    results = [run(point, ws) for point in runs]
    return {
        "shapes": ws.shapes,
        "step_scale": ws.step_scale,
        "data": str(ws.data),
        "machine": machine(),
        "chance": chance_levels(ws.data / SPLITS["in-distribution"]),
        "majority": {split: majority_levels(ws.data / file) for split, file in SPLITS.items()},
        "runs": results,
        "table": aggregate(results),
        "seconds": round(time.perf_counter() - t0, 1),
        "cached_runs": sum(r["cached"] for r in results),
    }


def run_ablation(cfg: AblationConfig) -> dict[str, Any]:
    """Runs (or reuses) every run of the experiment and writes its results folder."""
    ws = Workspace(cfg.out, quick=cfg.quick, progress=cfg.progress, steps=cfg.steps)
    runs = grid_runs(cfg, ws)  # validates the grid before any data is made
    results = {
        "experiment": cfg.experiment,
        "recipe": cfg.recipe,
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
    return f"""# openovis ablation: {results["experiment"]}

{_ABOUT[results["experiment"]]}
{quick}
- Base recipe `{results["recipe"]}`, grid {", ".join(results["grid"])}, {seeds}.
- Shapes World {json.dumps(results["shapes"])}, step scale {results["step_scale"]}.
- {len(results["runs"])} runs ({results["cached_runs"]} reused from the cache) in {results["seconds"] / 60:.1f} min
  on {m["threads"]} CPU threads (torch {m["torch"]}).

Accuracy: greedy answers, normalized exact match (option letter for mcq); chance is a uniform guess
over each type's answers; the best constant answer always gives the type's most common answer in
that split (what a model that ignores the image can reach).

{markdown_tables(results)}

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
