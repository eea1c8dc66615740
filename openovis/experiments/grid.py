"""Grid runs: a grid point is a base recipe changed in one place; each run is trained, evaluated and cached.

A run's folder is named by a hash of everything that defines it (the changed recipe, its seed, the
data settings), so a finished run is reused rather than recomputed, an interrupted grid continues
where it stopped, and experiments that share a point share its run. Layout of a workspace::

    <out>/data[-quick]/, <out>/tokenizer[-quick]/   Shapes World and its tokenizer, made once
    <out>/runs/<label>-seed<s>-<hash>/              one training run + its result.json
    <out>/stage-cache/<stage>-<key>/                a text-only LLM stage, trained once for all runs
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from openovis.data.datasets import read_records
from openovis.evaluation.image_check import image_check
from openovis.evaluation.runner import chance_levels, evaluate, load_records, majority_levels
from openovis.experiments.shapes import (
    SOURCE,
    SPLITS,
    in_distribution_images,
    prepare_shapes_world,
    shapes_settings,
)
from openovis.experiments.tables import aggregate
from openovis.modeling.visual_words import UsageAccumulator, visual_table, visual_word_probabilities
from openovis.options import Device, check_device, torch_device

QUICK_STEP_SCALE = 0.1
"""Step multiplier of quick runs."""

USAGE_IMAGES = 64
"""In-distribution test images whose visual-word usage a VET run reports."""


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
    """Indices of the paper's stages 1, 2, 3, … in a recipe: every stage that is not text-only or regions-only.

    Those stages stand in for pretrained parts (the from-scratch recipes' stage 0, which teaches the
    tiny LLM the corpus language, or the ViT what lies under each visual token) and are kept by every
    variant of the stages experiment.
    """
    return [
        i
        for i, s in enumerate(data["stages"])
        if {d.get("format") for d in s["data"]} not in ({"text"}, {"regions"})
    ]


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
    """Every stage's steps times ``scale`` (at least 1)."""
    data = copy.deepcopy(data)
    for stage in data["stages"]:
        stage["max_steps"] = max(1, round(stage["max_steps"] * scale))
    return data


# ---- one run, cached --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One grid point at one seed."""

    label: str
    seed: int
    recipe: dict[str, Any]
    """Plain recipe data; ``output_dir``, ``data_root`` and ``seed`` are filled in by `run`."""

    def key(self) -> str:
        """Hash of everything that defines the run (not where its files live)."""
        data = copy.deepcopy(self.recipe)
        for name in ("output_dir", "data_root"):
            data.pop(name, None)
        model = data.get("model", {})
        if isinstance(model.get("tokenizer"), dict):  # trained on the data: where it is saved is no matter
            model["tokenizer"].pop("folder", None)
        else:  # a folder
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
    """Where runs, data and tokenizer live, how big the data is, and where models are evaluated."""

    out: Path
    """The workspace folder."""
    quick: bool = False
    """Smaller data (`QUICK_SHAPES`) and 1/10 of the steps."""
    progress: bool = True
    """Show progress bars."""
    shapes_seed: int = 0
    """Seed of the generated Shapes World."""
    steps: float | None = None
    """Multiplier of every stage's steps (default: 1, or 1/10 when quick)."""
    device: Device = "auto"
    """Where trained models are evaluated."""
    shapes_config: tuple[tuple[str, Any], ...] = ()
    """`ShapesConfig` fields the base recipe sets (e.g. ``image_size``), beside the seed and quick size."""

    def __post_init__(self) -> None:
        check_device(self.device)

    @property
    def shapes(self) -> dict[str, Any]:
        return {**dict(self.shapes_config), **shapes_settings(self.quick, self.shapes_seed)}

    @property
    def _suffix(self) -> str:
        """``-quick`` and, for a recipe's own Shapes World settings, a hash of them (data of its own)."""
        own = dict(self.shapes_config)
        digest = hashlib.sha256(json.dumps(own, sort_keys=True).encode()).hexdigest()[:8] if own else ""
        return ("-quick" if self.quick else "") + (f"-{digest}" if digest else "")

    @property
    def data(self) -> Path:
        return self.out / f"data{self._suffix}"

    @property
    def stage_cache(self) -> Path:
        """Text-LLM and regions-backbone stages shared by every run and seed here
        (`openovis.training.stage_cache`)."""
        return self.out / "stage-cache"

    @property
    def tokenizer(self) -> Path:
        return self.out / f"tokenizer{self._suffix}"

    @property
    def step_scale(self) -> float:
        if self.steps is not None:
            return self.steps
        return QUICK_STEP_SCALE if self.quick else 1.0

    def prepare(self) -> None:
        """Generates Shapes World, unless already there with these settings (runs train the tokenizer)."""
        prepare_shapes_world(self.data, self.shapes, progress=self.progress)

    def base(self, recipe: str) -> dict[str, Any]:
        """A recipe's data pointed at this workspace's data, shared tokenizer and step scale."""
        data = recipe_data(recipe)
        if (data.get("generate") or {}).get("source") != SOURCE:
            raise ValueError(
                f"recipe {recipe}: the experiments evaluate on Shapes World's test splits; the recipe "
                f"must generate it (generate: {{source: {SOURCE}, config: {{...}}}})"
            )
        data["generate"] = {"source": SOURCE, "config": self.shapes}
        tokenizer = data.get("model", {}).get("tokenizer")
        if isinstance(tokenizer, dict):  # trained on the data: once per data set, shared by every run
            tokenizer["folder"] = str(self.tokenizer)
        return scale_steps(data, self.step_scale)


