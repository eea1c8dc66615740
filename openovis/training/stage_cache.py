"""A cache of text-only LLM stages, shared by every run that would train them the same way.

A from-scratch recipe may open with a stage that teaches the tiny LLM the corpus language (a text
file, only ``llm`` trainable). What it produces depends on the text data, the LLM's config, the
tokenizer and the stage's settings, not on the connector or anything visual, so a demo (VET and MLP
twins), an ablation grid and all their seeds can pay for it once. It plays the part of the
pretrained LLM the paper starts from: every run that finds it starts from the same weights, and
seeds vary only what comes after it.

A stage is cacheable when it and every stage before it are text-only, train only ``llm``, and use
no LoRA (so the LLM entering it is the freshly built one). The key hashes::

    LLM config | tokenizer vocabulary | the stage's spec | the text files' bytes | the stage's index

Layout: ``<cache>/<stage name>-<key>/{llm.safetensors, stage.json}``, written to a temporary folder
and renamed when complete, so a killed run never leaves half an entry.
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

WEIGHTS = "llm.safetensors"
INFO = "stage.json"


def cacheable(stages: list[StageSpec], index: int) -> bool:
    """Whether stage ``index`` and every stage before it are text-only, LLM-only, without LoRA."""
    return all(
        all(d.format == "text" for d in s.data) and set(s.module_lr) <= {"llm"} and s.lora is None
        for s in stages[: index + 1]
    )


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_key(model: torch.nn.Module, tokenizer: Any, stage: StageSpec, data_root: Path, index: int) -> str:
    """The hash of everything a cacheable stage's result depends on (see the module docstring)."""
    blob = json.dumps(
        {
            "llm": model.llm.config.to_dict(),
            "vocab": sorted(tokenizer.get_vocab().items()),
            "stage": asdict(stage),
            "data": [_file_digest(data_root / d.path) for d in stage.data],
            "index": index,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry(cache: Path, stage: StageSpec, key: str) -> Path:
    return cache / f"{stage.name}-{key}"


def load(model: torch.nn.Module, folder: Path) -> dict[str, Any] | None:
    """Loads a cached stage's LLM weights into ``model.llm``; its stage summary, or None if absent."""
    if not (folder / INFO).is_file() or not (folder / WEIGHTS).is_file():
        return None
    missing, unexpected = load_model(model.llm, folder / WEIGHTS, strict=False)
    if unexpected or [m for m in missing if not _tied(model, m)]:
        raise RuntimeError(
            f"{folder}: cached LLM weights do not fit this model (missing {missing}, unexpected "
            f"{unexpected}); delete the folder to retrain the stage"
        )
    return {**json.loads((folder / INFO).read_text()), "cached": str(folder)}


def _tied(model: torch.nn.Module, name: str) -> bool:
    """Whether ``name`` is a weight the LLM ties to another (saved once)."""
    return bool(getattr(model.llm.config, "tie_word_embeddings", False)) and name.endswith("lm_head.weight")


def store(model: torch.nn.Module, folder: Path, info: dict[str, Any]) -> None:
    """Writes ``model.llm``'s weights and the stage summary atomically."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model.llm, str(tmp / WEIGHTS))
    (tmp / INFO).write_text(json.dumps(info, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
