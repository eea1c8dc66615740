"""The demo report (`openovis demo`): Markdown with the accuracy table, and the PNGs a person would rather look at."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from openovis.experiments.analysis.figures import plot_visual_words
from openovis.experiments.shapes import in_distribution_images
from openovis.experiments.tables import format_cell, plot_grouped_accuracy, seed_spread_lines
from openovis.options import Device, torch_device
from openovis.plots import pyplot, smooth


def accuracy_table(results: dict[str, Any]) -> str:
    """Rows: question types; columns: chance, the best constant answer, then VET and MLP per split."""
    table, chance, seeds = results["table"], results["chance"], results["config"]["seeds"]
    constant = results.get("majority", {}).get("in-distribution", {})
    splits = list(table["vet"])
    header = "| type | chance | constant | " + " | ".join(f"VET {s} | MLP {s}" for s in splits) + " |"
    lines = [header, "|" + "---|" * (3 + 2 * len(splits))]
    types = [t for t in table["vet"][splits[0]] if t != "overall"]
    for t in [*types, "overall"]:
        c = f"{chance[t]:.3f}" if t in chance else ""
        m = f"{constant[t]:.3f}" if t in constant else ""
        cells = " | ".join(
            f"{format_cell(table['vet'][s][t], seeds)} | {format_cell(table['mlp'][s][t], seeds)}"
            for s in splits
        )
        name = f"**{t}**" if t == "overall" else t
        lines.append(f"| {name} | {c} | {m} | {cells} |")
    return "\n".join(lines)


def plot_accuracy(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars per question type: VET vs MLP with the chance level, one panel per split."""
    table = {connector.upper(): cells for connector, cells in results["table"].items()}
    return plot_grouped_accuracy(table, results["chance"], path)


