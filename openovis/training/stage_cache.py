"""A cache of the stages that stand in for pretrained parts, shared by every run that would train them the same way.

A from-scratch recipe may open with stages that play the parts the paper starts from pretrained: a
text stage that teaches the tiny LLM the corpus language (text files, only ``llm`` trainable), and
a regions stage that teaches the backbone what lies under each visual token (`format: regions`,
only the backbone trainable: `openovis.training.regions`). What such a stage produces depends on
its data, the config of the module it trains and its settings, not on the connector or the other
module, so a demo (VET and MLP twins), an ablation grid and all their seeds can pay for it once.
Every run that finds it starts from the same weights, and seeds vary only what comes after it.

A stage is cacheable when it and every stage before it are such stages (without LoRA), so the
module entering it is the freshly built one or a cached one. The key hashes::

    the trained module's config | (text) tokenizer vocabulary | (regions) image processing
    | the stage's spec | the data files' bytes (regions: and their images') | its index | the previous
      cacheable stage's key

Layout: ``<cache>/<stage name>-<key>/{llm|backbone.safetensors, stage.json, losses.json}``, written to a
temporary folder and renamed when complete, so a killed run never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from openovis.training.recipe import StageSpec
from openovis.training.regions import is_regions_stage

INFO = "stage.json"
LOSSES = "losses.json"


def kind(stage: StageSpec) -> str | None:
    """``llm`` for a text-only stage training the LLM alone, ``backbone`` for a regions stage, else None."""
    if stage.lora is not None:
        return None
    if all(d.format == "text" for d in stage.data) and set(stage.module_lr) <= {"llm"}:
        return "llm"
    if is_regions_stage(stage):
        return "backbone"
    return None


def cacheable(stages: list[StageSpec], index: int) -> bool:
    """Whether stage ``index`` and every stage before it are text-LLM or regions-backbone stages."""
    return all(kind(s) is not None for s in stages[: index + 1])


def module(model: torch.nn.Module, stage: StageSpec) -> torch.nn.Module:
    """The module a cacheable stage trains (and its entry stores)."""
    return model.llm if kind(stage) == "llm" else model.visual_tokenizer.backbone


def _weights(stage: StageSpec) -> str:
    return f"{kind(stage)}.safetensors"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_key(
    model: torch.nn.Module, processor: Any, stage: StageSpec, data_root: Path, index: int, previous: str = ""
) -> str:
    """The hash of everything a cacheable stage's result depends on (see the module docstring)."""
    if kind(stage) == "llm":
        own = {"llm": model.llm.config.to_dict(), "vocab": sorted(processor.tokenizer.get_vocab().items())}
    else:
        config = model.config
        own = {
            "backbone": config.vision_config.to_dict(),
            "merge": [config.patch_size, config.hidden_stride, config.backbone_feature],
            "images": processor.image_processor.image_config.to_dict(),
        }
    data = [_file_digest(data_root / d.path) for d in stage.data]
    if kind(stage) == "backbone":
        data += [_images_digest(data_root, d) for d in stage.data]
    blob = json.dumps(
        {**own, "stage": asdict(stage), "data": data, "index": index, "previous": previous},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _images_digest(data_root: Path, source: Any) -> str:
    """One hash of the bytes of every image a regions file names (a missing one hashes as absent)."""
    from openovis.processing.image import resolve_image_path
    from openovis.training.regions import read_regions

    digest = hashlib.sha256()
    root = data_root / (source.image_root or ".")
    for record in read_regions(data_root / source.path):
        path = resolve_image_path(root, record.image)
        digest.update(record.image.encode() + b"\0")
        digest.update(_file_digest(path).encode() if path.is_file() else b"missing")
    return digest.hexdigest()


def entry(cache: Path, stage: StageSpec, key: str) -> Path:
    return cache / f"{stage.name}-{key}"


def load(model: torch.nn.Module, stage: StageSpec, folder: Path) -> dict[str, Any] | None:
    """Loads a cached stage's weights into its module; its stage summary, or None if absent."""
    weights = folder / _weights(stage)
    if not (folder / INFO).is_file() or not weights.is_file():
        return None
    target = module(model, stage)
    missing, unexpected = load_model(target, weights, strict=False)
    if unexpected or [m for m in missing if not _tied(target, m)]:
        raise RuntimeError(
            f"{folder}: cached {kind(stage)} weights do not fit this model (missing {missing}, unexpected "
            f"{unexpected}); delete the folder to retrain the stage"
        )
    return {**json.loads((folder / INFO).read_text()), "cached": str(folder)}


def _tied(target: torch.nn.Module, name: str) -> bool:
    """Whether ``name`` is a weight the LLM ties to another (saved once)."""
    return bool(getattr(target.config, "tie_word_embeddings", False)) and name.endswith("lm_head.weight")


def store(
    model: torch.nn.Module,
    stage: StageSpec,
    folder: Path,
    info: dict[str, Any],
    losses: list[float] | None = None,
) -> None:
    """Writes the stage's module's weights, the stage summary and its losses atomically."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(module(model, stage), str(tmp / _weights(stage)))
    (tmp / INFO).write_text(json.dumps(info, indent=1))
    if losses is not None:
        (tmp / LOSSES).write_text(json.dumps(losses))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
