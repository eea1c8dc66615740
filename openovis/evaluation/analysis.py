"""Visual-word analysis: how a VET model spreads its visual tokens over its visual vocabulary.

Notation: N visual tokens, K visual vocabulary size, n indicator rows (the last n rows of the VET,
never a target of the visual head), K' = K - n visual words an image can use, D LLM width, V text
vocabulary, W inspected words, m nearest text tokens per word.

    probabilities [N, K] (last n columns zero, dropped: [N, K'])
      -> token_entropy, max_probability                     [N]
      -> UsageAccumulator over a data set:
           mass per word (summed, then normalised)          [K']
           argmax counts per word                           [K']
           best examples per word (probability, token)      [e, K']
      -> effective vocabulary = exp(H(mass)), dead words, top words
    VET rows [W, D] vs text input embeddings [V, D] -> cosine [W, V] -> top-m text tokens [W, m]

`run_analysis` loads a saved model, runs its visual tokenizer over a set of images and writes a
Markdown report with figures (see ``docs/analysis.md``). The numerics are also what the training
loop logs as monitors (`openovis.training.loop`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from openovis.plots import _pyplot

DEAD_FRACTION = 0.01
"""A word is dead when its share of the usage mass is below this fraction of the uniform share 1/K'."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Files `analysis_images` takes from an image folder."""


# --------------------------------------------------------------------------- numerics


def _words(probs: torch.Tensor, num_indicators: int) -> torch.Tensor:
    """Drops the n trailing indicator columns: ``[.., K]`` -> ``[.., K']`` (a view)."""
    if num_indicators < 0 or num_indicators >= probs.shape[-1]:
        raise ValueError(f"num_indicators: must be in [0, {probs.shape[-1]}), got {num_indicators}")
    return probs[..., : probs.shape[-1] - num_indicators]


def token_entropy(probs: torch.Tensor, num_indicators: int = 0) -> torch.Tensor:
    """Entropy in nats of each distribution, with 0·log 0 = 0: ``[.., K]`` -> ``[..]``.

    Args:
        probs: Distributions over the last dimension.
        num_indicators: Trailing indicator columns to leave out.
    """
    p = _words(probs, num_indicators).double()
    return -torch.xlogy(p, p).sum(-1)


def max_probability(probs: torch.Tensor, num_indicators: int = 0) -> torch.Tensor:
    """Probability of each distribution's most probable word: ``[.., K]`` -> ``[..]``."""
    return _words(probs, num_indicators).amax(-1)


def effective_vocabulary(mass: torch.Tensor) -> float:
    """``exp(entropy)`` of a usage distribution ``[K']`` (normalised here).

    The number of equally used words that would have the same entropy: K' for uniform usage, 1 when
    all the mass is on one word.
    """
    mass = mass.double()
    total = mass.sum()
    if not total > 0:
        raise ValueError("effective_vocabulary: the usage mass is empty")
    return float(token_entropy(mass / total).exp())


def dead_words(mass: torch.Tensor, fraction: float = DEAD_FRACTION) -> torch.Tensor:
    """Boolean mask ``[K']`` of words whose share of the usage is below ``fraction / K'``.

    The threshold is relative to the uniform share, so it means the same for any K: with the default
    a dead word gets less than 1 % of what it would get if every word were used equally.
    """
    share = mass.double() / mass.double().sum()
    return share < fraction / mass.numel()