def plot_stage_losses(results: dict[str, Any], path: Path) -> Path:
    """One panel per stage: smoothed loss of every run (VET solid, MLP dashed)."""
    plt = pyplot()
    runs = results["runs"]
    stages = [s["stage"] for s in runs[0]["stages"]]
    fig, axes = plt.subplots(1, len(stages), figsize=(3.6 * len(stages), 3.2), dpi=110)
    for ax, stage in zip(np.atleast_1d(axes), stages, strict=True):
        for run in runs:
            losses = stage_losses(run, stage)
            if losses is None:
                continue
            style = "-" if run["connector"] == "vet" else "--"
            ax.plot(smooth(losses), style, linewidth=1.3, label=f"{run['connector'].upper()} s{run['seed']}")
        ax.set_title(stage)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
    np.atleast_1d(axes)[0].set_ylabel("loss")
    np.atleast_1d(axes)[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def stage_losses(run: dict[str, Any], stage: str) -> list[float] | None:
    """The per-step losses of a run's stage: its own, or the stage cache entry's it reused (None: neither)."""
    summary = next((s for s in run.get("stages", []) if s.get("stage") == stage), {})
    for folder in (Path(run["run"]) / stage, Path(summary["cached"]) if "cached" in summary else None):
        if folder is not None and (folder / "losses.json").is_file():
            return json.loads((folder / "losses.json").read_text())
    return None


def write_report(out: Path, results: dict[str, Any], device: Device = "auto") -> Path:
    """Writes report.md and its figures into ``out``; the VET model is run on ``device`` for its visual words."""
    from openovis.inference import OvisPipeline

    plot_accuracy(results, out / "accuracy.png")
    plot_stage_losses(results, out / "loss_curves.png")
    vet = next(r for r in results["runs"] if r["connector"] == "vet")
    pipeline = OvisPipeline.from_pretrained(vet["model"], device=torch_device(device))
    images = in_distribution_images(Path(results["data"]), 6)
    plot_visual_words(pipeline, images, out / "visual_words.png")
    out.joinpath("report.md").write_text(_markdown(results))
    return out / "report.md"


ABOVE_CHANCE = 0.15
"""Margin over both baselines (uniform chance, the best constant answer) that `reading` counts as a
question type the model answers from the image."""


def reading(results: dict[str, Any]) -> list[str]:
    """Plain statements of what the numbers show: which question types each model answers clearly
    above chance (in distribution), and which connector reached the lower loss in each stage."""
    table, chance = results["table"], results["chance"]
    constant = results.get("majority", {}).get("in-distribution", {})
    base = {t: max(chance.get(t, 0.0), constant.get(t, 0.0)) for t in {*chance, *constant}}
    lines = []
    for connector in table:
        cell = table[connector]["in-distribution"]
        above = [t for t in cell if t in base and cell[t][0] >= base[t] + ABOVE_CHANCE]
        name = connector.upper()
        if above:
            lines.append(
                f"{name} answers {', '.join(above)} clearly (≥ +{ABOVE_CHANCE:.2f}) above both chance and the "
                "best constant answer, in distribution."
            )
        else:
            lines.append(
                f"{name} is nowhere more than {ABOVE_CHANCE:.2f} above both chance and the best constant "
                "answer: at this budget it answers from the answer prior, not from the image."
            )
    runs = results["runs"]
    for i, stage in enumerate(runs[0]["stages"]):
        if any("cached" in r["stages"][i] for r in runs):  # a stand-in for a pretrained part, trained once
            lines.append(
                f"{stage['stage']}: shared by every run (stage cache), final loss {stage['final_loss']:.3f}."
            )
            continue
        final = {c: [r["stages"][i]["final_loss"] for r in runs if r["connector"] == c] for c in table}
        means = {c: sum(v) / len(v) for c, v in final.items() if v}
        best = min(means, key=means.get)
        others = ", ".join(f"{c.upper()} {v:.3f}" for c, v in means.items())
        lines.append(f"{stage['stage']}: final loss {others} (lower: {best.upper()}).")
    return lines + seed_spread_lines(results)


def image_check_table(results: dict[str, Any]) -> str:
    """Answer loss with own vs mismatched images, per run (see `openovis.evaluation.image_check`)."""
    rows = [
        f"| {r['connector'].upper()} seed {r['seed']} | {c['own']:.3f} | {c['mismatched']:.3f} | {c['gap']:+.3f} | "
        + ", ".join(f"{t} {g:+.2f}" for t, g in c.get("gap_per_type", {}).items())
        + " |"
        for r in results["runs"]
        if (c := r.get("image_check"))
    ]
    if not rows:
        return "(not measured for these runs)"
    head = "| run | own image | mismatched image | gap | gap per type |\n|---|---|---|---|---|"
    return head + "\n" + "\n".join(rows)


def _markdown(results: dict[str, Any]) -> str:
    runs, cfg = results["runs"], results["config"]
    first = runs[0]
    stage_rows = "\n".join(
        f"| {s['stage']} | {s['steps']} | "
        + " | ".join(f"{r['stages'][i]['first_loss']:.3f} → {r['stages'][i]['final_loss']:.3f}" for r in runs)
        + " |"
        for i, s in enumerate(first["stages"])
    )
    run_names = " | ".join(f"{r['connector'].upper()} seed {r['seed']}" for r in runs)
    sizes = "\n".join(
        f"- {r['connector'].upper()} seed {r['seed']}: {r['params']:,} parameters ({r['connector_params']:,} in the "
        f"connector), trained in {r['train_seconds']:.0f} s; model: `{r['model']}`"
        for r in runs
    )
    machine = results["machine"]
    return f"""# openovis demo report

Ovis (visual head + visual embedding table, **VET**) against the paper's baseline, an **MLP**
projector with the same parameter count, both trained from scratch on Shapes World with the same
data, steps and learning rates (recipe `{cfg.get("recipe", "tiny-shapes")}` and its MLP twin).
{"Quick mode: a smaller data set and 1/10 of the steps (a smoke run, not a measurement)." if cfg["quick"] else ""}

- Wall time: **{results["seconds"] / 60:.1f} min** for everything ({len(runs)} models; seeds: {cfg["seeds"]}) on
  {machine["threads"]} CPU threads (torch {machine["torch"]}, Python {machine["python"]}){", " + machine["gpu"] if "gpu" in machine else ""};
  models evaluated on {results.get("device", "cpu")}.
- Steps: {cfg["step_scale"]}× those of the recipes (`openovis demo --steps X` changes it; the
  default keeps the demo within about 10 minutes on 2 CPU cores).
- Data: Shapes World {json.dumps(cfg["shapes"])} (defaults otherwise; see `data/meta.json`).
{sizes}

## Accuracy (greedy answers, normalized exact match; option letter for mcq)

{"Mean ± std over seeds." if cfg["seeds"] > 1 else "One seed: run `openovis demo --seeds 3` for spread."} Chance is a uniform guess over each type's answers; *constant* is the accuracy of always giving the type's most common in-distribution answer (what a model that ignores the image can reach).

{accuracy_table(results)}

What the numbers say:

{chr(10).join("- " + line for line in reading(results))}

![accuracy](accuracy.png)

The held-out composition split asks about colour–shape pairs that never appear in training.

## Does the model read the image?

Mean cross-entropy (nats per answer token, teacher-forced) of the in-distribution test answers with
each question's own image and with another test image (images rolled by one). A model that answers
from the text alone has a gap of ~0; a positive gap is information taken from the image.

{image_check_table(results)}

## Training

| stage | steps | {run_names} |
|---|---|{"---|" * len(runs)}
{stage_rows}

![losses](loss_curves.png)

## Visual words

For six in-distribution test images, the most probable visual word of each visual token (one cell
per visual token, over the image) of the VET model, with its probability: the "semantic
commitments" the VET forces each patch to make.

![visual words](visual_words.png)

Raw numbers: `results.json`; every prediction: `runs/*/<last stage>/final/eval_*.json`.
"""