def connector_params(model: torch.nn.Module) -> int:
    """Parameters between the backbone features and the LLM: head + VET, or the MLP projector."""
    return sum(p.numel() for p in model.connector.parameters())


@torch.inference_mode()
def usage_summary(pipeline: Any, images: list[Path]) -> dict[str, float]:
    """How a VET model uses its visual words over some images: the effective vocabulary (exp of the
    entropy of the summed distributions), the mean per-token entropy, and how many distinct words are
    ever a token's most probable one."""
    from PIL import Image

    model = pipeline.model
    stats = UsageAccumulator(model.config.visual_vocab_size - model.config.num_indicators)
    for file in images:
        sample = pipeline.processor(None, [Image.open(file).convert("RGB")], mode="caption")
        pixels = sample["pixel_values"].to(pipeline.device, model.dtype)  # [C, 3, S, S]
        stats.update(visual_word_probabilities(model, pixels).flatten(0, 1))  # [C·T, K']
    usage = stats.usage()
    return {
        "effective_vocab": usage.effective,
        "mean_entropy": float(stats.token_entropies().mean()),
        "argmax_words": usage.used_as_top,
    }


def evaluate_splits(pipeline: Any, data: Path, model_dir: Path, progress: bool) -> dict[str, Any]:
    """Metrics of a model on both test splits; every prediction is written beside the model."""
    evals = {}
    for split, file in SPLITS.items():
        path = data / file
        result = evaluate(
            pipeline,
            load_records(path),
            batch_size=64,
            max_new_tokens=8,
            progress=progress,
            chance=chance_levels(path),
        )
        (model_dir / f"eval_{Path(file).stem}.json").write_text(json.dumps(result, indent=1))
        evals[split] = result["metrics"]
    return evals


IMAGE_CHECK_KEYS = ("own", "mismatched", "gap", "gap_per_type", "answer_tokens")
"""What a run's result keeps of `openovis.evaluation.image_check.image_check`."""


def image_check_summary(pipeline: Any, data: Path) -> dict[str, Any]:
    """Answer loss on the in-distribution test split with own vs mismatched images (does it read them?)."""
    records = read_records(data / SPLITS["in-distribution"])
    check = image_check(pipeline.model, pipeline.processor, records, data)
    return {k: check[k] for k in IMAGE_CHECK_KEYS}


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
        "stage_cache": str(ws.stage_cache),
    }
    recipe = parse(Recipe, {**data, "seed": point.seed}, "")
    t0 = time.perf_counter()
    summary = train(recipe, resume="auto", progress=ws.progress)
    train_seconds = time.perf_counter() - t0
    pipe = OvisPipeline.from_pretrained(summary["final_model"], device=torch_device(ws.device))
    model = pipe.model
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
        "eval": evaluate_splits(pipe, ws.data, Path(summary["final_model"]), ws.progress),
        "image_check": image_check_summary(pipe, ws.data),
    }
    if visual_table(model) is not None:
        result["usage"] = usage_summary(pipe, in_distribution_images(ws.data, USAGE_IMAGES))
    done.write_text(json.dumps(result, indent=1))
    return {**result, "cached": False}


# ---- a grid -----------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the runs ran on (for the reports)."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


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
        "device": str(torch_device(ws.device)),
        "chance": chance_levels(ws.data / SPLITS["in-distribution"]),
        "majority": {split: majority_levels(ws.data / file) for split, file in SPLITS.items()},
        "runs": results,
        "table": aggregate(results),
        "seconds": round(time.perf_counter() - t0, 1),
        "cached_runs": sum(r["cached"] for r in results),
    }
