"""A vision stage 0: the backbone learns what object lies under each visual token.

The paper starts from a pretrained ViT; a from-scratch demo has none, and an end-to-end model
trained from a random ViT learns colour (a linear feature) but hardly shape. A stage whose data are
``format: regions`` files stands in for the pretrained ViT: the backbone alone learns to classify
the attributes (colour, shape, size, …) of the object under each visual token, with one throwaway
linear head per attribute, and the heads are discarded at the end of the stage.

A regions file is JSONL, one image per line, with the objects' centres in the image's pixels and
any number of string attributes (Shapes World's ``scenes_train.jsonl`` is one)::

    {"image": "images/train/000000.png",
     "objects": [{"x": 40.3, "y": 8.1, "color": "green", "shape": "circle", "size": "large"}, ...]}

Every string field of an object but ``region`` (a name for its position) is an attribute. The image
is letterboxed into one ``S x S`` crop (the thumbnail the processor makes); each of its
``(S / (patch · s))²`` visual tokens is labelled with the attributes of the object whose centre
lies inside it, or ``none``. The features of a token are the mean of its ``s x s`` patch features
(what the backbone returns, before the connector merges them), so the stage is about the backbone
only and serves any connector. A token where two objects disagree on an attribute is not scored on
it. A missing or corrupt image is skipped and counted like everywhere else.

Such a stage depends only on the data, the backbone's config and its own settings, so a stage cache
(`openovis.training.stage_cache`) trains it once for a demo's two connectors, an ablation grid and
all their seeds. A run killed inside it starts it again (it is short).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from openovis.modeling.backbone import backbone_features
from openovis.processing.image import (
    ImageProcessingConfig,
    letterbox,
    letterbox_size,
    load_image,
    resolve_image_path,
)
from openovis.skips import SkippedSample, SkipSample
from openovis.training.loop import IndexStream, SkipTally, StageResult, TrainingDiverged, cosine_schedule
from openovis.training.param_groups import param_groups
from openovis.training.recipe import StageSpec

NOT_ATTRIBUTES = frozenset({"x", "y", "region"})
"""Object fields that are not attributes: the centre, and a name for where it is."""

NONE = "none"
"""Class 0 of every attribute: no object under the token."""

IGNORE = -100
"""Label of a token where two objects disagree on an attribute."""


def is_regions_stage(stage: StageSpec) -> bool:
    """Whether the stage trains the backbone on regions files (every source ``format: regions``)."""
    return all(d.format == "regions" for d in stage.data)


@dataclass(frozen=True)
class RegionRecord:
    """One line of a regions file."""

    image: str
    objects: list[dict[str, Any]]
    where: str
    """``file:line``, for errors."""


def read_regions(path: Path) -> list[RegionRecord]:
    """The records of a regions file; a malformed line raises, naming ``file:line`` and the field."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: regions file not found")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise ValueError(f"{where}: image: expected an image path")
        objects = row.get("objects")
        if not isinstance(objects, list):
            raise ValueError(f"{where}: objects: expected a list")
        for k, obj in enumerate(objects):
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: objects.{k}: expected a mapping")
            for axis in ("x", "y"):
                value = obj.get(axis)
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    raise ValueError(
                        f"{where}: objects.{k}.{axis}: expected the centre in pixels, got {value!r}"
                    )
        records.append(RegionRecord(row["image"], objects, where))
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def attribute_vocabulary(records: Sequence[RegionRecord]) -> dict[str, list[str]]:
    """Attribute name -> its classes (``none`` first, then the values in sorted order)."""
    values: dict[str, set[str]] = {}
    for record in records:
        for obj in record.objects:
            for key, value in obj.items():
                if key not in NOT_ATTRIBUTES and isinstance(value, str):
                    values.setdefault(key, set()).add(value)
    if not values:
        raise ValueError(f"{records[0].where}: the objects have no string attributes to learn")
    return {name: [NONE, *sorted(v)] for name, v in sorted(values.items())}


