"""`openovis analyze`: how a trained VET spreads its visual tokens over its visual vocabulary.

Notation: N visual tokens, K visual vocabulary size, n indicator rows (the last n rows of the VET,
never a target of the visual head), K' = K - n visual words an image can use, D LLM width, V text
vocabulary, W inspected words, m nearest text tokens per word.

    images -> probabilities [N, K'] -> usage (mass, argmax counts, best examples per word)   collect.py
    VET rows [W, D] vs text input embeddings [V, D] -> cosine [W, V] -> top-m text tokens   statistics.py
    histograms, usage curve, top words over images, patch gallery                        figures.py
    analysis.md + analysis.json                                                         this file

The numerics are `openovis.modeling.visual_words`, which the training monitors share (see
``docs/analysis.md``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openovis.experiments.analysis.collect import analysis_images, collect, gallery
from openovis.experiments.analysis.figures import write_figures
from openovis.experiments.analysis.statistics import (
    check_vet_model,
    nearest_text_tokens,
    special_token_ids,
    summary,
)
from openovis.modeling.visual_words import top_words, visual_table
from openovis.options import Device, torch_device

TOP_WORDS = 20
"""Most used words listed with their nearest text tokens (when no words are asked for)."""
GALLERY_WORDS = 6
"""Words shown in the patch gallery."""


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
    device: Device = "auto",
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
        device: Where to run the model: auto (CUDA when present), cpu or cuda.
        progress: Show a progress bar.

    Returns:
        The contents of ``analysis.json`` plus ``report`` (the Markdown file's path).

    Raises:
        ValueError: The model has no VET (connector ``mlp``), no images were given or found, or a
            word is out of range.
    """
    from openovis.inference import OvisPipeline

    model_dir = Path(model_dir)
    check_vet_model(model_dir)
    files = analysis_images(data, images, image_root, max_images)
    pipeline = OvisPipeline.from_pretrained(model_dir, device=torch_device(device))
    model = pipeline.model
    n_words = model.config.visual_vocab_size - model.config.num_indicators
    bad = [w for w in words or () if not 0 <= w < n_words]
    if bad:
        raise ValueError(
            f"words: visual words are 0 … {n_words - 1} (the indicator rows are not words), got {bad}"
        )
    out = Path(out) if out is not None else model_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)

    collected = collect(pipeline, files, batch_size, progress)
    usage = collected.stats.usage()
    inspect = list(words) if words else top_words(usage.mass, TOP_WORDS)[0].tolist()
    nearest = nearest_text_tokens(
        visual_table(model),
        model.get_input_embeddings().weight,
        inspect,
        m=5,
        tokenizer=pipeline.processor.tokenizer,
        exclude=special_token_ids(pipeline.processor),
    )
    patches = gallery(pipeline, collected, usage, inspect[:GALLERY_WORDS])

    result = {"model": str(model_dir), "data": str(data) if data is not None else None}
    result["image_folder"] = str(images) if images is not None else None
    result.update(summary(collected, usage, model.config))
    result["inspected_words"] = [
        {
            "word": w,
            "mass": float(usage.mass[w]),
            "top_count": int(usage.top_counts[w]),
            "nearest_text_tokens": near,
        }
        for w, near in zip(inspect, nearest, strict=True)
    ]
    result["gallery"] = [{"word": row["word"], "examples": row["examples"]} for row in patches]
    result["figures"] = write_figures(pipeline, collected, usage, patches, out)
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    (out / "analysis.md").write_text(_markdown(result))
    result["report"] = str(out / "analysis.md")
    return result


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
        f" The model embeds the **argmax** word (`{r['tokenize_function']}`): each distribution below is "
        "that word, one-hot (entropy 0), and the usage counts the words it embeds."
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
distribution is the one the VET mixes: the softmax of the visual head's logits (temperature {r["temperature"]:g}).{tokenize_note}

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
