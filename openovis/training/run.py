"""`train(recipe)`: sets up data, tokenizer, model and accelerator, then runs the stages in order.

The trainer knows no data set by name: a recipe may declare a generated data set
(``generate: {source, config}``, see `openovis.data.generated`) and a tokenizer trained on a text
file of the data; everything else is files under ``data_root``.

Run folder layout::

    <output_dir>/tokenizer/                 (when the recipe trains one: ``tokenizer: {train_on: FILE}``)
    <output_dir>/<stage>/checkpoints/step-N (resumable state, newest two kept)
    <output_dir>/<stage>/final/             (save_pretrained model + processor: load, chat, evaluate)
    <output_dir>/<stage>/loss.png, losses.json, stage_done.json
    <output_dir>/logs/                      (TensorBoard)
    <output_dir>/summary.json
    <stage_cache>/<stage>-<key>/            (text-LLM and regions-backbone stages shared between runs)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from openovis.inference import load_model
from openovis.integrity import write_manifest
from openovis.training import stage_cache
from openovis.training.checkpoint import mark_stage_done, stage_done
from openovis.training.distributed import (
    check_stage_supported,
    forced_config,
    parameters_sharded,
    saved_final_model,
)
from openovis.training.loop import StageResult, train_stage
from openovis.training.recipe import Recipe, StageSpec, TokenizerTrainingSpec
from openovis.training.regions import (
    check_regions_stage,
    is_regions_stage,
    regions_dataset,
    train_regions_stage,
)

logger = logging.getLogger(__name__)


def _accelerator(recipe: Recipe) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    trackers = [t for t in recipe.report_to if _tracker_available(t)]
    precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[recipe.precision]
    return Accelerator(
        cpu=not torch.cuda.is_available(),  # also what lets torchrun start multi-process CPU (gloo) runs
        mixed_precision=precision,
        # The schedule counts optimizer steps; accelerate would otherwise step it once per process.
        step_scheduler_with_optimizer=False,
        log_with=trackers or None,
        project_config=ProjectConfiguration(
            project_dir=recipe.output_dir, logging_dir=f"{recipe.output_dir}/logs"
        ),
    )


def _tracker_available(name: str) -> bool:
    module = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}.get(name)
    if module is None:
        raise ValueError(f"report_to: unknown logger {name!r}; use tensorboard or wandb")
    try:
        __import__(module)
    except ImportError:
        logger.warning("report_to: %s is not installed; not logging to it", name)
        return False
    return True


def prepare_data_root(recipe: Recipe, accelerator: Any, progress: bool = True) -> Path:
    """``data_root``, with the recipe's generated dataset written there first when it is missing or stale."""
    root = Path(recipe.data_root)
    if recipe.generate is None:
        return root
    from openovis.data.generated import generate_if_changed

    if accelerator.is_main_process:
        generate_if_changed(root, recipe.generate.source, recipe.generate.config, progress=progress)
    accelerator.wait_for_everyone()
    return root


def prepare_tokenizer(recipe: Recipe, data_root: Path, accelerator: Any) -> Any:
    """The recipe's tokenizer: trained on a text file of the data (``{train_on: FILE}``), or loaded."""
    from transformers import AutoTokenizer

    spec = recipe.model.tokenizer
    if isinstance(spec, TokenizerTrainingSpec):
        folder = Path(spec.folder) if spec.folder else Path(recipe.output_dir) / "tokenizer"
        if not (folder / "tokenizer.json").exists():
            if accelerator.is_main_process:
                from openovis.data.text_tokenizer import tokenizer_from_corpus

                tokenizer_from_corpus(data_root / spec.train_on, spec.vocab_size, out_dir=folder)
            accelerator.wait_for_everyone()
        return AutoTokenizer.from_pretrained(folder)
    if spec is None and recipe.model.checkpoint:
        return AutoTokenizer.from_pretrained(recipe.model.checkpoint)
    if spec is None and recipe.model.llm_path:  # the pretrained LLM's own tokenizer
        return AutoTokenizer.from_pretrained(recipe.model.llm_path)
    if spec is None:
        return None
    return AutoTokenizer.from_pretrained(spec)


def build_initial_model(
    recipe: Recipe, tokenizer: Any, forced: dict[str, Any] | None = None
) -> torch.nn.Module:
    """The recipe's starting model; ``forced`` config values (see `forced_config`) win over the recipe's."""
    from openovis.builders import build_model

    spec = recipe.model
    if spec.checkpoint:
        return load_model(spec.checkpoint, config_overrides=forced)
    overrides = {**spec.overrides, **(forced or {})}
    return build_model(
        spec.preset, tokenizer=tokenizer, vision_path=spec.vision_path, llm_path=spec.llm_path, **overrides
    )