class RegionsDataset(Dataset):
    """Letterboxed crops ``[3, S, S]`` and per-token labels ``[T, A]`` of regions files."""

    def __init__(
        self,
        records: Sequence[RegionRecord],
        image_roots: Sequence[Path],
        vocabulary: dict[str, list[str]],
        image_config: ImageProcessingConfig,
        tokens_per_side: int,
    ) -> None:
        self.records, self.roots = list(records), list(image_roots)
        self.vocabulary, self.cfg, self.side = vocabulary, image_config, tokens_per_side
        self.index = {name: {v: i for i, v in enumerate(classes)} for name, classes in vocabulary.items()}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor] | SkippedSample:
        record = self.records[i]
        try:
            image = load_image(resolve_image_path(self.roots[i], record.image), self.cfg.max_image_pixels)
        except SkipSample as skip:
            return SkippedSample(i, skip.reason, skip.detail)
        pixels = torch.from_numpy(letterbox(image, self.cfg))
        return {"pixel_values": pixels, "labels": self.labels(record, image.width, image.height)}

    def labels(self, record: RegionRecord, width: int, height: int) -> torch.Tensor:
        """``[T, A]`` class indices (0: no object; `IGNORE`: objects that disagree)."""
        side, size = self.side, self.cfg.image_size
        new_w, new_h = letterbox_size(width, height, size)
        left, top = (size - new_w) // 2, (size - new_h) // 2
        labels = torch.zeros(side * side, len(self.vocabulary), dtype=torch.long)
        seen = torch.zeros(side * side, dtype=torch.bool)
        for obj in record.objects:
            x = left + obj["x"] * new_w / width
            y = top + obj["y"] * new_h / height
            col, row = int(x * side // size), int(y * side // size)
            if not (0 <= col < side and 0 <= row < side):
                continue
            token = row * side + col
            new = torch.tensor(
                [self.index[name].get(obj.get(name), IGNORE) for name in self.vocabulary], dtype=torch.long
            )
            if seen[token]:
                new = torch.where(labels[token] == new, new, torch.full_like(new, IGNORE))
            labels[token], seen[token] = new, True
        return labels


def collate_regions(samples: Sequence[dict[str, torch.Tensor] | SkippedSample]) -> dict[str, Any]:
    """Stacks kept samples; reports skipped ones like `OvisCollator` (``skipped``, ``num_samples``)."""
    kept = [s for s in samples if not isinstance(s, SkippedSample)]
    skipped: dict[str, int] = {}
    for s in samples:
        if isinstance(s, SkippedSample):
            skipped[s.reason.value] = skipped.get(s.reason.value, 0) + 1
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in kept]) if kept else None,
        "labels": torch.stack([s["labels"] for s in kept]) if kept else None,
        "num_samples": len(samples),
        "skipped": skipped,
    }


