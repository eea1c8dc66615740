"""Tables and plots of grid results: mean ± std over seeds, per split and question type.

runs (one result per run) -> aggregate -> table[label][split][type] = (mean, std)
                          -> markdown_tables (a table per split, chance and the best constant answer first)
                          -> plot_grouped_accuracy (bars per type), plot_vocab (accuracy and words used vs K)
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from openovis.experiments.shapes import SPLITS
from openovis.plots import pyplot


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
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
    extras = run_extras(results)
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


def spread_verdict(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Whether two seed means differ by more than their two standard deviations together."""
    outside = abs(a[0] - b[0]) > a[1] + b[1]
    return "outside the seed spread" if outside else "within the seed spread"


def seed_spread_lines(results: dict[str, Any], split: str = "in-distribution") -> list[str]:
    """Each grid point against the first, in words: the overall accuracy and the image gap, and whether
    each difference is outside the seed spread (|difference of means| > the sum of the two stds)."""
    table = results["table"]
    seeds = results.get("seeds", results.get("config", {}).get("seeds", 1))
    labels = [label for label in table if split in table[label]]
    if len(labels) < 2:
        return []
    if seeds < 2:
        return [f"One seed: differences between {', '.join(labels)} cannot be told from seed noise."]
    runs = {label: [r for r in results["runs"] if r["label"] == label] for label in labels}
    gaps = {
        label: mean_std([r["image_check"]["gap"] for r in mine])
        for label, mine in runs.items()
        if mine and all("image_check" in r for r in mine)
    }
    ref, lines = labels[0], []
    for label in labels[1:]:
        a, b = table[label][split]["overall"], table[ref][split]["overall"]
        line = (
            f"{label} vs {ref} ({split}, {seeds} seeds): overall {a[0] - b[0]:+.3f} "
            f"({a[0]:.3f} ± {a[1]:.3f} vs {b[0]:.3f} ± {b[1]:.3f}), {spread_verdict(a, b)}"
        )
        if label in gaps and ref in gaps:
            ga, gb = gaps[label], gaps[ref]
            line += f"; image gap {ga[0] - gb[0]:+.3f} nats, {spread_verdict(ga, gb)}"
        lines.append(line + ".")
    return lines


def run_extras(results: dict[str, Any]) -> dict[str, dict[str, str]]:
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
    plt = pyplot()
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
    plt = pyplot()
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