def build_processor(recipe: Recipe, model: torch.nn.Module, tokenizer: Any) -> Any:
    from openovis.builders import get_preset
    from openovis.processing.processor import OvisProcessor

    if recipe.model.checkpoint and (Path(recipe.model.checkpoint) / "processor_config.json").exists():
        return OvisProcessor.from_pretrained(recipe.model.checkpoint, **recipe.processing)
    preset = get_preset(recipe.model.preset or "tiny")
    stats = {"image_mean": preset.image_mean, "image_std": preset.image_std}
    overrides = {"max_partition": preset.max_partition, **recipe.processing}
    return OvisProcessor.from_model_config(model.config, tokenizer, image_stats=stats, **overrides)


def stage_dataset(stage: StageSpec, processor: Any, data_root: Path, seed: int) -> Any:
    """The stage's mixture as one dataset (text files for LM pretraining, the rest via the processor)."""
    from openovis.data.text import TextLinesDataset

    if all(s.format == "text" for s in stage.data):
        if len(stage.data) != 1:
            raise ValueError(f"stages.{stage.name}.data: use one text file per text stage")
        src = stage.data[0]
        return TextLinesDataset(data_root / src.path, processor.tokenizer, stage.max_length, src.max_samples)
    if any(s.format == "text" for s in stage.data):
        raise ValueError(f"stages.{stage.name}.data: text files cannot be mixed with image data")
    from openovis.data.datasets import build_mixture

    sources = [
        {**asdict(s), "image_root": str(data_root / (s.image_root or ".")), "path": str(data_root / s.path)}
        for s in stage.data
    ]
    return build_mixture(sources, processor, max_length=stage.max_length, seed=seed)


