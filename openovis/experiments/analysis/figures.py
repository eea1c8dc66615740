"""Figures of the analysis: per-token distributions, usage per word, top words drawn over images, patch gallery."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from openovis.experiments.analysis.collect import Collected, readable_images
from openovis.modeling.visual_words import DEAD_FRACTION, VocabularyUsage, visual_word_probabilities
from openovis.plots import pyplot

WORD_MAP_IMAGES = 6
"""Images drawn with the top visual word of each visual token."""


@torch.inference_mode()
def top_visual_words(pipeline: Any, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Top visual word and its probability for each visual token of a 1-crop image: two [g, g] arrays."""
    sample = pipeline.processor(None, [image], mode="caption")
    pixels = sample["pixel_values"][:1].to(pipeline.device, pipeline.model.dtype)
    probs = visual_word_probabilities(pipeline.model, pixels)[0]  # [T, K']
    g = int(round(probs.shape[0] ** 0.5))
    p, w = probs.max(-1)
    return w.reshape(g, g).cpu().numpy(), p.reshape(g, g).cpu().numpy()


def plot_visual_words(pipeline: Any, images: list[Path], path: Path) -> Path:
    """Each test image beside its grid of top visual words (colour = word id, text = id and probability).

    The text is written when the grid is at most 8×8 (larger grids would be unreadable).
    """
    plt = pyplot()
    fig, axes = plt.subplots(2, len(images), figsize=(2.4 * len(images), 5.0), dpi=110, squeeze=False)
    cmap = plt.get_cmap("tab20")
    for col, file in enumerate(images):
        img = Image.open(file).convert("RGB")
        words, probs = top_visual_words(pipeline, img)
        g = words.shape[0]
        axes[0, col].imshow(img)
        axes[0, col].set_title(file.name, fontsize=8)
        colours = cmap(words % 20)
        axes[1, col].imshow(colours)
        axes[1, col].imshow(img, extent=(-0.5, g - 0.5, g - 0.5, -0.5), alpha=0.35)
        for r in range(g if g <= 8 else 0):
            for c in range(g):
                axes[1, col].text(
                    c, r, f"{words[r, c]}\n{probs[r, c]:.2f}", ha="center", va="center", fontsize=6
                )
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[1, 0].set_ylabel("top visual word\n(id, probability)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_token_distributions(entropies: np.ndarray, max_probs: np.ndarray, words: int, path: Path) -> Path:
    """Histograms of the per-token entropy (with log K' marked) and of the top probability."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    left.hist(entropies, bins=50, range=(0, math.log(words)), color="#1f77b4")
    left.axvline(
        math.log(words), color="black", linestyle="--", linewidth=1, label=f"log K' = {math.log(words):.2f}"
    )
    left.set_xlabel("entropy of a visual token's distribution (nats)")
    left.set_ylabel("visual tokens")
    left.legend(fontsize=8, loc="upper left")
    right.hist(max_probs, bins=50, range=(0, 1), color="#ff7f0e")
    right.set_xlabel("probability of the top visual word")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_usage(usage: VocabularyUsage, path: Path, fraction: float = DEAD_FRACTION) -> Path:
    """Usage mass per word, sorted, on log axes, with the effective vocabulary and the dead threshold."""
    plt = pyplot()
    words = usage.mass.numel()
    mass = np.sort(usage.mass.numpy())[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    ax.plot(
        np.arange(1, words + 1), np.maximum(mass, 1e-12), color="#1f77b4", linewidth=1.5, label="usage mass"
    )
    ax.axhline(1 / words, color="grey", linestyle=":", linewidth=1, label="uniform share 1/K'")
    ax.axhline(fraction / words, color="red", linestyle=":", linewidth=1, label=f"dead below {fraction:g}/K'")
    ax.axvline(
        usage.effective,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"effective vocabulary {usage.effective:.1f}",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"visual word rank (of K' = {words})")
    ax.set_ylabel("share of the probability mass")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_wordgallery(rows: list[dict[str, Any]], path: Path, tile: int = 56, gap: int = 6) -> Path:
    """One row per word: the image regions of the visual tokens that give it the highest probability.

    The patches are composed into one mosaic (upscaled without smoothing, so pixels stay visible);
    patches clipped at a crop's edge keep their scale.

    Args:
        rows: ``{"word", "mass", "patches": [uint8 [h, w, 3], ...], "probs": [...]}`` per word.
        path: The PNG to write.
        tile: Side of one patch in the mosaic, in pixels.
        gap: White space between patches, in pixels.
    """
    plt = pyplot()
    cols = max(len(r["patches"]) for r in rows)
    scale = tile / max(max(p.shape[:2]) for r in rows for p in r["patches"])
    mosaic = np.full((len(rows) * (tile + gap) - gap, cols * (tile + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, patch in enumerate(row["patches"]):
            h, w = (max(1, round(n * scale)) for n in patch.shape[:2])
            big = np.asarray(Image.fromarray(patch).resize((w, h), Image.Resampling.NEAREST))
            top, left = r * (tile + gap), c * (tile + gap)
            mosaic[top : top + h, left : left + w] = big
    fig, ax = plt.subplots(figsize=(0.62 * cols + 1.3, 0.62 * len(rows) + 0.3), dpi=110)
    ax.imshow(mosaic, interpolation="nearest")
    for r, row in enumerate(rows):
        for c, prob in enumerate(row["probs"]):
            ax.text(
                c * (tile + gap) + 2,
                r * (tile + gap) + tile - 3,
                f"{prob:.2g}",
                fontsize=6,
                color="black",
                bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.6, "linewidth": 0},
            )
    ax.set_yticks([r * (tile + gap) + tile / 2 for r in range(len(rows))])
    ax.set_yticklabels([f"word {row['word']}\n{100 * row['mass']:.2f}% mass" for row in rows], fontsize=7)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("patches giving each word its highest probability (number: that probability)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_figures(
    pipeline: Any, collected: Collected, usage: VocabularyUsage, gallery: list[dict[str, Any]], out: Path
) -> dict[str, str]:
    stats = collected.stats
    figures = {
        "token_distributions": plot_token_distributions(
            stats.token_entropies().numpy(),
            stats.token_max_probs().numpy(),
            usage.mass.numel(),
            out / "token_distributions.png",
        ),
        "usage": plot_usage(usage, out / "word_usage.png"),
        "visual_words": plot_visual_words(
            pipeline, readable_images(collected)[:WORD_MAP_IMAGES], out / "visual_words.png"
        ),
    }
    if any(row["patches"] for row in gallery):
        figures["gallery"] = plot_wordgallery([r for r in gallery if r["patches"]], out / "word_gallery.png")
    return {name: path.name for name, path in figures.items()}
