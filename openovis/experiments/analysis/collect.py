"""Collecting the visual-word statistics of a model over a set of images, and the patches behind them.

images -> processor crops [C, 3, S, S] -> visual_word_probabilities [C, T, K'] -> UsageAccumulator
global token g -> (image, crop g // T, token g % T) -> pixel box of that token in its crop
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from openovis.modeling.visual_words import UsageAccumulator, VocabularyUsage, visual_word_probabilities

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Files `analysis_images` takes from an image folder."""

EXAMPLES = 8
"""Best examples (image patches) kept per word for the gallery."""


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
    from openovis.skips import SkipSample

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
class Collected:
    """What one pass of the visual tokenizer over the images leaves."""

    stats: UsageAccumulator
    files: list[Path]
    crops: list[tuple[int, int]]
    """(image index, crop index) of every crop analysed, in order: global token g is in crop g // T."""
    skipped: dict[str, int]


@torch.inference_mode()
def collect(pipeline: Any, files: list[Path], batch_size: int, progress: bool) -> Collected:
    """Runs the model's visual tokenizer over every readable image (every crop), ``batch_size`` crops
    at a time, and adds up the statistics; unreadable images are counted by skip reason."""
    from openovis.processing.image import load_image, process_image
    from openovis.skips import SkipSample

    model, image_config = pipeline.model, pipeline.processor.image_config
    collected = Collected(
        UsageAccumulator(model.config.visual_vocab_size - model.config.num_indicators, 0, EXAMPLES),
        files,
        [],
        {},
    )
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            pixels = torch.cat(pending).to(pipeline.device, model.dtype)  # [C, 3, S, S]
            probs = visual_word_probabilities(model, pixels)  # [C, T, K']
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


def gallery(
    pipeline: Any, collected: Collected, usage: VocabularyUsage, words: Sequence[int]
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


def readable_images(collected: Collected) -> list[Path]:
    """The analysed (readable) images, in order."""
    return [collected.files[i] for i in dict.fromkeys(image for image, _ in collected.crops)]
