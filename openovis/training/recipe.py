"""Training recipes: typed, validated dataclasses read from YAML.

A recipe names the model, the run folder and one or more stages; each stage has its data, its
length, batch, schedule and a per-module learning-rate map where 0 (or absence) freezes a module::

    # openovis train recipes/tiny-shapes.yaml
    model:
      preset: tiny
      overrides: {visual_vocab_size: 256}
      tokenizer: {train_on: corpus.txt}      # or a folder / hub id
    data_root: data/shapes
    generate: {source: shapes, config: {seed: 0}}   # (re)generated into data_root when it changes
    stages:
      - name: stage1-captions
        data: [{path: captions_train.jsonl, format: caption}]
        max_steps: 300
        batch_size: 32
        module_lr: {visual_tokenizer.head: 1.0e-3, vte: 1.0e-3}

Relative data paths resolve against ``data_root``. Overrides from the command line use dotted keys:
``stages.0.max_steps=10 seed=3``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from openovis.training.speed import SpeedSpec

MODULE_KEYS = (
    "all",
    "llm",
    "vte",
    "connector",
    "visual_tokenizer",
    "visual_tokenizer.head",
    "visual_tokenizer.backbone",
    "visual_tokenizer.backbone.last_block",
)
"""Names a learning-rate map may use (longest match wins; a parameter matched by none is frozen)."""

DataFormat = Literal["conversation", "caption", "text", "regions"]
Precision = Literal["fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class DataSourceSpec:
    """One data file of a stage's mixture."""

    path: str
    """File (JSON/JSONL conversations, JSONL/parquet captions, plain text lines, or JSONL objects per
    image for a backbone stage: `openovis.training.regions`)."""
    format: DataFormat = "conversation"
    """How the file is read."""
    image_root: str | None = None
    """Folder image paths are relative to (default: ``data_root``)."""
    weight: float = 1.0
    """Sampling weight in the mixture."""
    max_samples: int | None = None
    """Use at most this many samples of the file."""


@dataclass(frozen=True)
class TokenizerTrainingSpec:
    """A byte-level BPE trained on a text file of the data, for LLMs trained from scratch."""

    train_on: str
    """Text file, one sample per line, relative to ``data_root`` (e.g. a generated ``corpus.txt``)."""
    vocab_size: int = 1024
    """Exact vocabulary size, the specials and the 256 byte symbols included."""
    folder: str | None = None
    """Where to save it; one already there is reused (default: ``<output_dir>/tokenizer``)."""


@dataclass(frozen=True)
class GeneratedDataSpec:
    """A dataset generated from code into ``data_root`` before training, and again when its config changes."""

    source: str
    """A registered generator (`openovis.data.generated.GENERATORS`), e.g. ``shapes``."""
    config: dict[str, Any] = field(default_factory=dict)
    """The generator's settings (for ``shapes``: `ShapesConfig` fields)."""

    def __post_init__(self) -> None:
        from openovis.data.generated import generator_config

        try:
            generator_config(self.source, self.config)
        except ValueError as e:
            raise ValueError(f"generate.{e}") from None