def top_words(mass: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k words with the most usage mass, most used first: ``(ids [k], mass [k])``."""
    values, ids = mass.topk(min(k, mass.numel()))
    return ids, values


def rms_row_norm(table: torch.Tensor) -> float:
    """``‖E‖_F / sqrt(rows)`` of an embedding table ``[R, D]``: the RMS norm of its rows."""
    table = table.detach().double()
    return float(table.norm() / math.sqrt(table.shape[0]))


def nearest_text_tokens(
    vet: torch.Tensor,
    text_embeddings: torch.Tensor,
    words: Sequence[int],
    m: int = 5,
    tokenizer: Any = None,
    exclude: Sequence[int] = (),
    center: bool = True,
) -> list[list[dict[str, Any]]]:
    """The text tokens whose input embeddings are closest (cosine) to some VET rows.

    Args:
        vet: The VET ``[K, D]``.
        text_embeddings: The LLM's input embedding table ``[V, D]``.
        words: The VET rows to look up (W of them).
        m: Tokens per word.
        tokenizer: Gives each token's text (``decode``); rows past ``len(tokenizer)`` (padding of
            the table) are left out.
        exclude: Token ids never to return (e.g. the image atom and indicator tokens, whose text
            embeddings the model overwrites).
        center: Subtract the mean text embedding from both tables first. Trained embedding tables
            share a common offset (they are anisotropic), and the raw cosine then mostly measures
            how far a row is from the untrained rows near initialization; centering compares
            directions around the table's mean instead.

    Returns:
        Per word, m dicts ``{"id", "token", "cosine"}`` (``token`` is None without a tokenizer).
    """
    rows = text_embeddings.shape[0] if tokenizer is None else min(text_embeddings.shape[0], len(tokenizer))
    queries = vet[list(words)].detach().float()  # [W, D]
    keys = text_embeddings[:rows].detach().float()  # [V, D]
    if center:
        mean = keys.mean(0)  # [D]
        queries, keys = queries - mean, keys - mean
    cosine = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T  # [W, V]
    ban = sorted({i for i in exclude if 0 <= i < rows})
    cosine[:, ban] = -math.inf
    values, ids = cosine.topk(min(m, rows - len(ban)), dim=-1)  # [W, m]
    return [
        [
            {
                "id": int(i),
                "token": None if tokenizer is None else tokenizer.decode([int(i)]),
                "cosine": float(c),
            }
            for i, c in zip(row_ids, row_values, strict=True)
        ]
        for row_ids, row_values in zip(ids.tolist(), values.tolist(), strict=True)
    ]


@dataclass(frozen=True)
class VocabularyUsage:
    """How a set of visual tokens uses the K' visual words."""

    mass: torch.Tensor
    """``[K']`` summed probability per word, normalised to sum 1."""
    top_counts: torch.Tensor
    """``[K']`` how many tokens have each word as their most probable word."""
    tokens: int
    """N, the tokens counted."""

    @property
    def effective(self) -> float:
        """``exp(H(mass))``, between 1 and K'."""
        return effective_vocabulary(self.mass)

    @property
    def used_as_top(self) -> int:
        """Distinct words that are the most probable word of at least one token."""
        return int((self.top_counts > 0).sum())

    def dead(self, fraction: float = DEAD_FRACTION) -> torch.Tensor:
        """See `dead_words`."""
        return dead_words(self.mass, fraction)


class UsageAccumulator:
    """Adds up visual-word statistics batch by batch, without keeping the ``[N, K]`` probabilities.

    Args:
        vocab_size: K, the width of the distributions given to `update` (indicators included).
        num_indicators: n, trailing indicator columns to leave out.
        examples: e, how many best examples (highest probability of the word) to keep per word.
    """

    def __init__(self, vocab_size: int, num_indicators: int = 0, examples: int = 0):
        self.num_indicators = num_indicators
        words = vocab_size - num_indicators
        self.mass = torch.zeros(words, dtype=torch.float64)  # [K']
        self.top_counts = torch.zeros(words, dtype=torch.long)  # [K']
        self.best_prob = torch.full((examples, words), -1.0)  # [e, K']; -1: no example yet
        self.best_token = torch.full((examples, words), -1, dtype=torch.long)  # [e, K']
        self.entropies: list[torch.Tensor] = []
        self.max_probs: list[torch.Tensor] = []
        self.tokens = 0

    def update(self, probs: torch.Tensor) -> None:
        """Adds ``probs [N, K]``; its tokens get the next N global token indices."""
        p = _words(probs, self.num_indicators).detach().float().cpu()  # [N, K']
        self.mass += p.sum(0, dtype=torch.float64)
        self.top_counts += torch.bincount(p.argmax(-1), minlength=p.shape[-1])
        self.entropies.append(token_entropy(p).float())
        self.max_probs.append(p.amax(-1))
        examples = self.best_prob.shape[0]
        if examples:
            values, index = p.topk(min(examples, p.shape[0]), dim=0)  # [e, K']
            values = torch.cat([self.best_prob, values])  # [2e, K']
            tokens = torch.cat([self.best_token, index + self.tokens])  # [2e, K']
            self.best_prob, order = values.topk(examples, dim=0)  # [e, K']
            self.best_token = tokens.gather(0, order)
        self.tokens += p.shape[0]

    def usage(self) -> VocabularyUsage:
        if self.tokens == 0:
            raise ValueError("no visual tokens were counted")
        return VocabularyUsage((self.mass / self.mass.sum()).float(), self.top_counts.clone(), self.tokens)

    def token_entropies(self) -> torch.Tensor:
        """``[N]`` entropy of every token counted, in nats."""
        return torch.cat(self.entropies)

    def token_max_probs(self) -> torch.Tensor:
        """``[N]`` highest probability of every token counted."""
        return torch.cat(self.max_probs)