def train(recipe: Recipe, resume: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Runs every stage of a recipe; returns the summary also written to ``summary.json``.

    Args:
        recipe: The validated recipe.
        resume: ``auto`` continues from the newest checkpoint of the run folder, None starts fresh.
        progress: Show progress bars.
    """
    from accelerate.utils import set_seed

    from openovis.processing.collator import OvisCollator
    from openovis.processing.packing import PackingCollator
    from openovis.training.param_groups import reinit_last_block
    from openovis.training.speed import apply_speed_levers

    if resume not in (None, "auto"):
        raise ValueError(f"resume: use 'auto' (continue the run in output_dir), got {resume!r}")
    out = Path(recipe.output_dir)
    accelerator = _accelerator(recipe)
    set_seed(recipe.seed)
    data_root = prepare_data_root(recipe, accelerator, progress)
    tokenizer = prepare_tokenizer(recipe, data_root, accelerator)
    forced = forced_config(accelerator)  # e.g. the VET and loss paths ZeRO-3 can gather
    model = build_initial_model(recipe, tokenizer, forced)
    processor = build_processor(recipe, model, tokenizer)
    if recipe.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    accelerator.init_trackers("openovis")
    summary: dict[str, Any] = {"stages": []}
    t0, previous_key = time.perf_counter(), ""
    for i, stage in enumerate(recipe.stages):
        stage_dir = out / stage.name
        if resume and stage_done(stage_dir):
            model = load_model(stage_dir / "final", config_overrides=forced)
            summary["stages"].append(json.loads((stage_dir / "stage_done.json").read_text()))
            continue
        cached = None
        if recipe.stage_cache and stage_cache.cacheable(recipe.stages, i):
            key = stage_cache.stage_key(model, processor, stage, data_root, i, previous_key)
            cached, previous_key = stage_cache.entry(Path(recipe.stage_cache), stage, key), key
            hit = stage_cache.load(model, stage, cached)
            if hit is not None:
                accelerator.print(f"{stage.name}: reused from the stage cache ({cached})")
                summary["stages"].append(hit)
                continue
        set_seed(recipe.seed + i)
        if stage.reinit_last_block and not (resume and (stage_dir / "checkpoints").exists()):
            reinit_last_block(model)
        if is_regions_stage(stage):  # the backbone alone, on per-token attributes
            check_regions_stage(model, stage, f"stages.{i}")
            images = regions_dataset(stage, model, processor.image_processor.image_config, data_root)
            result = train_regions_stage(
                accelerator,
                model,
                stage,
                images,
                seed=recipe.seed + i,
                num_workers=recipe.num_workers,
                progress=progress,
            )
        else:
            dataset = stage_dataset(stage, processor, data_root, recipe.seed + i)
            collate = OvisCollator.from_processor(processor, "right")
            if recipe.speed.pack_length:  # speed levers (openovis/training/speed.py)
                collate = PackingCollator.from_processor(processor, recipe.speed.pack_length)
            apply_speed_levers(model, recipe.speed)
            check_stage_supported(accelerator, stage.lora is not None)
            model, lora = _maybe_lora(model, stage)
            result = train_stage(
                accelerator,
                model,
                stage,
                stage_dir,
                dataset,
                collate,
                seed=recipe.seed + i,
                num_workers=recipe.num_workers,
                resume=resume is not None,
                progress=progress,
            )
            if parameters_sharded(accelerator):
                summary["stages"].append(
                    _finish_sharded_stage(accelerator, processor, stage, stage_dir, result)
                )
                # The next stage starts from the gathered weights as a plain module, sharded afresh.
                model = load_model(stage_dir / "final", config_overrides=forced)
                continue
            result.prepared = None  # the wrapper is not needed past here; let it be freed
            model = _unwrap(accelerator, model, lora)
        summary["stages"].append(_finish_stage(accelerator, model, processor, stage, stage_dir, result))
        if cached is not None:
            if accelerator.is_main_process:
                stage_cache.store(model, stage, cached, summary["stages"][-1], result.losses)
            accelerator.wait_for_everyone()
    summary["seconds"] = time.perf_counter() - t0
    summary["final_model"] = str(out / recipe.stages[-1].name / "final")
    if accelerator.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.end_training()
    return summary


def _maybe_lora(model: torch.nn.Module, stage: StageSpec) -> tuple[torch.nn.Module, bool]:
    if stage.lora is None:
        return model, False
    from openovis.training.lora import add_lora

    return add_lora(model, stage.lora), True


def _unwrap(accelerator: Any, model: torch.nn.Module, lora: bool) -> torch.nn.Module:
    model = accelerator.unwrap_model(model)
    accelerator.free_memory()
    if lora:
        from openovis.training.lora import merge_lora

        model = merge_lora(model)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _finish_sharded_stage(
    accelerator: Any, processor: Any, stage: StageSpec, stage_dir: Path, result: StageResult
) -> dict[str, Any]:
    """`_finish_stage` for FSDP / ZeRO-3: the weights are gathered first (every process takes part)."""
    model, state_dict = saved_final_model(accelerator, result.prepared, stage_dir / "final")
    result.prepared = None
    accelerator.free_memory()
    return _finish_stage(accelerator, model, processor, stage, stage_dir, result, state_dict)


def _finish_stage(
    accelerator: Any,
    model: torch.nn.Module,
    processor: Any,
    stage: StageSpec,
    stage_dir: Path,
    result: StageResult,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Saves the stage's final model + processor, its loss curve and a one-line summary.

    ``state_dict``: the gathered weights when the model's own are sharded (`saved_final_model`).
    """
    from openovis.plots import plot_losses

    losses = result.losses
    head = sum(losses[: max(1, len(losses) // 10)]) / max(1, len(losses[: max(1, len(losses) // 10)]))
    tail = sum(losses[-max(1, len(losses) // 10) :]) / max(1, len(losses[-max(1, len(losses) // 10) :]))
    info = {
        "stage": stage.name,
        "steps": len(losses),
        "first_loss": head,
        "final_loss": tail,
        "seconds": round(result.seconds, 2),
        "tokens": result.tokens,
        "tokens_per_s": round(result.tokens / max(result.seconds, 1e-9), 1),
        "skips": result.skips,
        **result.metrics,
    }
    if accelerator.is_main_process:
        final = stage_dir / "final"
        model.generation_config.update(**processor.generation_defaults())  # stop on <|im_end|> and eos
        model.save_pretrained(final, state_dict=state_dict)  # official names via the conversion mapping
        processor.save_pretrained(final)
        write_manifest(final)
        (stage_dir / "losses.json").write_text(json.dumps(losses))
        plot_losses(losses, stage_dir / "loss.png", title=stage.name)
        mark_stage_done(stage_dir, info)
        skipped = sum(result.skips.get("skipped", {}).values())
        accelerator.print(
            f"{stage.name}: {len(losses)} steps in {result.seconds:.1f}s, loss {head:.4f} -> {tail:.4f}, "
            f"{info['tokens_per_s']:,.0f} {'images' if is_regions_stage(stage) else 'tok'}/s, skipped {skipped} "
            f"of {result.skips.get('total', 0)} samples"
        )
    accelerator.wait_for_everyone()
    return info