class RegionHeads(nn.Module):
    """One linear classifier per attribute on pooled token features; the stage's loss and accuracy."""

    def __init__(self, hidden_size: int, vocabulary: dict[str, list[str]]) -> None:
        super().__init__()
        self.names = list(vocabulary)
        self.heads = nn.ModuleList(nn.Linear(hidden_size, len(c)) for c in vocabulary.values())

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean cross-entropy over attributes; accuracy per attribute on tokens that show an object."""
        losses, accuracy = [], {}
        for a, (name, head) in enumerate(zip(self.names, self.heads, strict=True)):
            target = labels[..., a].flatten()
            logits = head(features).flatten(0, 1).float()
            losses.append(F.cross_entropy(logits, target, ignore_index=IGNORE))
            scored = target > 0
            if scored.any():
                accuracy[name] = float((logits.argmax(-1)[scored] == target[scored]).float().mean())
        return torch.stack(losses).mean(), accuracy


def token_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """``[B, T, d]``: the backbone's patch features averaged over each visual token's ``s x s`` patches."""
    config = model.config
    features = backbone_features(
        model.visual_tokenizer.backbone, pixel_values, config.patch_size, config.backbone_feature
    )
    b, p, d = features.shape
    grid, s = math.isqrt(p), config.hidden_stride
    pooled = features.view(b, grid // s, s, grid // s, s, d).mean(dim=(2, 4))
    return pooled.reshape(b, -1, d)


def check_regions_stage(model: nn.Module, stage: StageSpec, where: str) -> None:
    """What a regions stage needs of the model (the recipe checks the stage itself): square crops
    whose side is a whole number of visual tokens."""
    if model.config.native_resolution:
        raise ValueError(f"{where}: a regions stage needs a fixed-size crop backbone, not a NaViT one")
    image_size, patch, s = (
        model.config.vision_config.image_size,
        model.config.patch_size,
        model.config.hidden_stride,
    )
    if image_size % (patch * s):
        raise ValueError(f"{where}: image_size {image_size} is not a multiple of patch_size x hidden_stride")


def regions_dataset(
    stage: StageSpec, model: nn.Module, image_config: ImageProcessingConfig, data_root: Path
) -> RegionsDataset:
    """The stage's regions files as one dataset (``max_samples`` as in other mixtures; ``weight`` repeats a
    file a whole number of times, at least once)."""
    records, roots = [], []
    for source in stage.data:
        rows = read_regions(data_root / source.path)[: source.max_samples]
        repeat = max(1, round(source.weight))  # integer repeats: a weight below 1 keeps the file once
        records += rows * repeat
        roots += [data_root / (source.image_root or ".")] * (len(rows) * repeat)
    side = math.isqrt(image_config.tokens_per_crop)
    return RegionsDataset(records, roots, attribute_vocabulary(records), image_config, side)


def train_regions_stage(
    accelerator: Any,
    model: nn.Module,
    stage: StageSpec,
    dataset: RegionsDataset,
    *,
    seed: int,
    num_workers: int = 0,
    progress: bool = True,
) -> StageResult:
    """Trains the backbone (in place) on per-token attribute labels; the heads are thrown away.

    Every process trains the same steps on the same data (the stage is short and the next stage's
    wrapper starts from rank 0's weights). ``StageResult.tokens`` counts images.
    """
    device = accelerator.device
    torch.manual_seed(seed)
    heads = RegionHeads(model.config.vision_config.hidden_size, dataset.vocabulary).to(device)
    groups = param_groups(model, stage.module_lr, stage.weight_decay)
    top = max(stage.module_lr.values())
    groups.append({"params": list(heads.parameters()), "lr": top, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    warmup = max(1, int(stage.warmup_ratio * stage.max_steps)) if stage.warmup_ratio > 0 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_schedule(s, stage.max_steps, warmup, stage.min_lr_ratio)
    )
    stream = IndexStream(len(dataset), stage.batch_size * stage.grad_accum, seed)
    batches = iter(
        DataLoader(dataset, batch_sampler=stream, collate_fn=collate_regions, num_workers=num_workers)
    )
    trainable = [p for g in groups for p in g["params"]]
    skips = SkipTally({})
    losses: list[float] = []
    recent: dict[str, list[float]] = {}
    model.train()
    bar = tqdm(total=stage.max_steps, desc=stage.name, disable=not (progress and accelerator.is_main_process))
    start, images = time.perf_counter(), 0
    while len(losses) < stage.max_steps:
        batch = next(batches)
        skips.add(batch)
        if batch["pixel_values"] is None:
            continue  # every image of this batch was skipped (and counted)
        with accelerator.autocast():
            features = token_features(model, batch["pixel_values"].to(device, model.dtype))
            loss, accuracy = heads(features.float(), batch["labels"].to(device))
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDiverged(f"{stage.name}: loss is {value} at step {len(losses) + 1}; lower the rate")
        loss.backward()
        if stage.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, stage.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(value)
        images += batch["pixel_values"].shape[0]
        for name, acc in accuracy.items():
            recent.setdefault(name, []).append(acc)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", **{k: f"{v[-1]:.2f}" for k, v in recent.items()})
        if len(losses) % stage.log_every == 0 or len(losses) == stage.max_steps:
            logged = {"loss": value, **{f"accuracy/{k}": v[-1] for k, v in recent.items()}}
            accelerator.log({f"{stage.name}/{k}": v for k, v in logged.items()}, step=len(losses))
    bar.close()
    for p in model.parameters():
        p.requires_grad_(True)
    window = max(1, stage.max_steps // 10)
    accuracy = {k: round(sum(v[-window:]) / len(v[-window:]), 4) for k, v in recent.items()}
    return StageResult(
        losses, time.perf_counter() - start, images, skips.counts, metrics={"region_accuracy": accuracy}
    )