def vocabulary_usage(probs: torch.Tensor, num_indicators: int = 0) -> VocabularyUsage:
    """The usage statistics of one ``[N, K]`` batch of distributions."""
    acc = UsageAccumulator(probs.shape[-1], num_indicators)
    acc.update(probs)
    return acc.usage()


# --------------------------------------------------------------------------- model side


def visual_word_probabilities(visual_tokenizer: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The soft visual-word distributions of crops ``[C, 3, S, S]`` -> ``[C, T, K']`` (no indicator columns).

    Always the softmax of the head's logits at the model's temperature, whatever the training-time
    tokenize function: with ``st_argmax``/``gumbel_argmax`` the model embeds the argmax word, whose
    statistics are the ``top_counts`` of `UsageAccumulator`.
    """
    from openovis.modeling.visual_tokenizer import tokenize

    logits = visual_tokenizer.logits(visual_tokenizer.features(pixel_values))  # [C, T, K']
    return tokenize(logits, "softmax", visual_tokenizer.config.tokenize_temperature)  # [C, T, K']


def token_box(token: int, crop_size: int, patch_size: int, hidden_stride: int) -> tuple[int, int, int, int]:
    """Pixel box ``(left, top, right, bottom)`` of visual token ``token`` inside its S×S crop.

    The crop's g×g patch grid (g = S // patch_size) is padded to a multiple of s and merged s×s
    (`openovis.modeling.visual_tokenizer.merge_hidden_stride`), so token t covers the s×s patches of
    row ``t // ceil(g/s)``, column ``t % ceil(g/s)``; the box is clipped to the real patches.
    """
    g = crop_size // patch_size
    per_side = math.ceil(g / hidden_stride)
    if not 0 <= token < per_side * per_side:
        raise ValueError(f"token: must be in [0, {per_side * per_side}), got {token}")
    row, col = divmod(token, per_side)
    span, edge = hidden_stride * patch_size, g * patch_size
    return col * span, row * span, min((col + 1) * span, edge), min((row + 1) * span, edge)


def crop_to_image(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undoes the normalization of one crop ``[3, S, S]`` -> ``uint8 [S, S, 3]``."""
    rgb = pixels.float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


# --------------------------------------------------------------------------- visual words of images


@torch.inference_mode()
def top_visual_words(pipeline: Any, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Top visual word and its probability for each visual token of a 1-crop image: two [g, g] arrays."""
    sample = pipeline.processor(None, [image], mode="caption")
    pixels = sample["pixel_values"][:1].to(pipeline.device, pipeline.model.dtype)
    probs = pipeline.model.visual_tokenizer.probabilities(pixels)[0].float()  # [T, K]
    g = int(round(probs.shape[0] ** 0.5))
    p, w = probs.max(-1)
    return w.reshape(g, g).cpu().numpy(), p.reshape(g, g).cpu().numpy()


def plot_visual_words(pipeline: Any, images: list[Path], path: Path) -> Path:
    """Each test image beside its grid of top visual words (colour = word id, text = id and probability).

    The text is written when the grid is at most 8×8 (larger grids would be unreadable).
    """
    plt = _pyplot()
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


# --------------------------------------------------------------------------- figures


def plot_token_distributions(entropies: np.ndarray, max_probs: np.ndarray, words: int, path: Path) -> Path:
    """Histograms of the per-token entropy (with log K' marked) and of the top probability."""
    plt = _pyplot()
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
    plt = _pyplot()
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


def plot_word_gallery(rows: list[dict[str, Any]], path: Path, tile: int = 56, gap: int = 6) -> Path:
    """One row per word: the image regions of the visual tokens that give it the highest probability.

    The patches are composed into one mosaic (upscaled without smoothing, so pixels stay visible);
    patches clipped at a crop's edge keep their scale.

    Args:
        rows: ``{"word", "mass", "patches": [uint8 [h, w, 3], ...], "probs": [...]}`` per word.
        path: The PNG to write.
        tile: Side of one patch in the mosaic, in pixels.
        gap: White space between patches, in pixels.
    """
    plt = _pyplot()
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


# --------------------------------------------------------------------------- run_analysis

TOP_WORDS = 20
"""Most used words listed with their nearest text tokens (when no words are asked for)."""
GALLERY_WORDS = 6
"""Words shown in the patch gallery."""
EXAMPLES = 8
"""Patches per word in the gallery."""
WORD_MAP_IMAGES = 6
"""Images drawn with the top visual word of each visual token."""


def analysis_images(
    data: str | Path | None = None,
    images: str | Path | None = None,
    image_root: str | Path | None = None,
    max_images: int | None = None,
) -> list[Path]:
    """The image files to analyse: those of a data file, or those of a folder (sorted, recursive).

    Args:
        data: A conversation (JSON/JSONL) or caption (JSONL/parquet) file; its records' ``image`` /
            ``images`` paths, in order, each file once.
        images: A folder of images (``IMAGE_SUFFIXES``), instead of ``data``.
        image_root: Where ``data``'s image paths start (default: the data file's folder).
        max_images: Keep the first N.
    """
    from openovis.data.datasets import read_records, resolve_image_path
    from openovis.data.skips import SkipSample

    if (data is None) == (images is None):
        raise ValueError("give either data (a conversation or caption file) or images (a folder of images)")
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(f"images: {folder} is not a folder")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        root = Path(image_root) if image_root is not None else Path(data).parent
        files, seen = [], set()
        for raw in read_records(data):
            value = raw.get("image", raw.get("images")) if isinstance(raw, dict) else None
            for rel in [value] if isinstance(value, str) else value or []:
                try:
                    file = resolve_image_path(root, rel)
                except SkipSample:
                    continue  # a path outside the root is never read
                if file not in seen:
                    seen.add(file)
                    files.append(file)
            if max_images is not None and len(files) >= max_images:
                break
    files = files[:max_images]
    if not files:
        raise ValueError(f"no images found in {data if data is not None else images}")
    return files


@dataclass
class _Collected:
    """What one pass of the visual tokenizer over the images leaves."""

    stats: UsageAccumulator
    files: list[Path]
    crops: list[tuple[int, int]]
    """(image index, crop index) of every crop analysed, in order: global token g is in crop g // T."""
    skipped: dict[str, int]


@torch.inference_mode()
def _collect(pipeline: Any, files: list[Path], batch_size: int, progress: bool) -> _Collected:
    from openovis.data.skips import SkipSample
    from openovis.processing.image import load_image, process_image

    model, image_config = pipeline.model, pipeline.processor.image_config
    collected = _Collected(
        UsageAccumulator(model.config.visual_vocab_size - model.config.num_indicators, 0, EXAMPLES),
        files,
        [],
        {},
    )
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            pixels = torch.cat(pending).to(pipeline.device, model.dtype)  # [C, 3, S, S]
            probs = visual_word_probabilities(model.visual_tokenizer, pixels)  # [C, T, K']
            collected.stats.update(probs.flatten(0, 1))  # [C·T, K']
            pending.clear()

    for i, file in enumerate(tqdm(files, desc="visual words", unit="img", disable=not progress)):
        try:
            pixels = process_image(load_image(file), image_config).pixel_values  # [C, 3, S, S]
        except SkipSample as skip:
            collected.skipped[skip.reason.value] = collected.skipped.get(skip.reason.value, 0) + 1
            continue
        collected.crops += [(i, c) for c in range(pixels.shape[0])]
        pending.append(pixels)
        if sum(p.shape[0] for p in pending) >= batch_size:
            flush()
    flush()
    if collected.stats.tokens == 0:
        raise ValueError(f"none of the {len(files)} images could be read: {collected.skipped}")
    return collected


def _gallery(
    pipeline: Any, collected: _Collected, usage: VocabularyUsage, words: Sequence[int]
) -> list[dict[str, Any]]:
    """Per word: its best examples as image patches, and where they come from."""
    from openovis.processing.image import load_image, process_image

    cfg, image_config = pipeline.model.config, pipeline.processor.image_config
    per_crop = cfg.visual_tokens_per_crop
    stats, cache, rows = collected.stats, {}, []
    for w in words:
        row: dict[str, Any] = {
            "word": int(w),
            "mass": float(usage.mass[w]),
            "patches": [],
            "probs": [],
            "examples": [],
        }
        for prob, g in zip(stats.best_prob[:, w].tolist(), stats.best_token[:, w].tolist(), strict=True):
            if g < 0:
                continue
            image, crop = collected.crops[g // per_crop]
            token = g % per_crop
            if image not in cache:
                cache[image] = process_image(load_image(collected.files[image]), image_config).pixel_values
            left, top, right, bottom = token_box(token, cfg.crop_size, cfg.patch_size, cfg.hidden_stride)
            rgb = crop_to_image(cache[image][crop], image_config.image_mean, image_config.image_std)
            row["patches"].append(rgb[top:bottom, left:right])
            row["probs"].append(prob)
            row["examples"].append(
                {"image": str(collected.files[image]), "crop": crop, "token": token, "probability": prob}
            )
        rows.append(row)
    return rows


def _histogram(values: np.ndarray, high: float) -> dict[str, list[float]]:
    counts, edges = np.histogram(values, bins=50, range=(0.0, high))
    return {"edges": edges.round(6).tolist(), "counts": counts.tolist()}


def _spread(values: np.ndarray) -> dict[str, float]:
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p10": float(p10),
        "median": float(median),
        "p90": float(p90),
    }


def _summary(collected: _Collected, usage: VocabularyUsage, config: Any) -> dict[str, Any]:
    entropies = collected.stats.token_entropies().numpy()
    max_probs = collected.stats.token_max_probs().numpy()
    words = usage.mass.numel()
    dead = usage.dead()
    return {
        "images": len({image for image, _ in collected.crops}),
        "skipped": collected.skipped,
        "crops": len(collected.crops),
        "tokens": usage.tokens,
        "vocab_size": config.visual_vocab_size,
        "num_indicators": config.num_indicators,
        "words": words,
        "crop_size": config.crop_size,
        "patch_size": config.patch_size,
        "hidden_stride": config.hidden_stride,
        "tokenize_function": config.tokenize_function,
        "temperature": config.tokenize_temperature,
        "entropy": {**_spread(entropies), "uniform": math.log(words)},
        "max_probability": _spread(max_probs),
        "effective_vocabulary": usage.effective,
        "words_used_as_top": usage.used_as_top,
        "dead_fraction": DEAD_FRACTION,
        "dead_words": int(dead.sum()),
        "entropy_histogram": _histogram(entropies, math.log(words)),
        "max_probability_histogram": _histogram(max_probs, 1.0),
        "usage_mass": usage.mass.tolist(),
        "top_counts": usage.top_counts.tolist(),
    }


def _check_vet_model(model_dir: Path) -> None:
    from openovis.configuration import OvisConfig

    if (model_dir / "config.json").exists() and OvisConfig.from_pretrained(model_dir).connector != "vet":
        raise ValueError("analysis needs a VET model (connector: vet); this model has an MLP connector")


def run_analysis(
    model_dir: str | Path,
    data: str | Path | None = None,
    out: str | Path | None = None,
    *,
    images: str | Path | None = None,
    image_root: str | Path | None = None,
    max_images: int = 500,
    words: Sequence[int] | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Analyses the visual vocabulary of a saved VET model on a set of images.

    Writes into ``out``: ``analysis.md`` (the report), ``analysis.json`` (every number) and the PNGs
    the report embeds.

    Args:
        model_dir: A folder written by training (model + processor).
        data: A conversation or caption data file whose images to analyse.
        out: Output folder (default: ``model_dir/analysis``).
        images: A folder of images, instead of ``data``.
        image_root: Where ``data``'s image paths start (default: the data file's folder).
        max_images: Analyse at most this many images (every crop of each).
        words: Visual words to inspect (nearest text tokens, patch gallery); default: the 20 most used.
        batch_size: Crops per visual-tokenizer forward.
        device: Where to run the model.
        progress: Show a progress bar.

    Returns:
        The contents of ``analysis.json`` plus ``report`` (the Markdown file's path).

    Raises:
        ValueError: The model has no VET (connector ``mlp``), no images were given or found, or a
            word is out of range.
    """
    from openovis.inference import OvisPipeline

    model_dir = Path(model_dir)
    _check_vet_model(model_dir)
    files = analysis_images(data, images, image_root, max_images)
    pipeline = OvisPipeline.from_pretrained(model_dir, device=device)
    model = pipeline.model
    n_words = model.config.visual_vocab_size - model.config.num_indicators
    bad = [w for w in words or () if not 0 <= w < n_words]
    if bad:
        raise ValueError(
            f"words: visual words are 0 … {n_words - 1} (the indicator rows are not words), got {bad}"
        )
    out = Path(out) if out is not None else model_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)

    collected = _collect(pipeline, files, batch_size, progress)
    usage = collected.stats.usage()
    inspect = list(words) if words else top_words(usage.mass, TOP_WORDS)[0].tolist()
    nearest = nearest_text_tokens(
        model.vte.weight,
        model.get_input_embeddings().weight,
        inspect,
        m=5,
        tokenizer=pipeline.processor.tokenizer,
        exclude=_special_token_ids(pipeline.processor),
    )
    gallery = _gallery(pipeline, collected, usage, inspect[:GALLERY_WORDS])

    result = {"model": str(model_dir), "data": str(data) if data is not None else None}
    result["image_folder"] = str(images) if images is not None else None
    result.update(_summary(collected, usage, model.config))
    result["inspected_words"] = [
        {
            "word": w,
            "mass": float(usage.mass[w]),
            "top_count": int(usage.top_counts[w]),
            "nearest_text_tokens": near,
        }
        for w, near in zip(inspect, nearest, strict=True)
    ]
    result["gallery"] = [{"word": row["word"], "examples": row["examples"]} for row in gallery]
    result["figures"] = _figures(pipeline, collected, usage, gallery, out)
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    (out / "analysis.md").write_text(_markdown(result))
    result["report"] = str(out / "analysis.md")
    return result


def _special_token_ids(processor: Any) -> list[int]:
    """Ids left out of the nearest text tokens: Ovis's image tokens, and the tokenizer's special and
    added tokens (chat markup, reserved slots: rows the LLM's text never or rarely trains)."""
    tokenizer = processor.tokenizer
    ids = {processor.placeholder_id, processor.atom_token_id, *processor.indicator_token_ids}
    return sorted(ids | set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values()))


def _figures(
    pipeline: Any, collected: _Collected, usage: VocabularyUsage, gallery: list[dict[str, Any]], out: Path
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
            pipeline, _readable(collected)[:WORD_MAP_IMAGES], out / "visual_words.png"
        ),
    }
    if any(row["patches"] for row in gallery):
        figures["gallery"] = plot_word_gallery([r for r in gallery if r["patches"]], out / "word_gallery.png")
    return {name: path.name for name, path in figures.items()}


def _readable(collected: _Collected) -> list[Path]:
    """The analysed (readable) images, in order."""
    return [collected.files[i] for i in dict.fromkeys(image for image, _ in collected.crops)]


def _md_token(text: str | None) -> str:
    shown = repr(text).replace("|", "\\|")
    return f"`` {shown} ``" if "`" in shown else f"`{shown}`"


def _markdown(r: dict[str, Any]) -> str:
    words, entropy, top = r["words"], r["entropy"], r["max_probability"]
    source = f"`{r['data']}`" if r["data"] else f"the images in `{r['image_folder']}`"
    skipped = (
        f" ({sum(r['skipped'].values())} unreadable images skipped: {r['skipped']})" if r["skipped"] else ""
    )
    hard = r["tokenize_function"] != "softmax"
    tokenize_note = (
        f" The model embeds the **argmax** word (`{r['tokenize_function']}`); the soft distributions below "
        "are the softmax its gradient follows, and the argmax counts are what it embeds."
        if hard
        else ""
    )
    rows = "\n".join(
        f"| {i + 1} | {w['word']} | {100 * w['mass']:.3f}% | {w['top_count']} | "
        + ", ".join(f"{_md_token(t['token'])} {t['cosine']:.2f}" for t in w["nearest_text_tokens"])
        + " |"
        for i, w in enumerate(r["inspected_words"])
    )
    figures = r["figures"]
    s, patch = r["hidden_stride"], r["patch_size"]
    region = f"{s}×{s} ViT patches of {patch} px, {s * patch}×{s * patch} px of a {r['crop_size']}-px crop"
    gallery = (
        f"""## Patches per word

For the {len(r["gallery"])} first inspected words, the image regions (one visual token: {region}) whose
distribution gives the word the highest probability.

![word gallery]({figures["gallery"]})
"""
        if "gallery" in figures
        else ""
    )
    return f"""# Visual-word analysis

Model `{r["model"]}`, on {r["images"]} images of {source}{skipped}: {r["crops"]} crops,
{r["tokens"]:,} visual tokens. The visual vocabulary has K = {r["vocab_size"]} rows, of which the last
{r["num_indicators"]} are indicator tokens: K' = {words} visual words. Each visual token's
distribution is the softmax of the visual head's logits (temperature {r["temperature"]:g}).{tokenize_note}

| statistic | value | reference |
|---|---|---|
| entropy per visual token (nats), mean ± std | {entropy["mean"]:.3f} ± {entropy["std"]:.3f} | uniform: log K' = {entropy["uniform"]:.3f} |
| entropy, 10th / 50th / 90th percentile | {entropy["p10"]:.3f} / {entropy["median"]:.3f} / {entropy["p90"]:.3f} | one-hot: 0 |
| top-word probability, mean (median) | {top["mean"]:.3f} ({top["median"]:.3f}) | uniform: 1/K' = {1 / words:.2e} |
| effective vocabulary exp(H(usage)) | {r["effective_vocabulary"]:.1f} ({100 * r["effective_vocabulary"] / words:.1f}% of K') | 1 … {words} |
| words that are some token's top word | {r["words_used_as_top"]} ({100 * r["words_used_as_top"] / words:.1f}%) | ≤ min(K', tokens) |
| dead words (usage share < {r["dead_fraction"]:g}/K') | {r["dead_words"]} ({100 * r["dead_words"] / words:.1f}%) | |

Usage is the probability mass each word receives, summed over all visual tokens and normalised; the
effective vocabulary is the number of equally used words with the same usage entropy.

![per-token distributions]({figures["token_distributions"]})

![usage per word]({figures["usage"]})

## Top visual word per visual token

![visual words]({figures["visual_words"]})

{gallery}
## Nearest text tokens

The text tokens a visual word sits closest to in the LLM's input space: cosine similarity between
the word's VET row and the LLM's input embeddings, both centred on the mean text embedding (special,
added and image tokens left out).

| rank | word | usage | top-word count | nearest text tokens (cosine) |
|---|---|---|---|---|
{rows}

Every number: `analysis.json`.
"""
