"""Numbers of the analysis report beyond the usage statistics: nearest text tokens, distribution summaries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from openovis.experiments.analysis.collect import Collected
from openovis.modeling.visual_words import DEAD_FRACTION, VocabularyUsage


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


def special_token_ids(processor: Any) -> list[int]:
    """Ids left out of the nearest text tokens: Ovis's image tokens, and the tokenizer's special and
    added tokens (chat markup, reserved slots: rows the LLM's text never or rarely trains)."""
    tokenizer = processor.tokenizer
    ids = {processor.placeholder_id, processor.atom_token_id, *processor.indicator_token_ids}
    return sorted(ids | set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values()))


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


def summary(collected: Collected, usage: VocabularyUsage, config: Any) -> dict[str, Any]:
    """The headline numbers of the report (the model's settings, entropies, usage, dead words) and the
    histograms behind its figures."""
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


def check_vet_model(model_dir: Path) -> None:
    """Raises ``ValueError`` when a saved model has no visual vocabulary (an MLP connector)."""
    from openovis.configuration import OvisConfig

    if (model_dir / "config.json").exists() and OvisConfig.from_pretrained(model_dir).connector != "vet":
        raise ValueError("analysis needs a VET model (connector: vet); this model has an MLP connector")