@dataclass(frozen=True)
class ModelSpec:
    """Where the model of the first stage comes from."""

    preset: str | None = "tiny"
    """A registered preset (see `openovis models`)."""
    checkpoint: str | None = None
    """A folder saved by `save_pretrained` (instead of a preset)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """OvisConfig field overrides for the preset (``vision``/``text`` dicts for sub-configs)."""
    tokenizer: str | TokenizerTrainingSpec | None = None
    """Tokenizer folder or hub id, or ``{train_on: FILE}`` to train one on the data (default: the
    checkpoint's). Required with a preset unless ``llm_path`` is given (then its tokenizer is the default)."""
    vision_path: str | None = None
    """Pretrained vision backbone (hub id or folder)."""
    llm_path: str | None = None
    """Pretrained LLM (hub id or folder)."""

    def __post_init__(self) -> None:
        if self.tokenizer == "shapes":  # what older recipes wrote
            raise ValueError(
                "model.tokenizer: 'shapes' is not a tokenizer; train one on the data's text with "
                "tokenizer: {train_on: corpus.txt}"
            )


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters on the LLM (and optionally the backbone), merged when the stage saves."""

    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Adapter dropout."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Linear layer names that get adapters."""
    on_backbone: bool = False
    """Also adapt the vision backbone (its names must match ``target_modules``)."""


@dataclass(frozen=True)
class StageSpec:
    """One training stage."""

    name: str
    """Folder name of the stage inside the run."""
    data: list[DataSourceSpec]
    """The stage's mixture."""
    module_lr: dict[str, float]
    """Learning rate per module (keys from `MODULE_KEYS`); 0 or absent freezes."""
    max_steps: int = 100
    """Optimizer steps."""
    batch_size: int = 8
    """Samples per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    warmup_ratio: float = 0.03
    """Fraction of steps of linear warmup before the cosine decay."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine schedule, as a fraction of each module's rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    max_length: int = 512
    """Longest sequence in tokens (text is truncated, images never cut)."""
    reinit_last_block: bool = False
    """Re-initialize the backbone's last block first (the paper's stage 1)."""
    lora: LoraSpec | None = None
    """Train LoRA adapters instead of the LLM's full weights."""
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end of the stage)."""
    log_every: int = 10
    """Progress/log interval in steps."""


@dataclass(frozen=True)
class Recipe:
    """A whole training run."""

    stages: list[StageSpec]
    """Stages in order; each starts from the previous one's weights."""
    model: ModelSpec = field(default_factory=ModelSpec)
    """The model of the first stage."""
    data_root: str = "."
    """Folder relative data paths resolve against."""
    output_dir: str = "runs/default"
    """Run folder: checkpoints, logs, plots, final models."""
    seed: int = 0
    """Seed of initialization, data order and noise."""
    precision: Precision = "fp32"
    """Autocast precision (bf16 on GPUs, fp32 on CPU)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward to save memory."""
    speed: SpeedSpec = field(default_factory=SpeedSpec)
    """Training-speed levers: compile, activation checkpointing, packing (`openovis.training.speed`)."""
    num_workers: int = 0
    """DataLoader workers per process."""
    generate: GeneratedDataSpec | None = None
    """A dataset to generate into ``data_root`` first (when missing or made with another config)."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Loggers: tensorboard, wandb (each used when installed)."""
    stage_cache: str | None = None
    """Folder shared by runs for text-only LLM stages at the start of a recipe (e.g. a from-scratch
    stage 0): trained once per data, LLM config, tokenizer and stage spec, then loaded by every run
    that would train it the same way (`openovis.training.stage_cache`). None: always train."""
    processing: dict[str, Any] = field(default_factory=dict)
    """Processor settings saved with the model, e.g. ``{max_image_pixels: 40000000, max_length: 4096}``
    (ImageProcessingConfig fields or OvisProcessor arguments)."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages: a recipe needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: stage names must be unique, got {names}")
        if (self.model.preset is None) == (self.model.checkpoint is None):
            raise ValueError("model: give exactly one of preset or checkpoint")
        for i, stage in enumerate(self.stages):
            _check_stage(stage, f"stages.{i}")
        if self.model.preset is not None and self.model.tokenizer is None and self.model.llm_path is None:
            raise ValueError(
                "model.tokenizer: a preset model needs a tokenizer: a folder or hub id, or "
                "{train_on: FILE} to train one on a text file of the data, e.g. {train_on: corpus.txt} "
                "(or give model.llm_path to use the LLM's own)"
            )
        _check_processing(self.processing)


def _check_processing(processing: dict[str, Any]) -> None:
    from openovis.processing.image import ImageProcessingConfig
    from openovis.processing.processor import _PROCESSOR_KEYS

    known = {*ImageProcessingConfig.__dataclass_fields__, *_PROCESSOR_KEYS}
    for key in processing:
        if key not in known:
            raise ValueError(f"processing.{key}: unknown setting; known: {', '.join(sorted(known))}")


def _check_stage(stage: StageSpec, where: str) -> None:
    for key, lr in stage.module_lr.items():
        if key not in MODULE_KEYS:
            raise ValueError(f"{where}.module_lr.{key}: unknown module; use one of {', '.join(MODULE_KEYS)}")
        if lr < 0:
            raise ValueError(f"{where}.module_lr.{key}: learning rate must be >= 0, got {lr}")
    if not any(lr > 0 for lr in stage.module_lr.values()):
        raise ValueError(f"{where}.module_lr: every module is frozen; give at least one rate > 0")
    if not stage.data:
        raise ValueError(f"{where}.data: a stage needs at least one data source")
    for name in ("max_steps", "batch_size", "grad_accum", "max_length"):
        if getattr(stage, name) < 1:
            raise ValueError(f"{where}.{name}: must be >= 1, got {getattr(stage, name)}")
    if not 0 <= stage.warmup_ratio < 1:
        raise ValueError(f"{where}.warmup_ratio: must be in [0, 1), got {stage.warmup_ratio}")
    _check_regions_stage(stage, where)


def _check_regions_stage(stage: StageSpec, where: str) -> None:
    """A stage with ``format: regions`` data trains the backbone alone on them (`openovis.training.regions`)."""
    formats = {d.format for d in stage.data}
    if "regions" not in formats:
        return
    if formats != {"regions"}:
        raise ValueError(
            f"{where}.data: regions files cannot be mixed with {sorted(formats - {'regions'})} data"
        )
    others = [
        k for k, lr in stage.module_lr.items() if lr > 0 and not k.startswith("visual_tokenizer.backbone")
    ]
    if others:
        raise ValueError(
            f"{where}.module_lr: a regions stage trains only visual_tokenizer.backbone (or its last_block), "
            f"got {others}"
        )
    if stage.lora is not None:
        raise ValueError(f"{where}.lora: a regions stage trains the backbone's own weights, not adapters")


# ---- parsing -------------------------------------------------------------------------------------
RENAMED = {
    ("Recipe", "shapes"): "generated data is now declared as generate: {source: shapes, config: {...}}",
}
"""Fields of older recipes, with what replaces them (named in the error)."""


def parse(cls: type, data: Any, where: str) -> Any:
    """Builds dataclass ``cls`` from plain data, naming the path of any bad field."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        name = sorted(unknown)[0]
        hint = f" ({RENAMED[cls.__name__, name]})" if (cls.__name__, name) in RENAMED else ""
        raise ValueError(f"{_join(where, name)}: unknown field{hint}; known: {', '.join(sorted(fields))}")
    kwargs = {k: _value(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required field
        raise ValueError(f"{where or 'recipe'}: {e}") from None


def _value(hint: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, where)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        return [parse(args[0], v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is Literal and value not in args:
        raise ValueError(f"{where}: must be one of {args}, got {value!r}")
    if value is None or origin is not None and type(None) in args:  # Optional[...], maybe a union
        inner = [a for a in args if a is not type(None)]
        classes = [a for a in inner if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(classes) == 1:  # a mapping is the union's dataclass
            return parse(classes[0], value, where)
        if value is not None and inner == classes:
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return value
    if hint is float:
        return _number(value, where)
    if origin is dict and args == (str, float):  # e.g. module_lr: every value a number
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return {k: _number(v, _join(where, str(k))) for k, v in value.items()}
    if hint in (int, str, bool) and not isinstance(value, hint):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    """A float field's value; text is accepted, as YAML 1.1 reads ``1e-3`` (no dot) as a string."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    raise ValueError(f"{where}: expected a number, got {value!r}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


DOTTED_KEYS = frozenset({"module_lr"})
"""Mappings whose keys are dotted module paths: in an override, what follows them is one key."""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies ``a.b.0.c=value`` overrides (values parsed as YAML) to nested plain data.

    Under a `DOTTED_KEYS` mapping the rest of the path is one key:
    ``stages.0.module_lr.visual_tokenizer.head=3e-3`` sets the rate of ``visual_tokenizer.head``.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        node: Any = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part in DOTTED_KEYS:
                parts = [*parts[: i + 1], ".".join(parts[i + 1 :])]
                break
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        last = parts[-1]
        value = yaml.safe_load(raw)
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
"""Recipes shipped with the package (``recipes/`` in the repository links here)."""


def shipped_recipes() -> dict[str, Path]:
    """Name -> path of every shipped recipe."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Reads a recipe YAML (a path, or the name of a shipped recipe), applies overrides and validates it."""
    path = Path(path)
    if not path.exists() and str(path) in shipped_recipes():
        path = shipped_recipes()[str(path)]
    if not path.exists():
        raise FileNotFoundError(
            f"recipe {path} does not exist; shipped recipes: {', '.join(shipped_recipes())}"
        )
    data = yaml.safe_load(path.read_text()) or {}
    data = apply_overrides(data, overrides or [])
    return parse(Recipe, data, "")
