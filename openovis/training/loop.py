"""The training loop: one visible loop on `accelerate`, run once per stage.

Per optimizer step: fetch ``grad_accum`` micro-batches, count the supervised tokens of the whole
global batch (all micro-batches, all processes), and backpropagate each micro-batch's
``sum of token losses / global token count``. The gradient is then exactly the token-mean gradient
of the global batch, whatever the split over processes and micro-batches, so a 2-process run and a
1-process run with the same global batch take the same steps.

Data order is a seeded stream of sample indices; step t consumes the same global slice of it for
any number of processes, which is also what makes resuming exact.

Every ``log_every`` steps the loss, learning rate and throughput go to the trackers, with cheap
monitors of the visual vocabulary (`monitor_statistics`; the numerics are
`openovis.modeling.visual_words`): the RMS row norms of the VET and of the LLM's input embeddings,
and the mean entropy and effective vocabulary of the visual-word distributions of a few crops of the
step's last micro-batch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from openovis.constants import IGNORE_INDEX
from openovis.integrity import CheckpointError
from openovis.modeling.visual_words import (
    effective_vocabulary,
    rms_row_norm,
    token_entropy,
    visual_table,
    visual_word_probabilities,
)
from openovis.processing.collator import model_inputs
from openovis.training.checkpoint import (
    TrainerState,
    latest_checkpoint,
    latest_verified_checkpoint,
    save_checkpoint,
)
from openovis.training.distributed import parameters_sharded
from openovis.training.lora import trainable_under_lora
from openovis.training.param_groups import param_groups
from openovis.training.recipe import StageSpec

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint on disk is intact."""


class IndexStream:
    """Per-process micro-batches of sample indices from one seeded global stream.

    Epoch e is a permutation of ``range(n)`` drawn from ``seed + e``; micro-batch m of the run is the
    global slice ``[m·B·W, (m+1)·B·W)`` of the concatenated epochs, of which process r takes
    ``[r·B, (r+1)·B)``. ``start`` (in micro-batches) resumes the stream mid-epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        if n < 1:
            raise ValueError("the stage's dataset is empty")
        self.n, self.batch_size, self.seed, self.rank, self.world, self.start = (
            n,
            batch_size,
            seed,
            rank,
            world,
            start,
        )

    def _global(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        return int(self._permutation(epoch)[offset])

    def _permutation(self, epoch: int) -> torch.Tensor:
        if getattr(self, "_epoch", None) != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def __iter__(self) -> Iterator[list[int]]:
        micro = self.start
        while True:
            base = micro * self.batch_size * self.world + self.rank * self.batch_size
            yield [self._global(base + i) for i in range(self.batch_size)]
            micro += 1


def cosine_schedule(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class StageResult:
    """What a finished stage reports."""

    losses: list[float]
    """Loss of every step of the stage."""
    seconds: float
    """Wall time of this run of the stage (after a resume: since the resume)."""
    tokens: int
    """Input tokens processed in that time, all processes."""
    skips: dict[str, Any]
    """Skip counts of the data pipeline."""
    prepared: Any = None
    """The model as `accelerate` prepared it (wrapped, possibly sharded): what the final save gathers."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Stage-specific figures for the stage summary (a regions stage: its attribute accuracies)."""


def _supervised_tokens(batch: dict[str, Any]) -> int:
    labels = batch["labels"][:, 1:]  # the LLM shifts labels by one
    return int((labels != IGNORE_INDEX).sum())


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


MONITOR_CROPS = 8
"""Crops of the last micro-batch whose visual-word distributions `monitor_statistics` recomputes."""


@torch.no_grad()
def monitor_statistics(
    model: torch.nn.Module,
    pixel_values: torch.Tensor | None,
    max_crops: int = MONITOR_CROPS,
    grid_thw: torch.Tensor | None = None,
) -> dict[str, float]:
    """Cheap health statistics of the visual vocabulary, logged with the loss.

    - ``text_embed_rms``: RMS row norm ``‖E‖_F / sqrt(rows)`` of the LLM's input embeddings;
    - ``vte_rms``: the same for the VET, whose rows are spliced among those text embeddings (their
      relative scale matters, DESIGN §5b);
    - ``visual_entropy``: mean entropy (nats, 0 … log K') of the visual tokens' distributions;
    - ``visual_eff_vocab``: ``exp(H(usage))`` of those tokens' summed distributions (1 … K').

    An MLP-connector model (no VET) gets only ``text_embed_rms``; without images the two
    ``visual_*`` values are left out. The distributions are recomputed without gradients for at most ``max_crops`` crops: the fused VET op
    never materializes them, so there is nothing to hook. The model runs in eval mode, so nothing
    is drawn from the random generators and a resumed run stays exact.

    Args:
        model: The unwrapped `OvisForConditionalGeneration`.
        pixel_values: ``[C, 3, S, S]`` crops of the batch, or None.
        max_crops: Most crops to recompute (NaViT, with ``grid_thw``: most images).
        grid_thw: NaViT backbones: ``[n, 3]`` grids of the packed rows ``pixel_values``.
    """
    stats = {"text_embed_rms": rms_row_norm(model.get_input_embeddings().weight)}
    table = visual_table(model)
    if table is None:
        return stats
    stats["vte_rms"] = rms_row_norm(table)
    if pixel_values is None or pixel_values.shape[0] == 0:
        return stats
    modes = {module: module.training for module in model.modules()}
    model.eval()  # dropout off: nothing is drawn from the random generators
    try:
        if grid_thw is not None:  # packed rows: the first max_crops images
            grid_thw = grid_thw[:max_crops]
            pixel_values = pixel_values[: int(grid_thw.prod(-1).sum())]
        else:
            pixel_values = pixel_values[:max_crops]
        pixels = pixel_values.to(model.dtype)
        probs = visual_word_probabilities(model, pixels, grid_thw).flatten(0, 1)  # [N, K']
    finally:
        for module, training in modes.items():  # exactly the modes it had
            module.training = training
    stats["visual_entropy"] = float(token_entropy(probs).mean())
    stats["visual_eff_vocab"] = effective_vocabulary(probs.sum(0))  # [K'] usage
    return stats


def train_stage(
    accelerator: Any,
    model: torch.nn.Module,
    stage: StageSpec,
    stage_dir: Path,
    dataset: Dataset,
    collate_fn: Any,
    *,
    seed: int,
    num_workers: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> StageResult:
    """Trains one stage and returns its losses; ``model`` is the unwrapped model, updated in place."""
    trainable = trainable_under_lora(model) if stage.lora is not None else None
    groups = param_groups(model, stage.module_lr, stage.weight_decay, trainable)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    warmup = max(1, int(stage.warmup_ratio * stage.max_steps)) if stage.warmup_ratio > 0 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_schedule(s, stage.max_steps, warmup, stage.min_lr_ratio)
    )
    wrapped, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    state = TrainerState(stage=stage.name)
    ckpt = latest_verified_checkpoint(stage_dir) if resume else None
    if ckpt is not None:
        _load_checkpoint(accelerator, ckpt)
        state = TrainerState.load(ckpt)
        accelerator.print(f"resumed {stage.name} from {ckpt} (step {state.step})")

    stream = IndexStream(
        len(dataset),
        stage.batch_size,
        seed,
        accelerator.process_index,
        accelerator.num_processes,
        start=state.step * stage.grad_accum,
    )
    loader = DataLoader(dataset, batch_sampler=stream, collate_fn=collate_fn, num_workers=num_workers)
    batches = iter(loader)
    skips = SkipTally(state.skips)

    wrapped.train()
    bar = tqdm(
        total=stage.max_steps,
        initial=state.step,
        desc=stage.name,
        disable=not (progress and accelerator.is_main_process),
    )
    start_time, seen_tokens = time.perf_counter(), 0
    monitor = accelerator.is_main_process and not parameters_sharded(accelerator)
    while state.step < stage.max_steps:
        micro = [next(batches) for _ in range(stage.grad_accum)]
        for b in micro:
            skips.add(b)
        count = torch.tensor(sum(_supervised_tokens(b) for b in micro), device=accelerator.device)
        count = int(accelerator.reduce(count, reduction="sum"))
        step_loss = torch.zeros((), device=accelerator.device)
        for i, b in enumerate(micro):
            if b["input_ids"].shape[0] == 0:  # every sample of this micro-batch was skipped (and counted)
                continue
            inputs = _to_device(model_inputs(b), accelerator.device)
            sync = accelerator.no_sync(wrapped) if i < len(micro) - 1 else contextlib.nullcontext()
            with sync, accelerator.autocast():
                out = wrapped(
                    **inputs, num_items_in_batch=torch.tensor(max(count, 1), device=accelerator.device)
                )
                # The loss is sum/count over this process's tokens; DDP averages gradients over
                # processes, so scale by their number to get the global token-mean gradient.
                accelerator.backward(out.loss * accelerator.num_processes)
            step_loss += out.loss.detach()
        step_loss = float(accelerator.reduce(step_loss, reduction="sum"))
        if not math.isfinite(step_loss):
            raise TrainingDiverged(
                f"{stage.name}: loss is {step_loss} at step {state.step + 1}; stopping. The last checkpoint "
                f"({latest_checkpoint(stage_dir) or 'none yet'}) is intact: lower the learning rate and resume."
            )
        if stage.max_grad_norm > 0:
            accelerator.clip_grad_norm_(wrapped.parameters(), stage.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        state.step += 1
        state.losses.append(step_loss)
        state.tokens += count
        seen_tokens += sum(int(b["attention_mask"].sum()) for b in micro) * accelerator.num_processes
        elapsed = time.perf_counter() - start_time
        rate = seen_tokens / max(elapsed, 1e-9)  # input tokens (text + visual) per second, all processes
        lr = max(g["lr"] for g in optimizer.param_groups)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}")
        if state.step % stage.log_every == 0 or state.step == stage.max_steps:
            logged = {"loss": step_loss, "lr": lr, "tokens_per_s": rate}
            if monitor:  # of this (main) process's last micro-batch
                with accelerator.autocast():
                    pixels, grid_thw = _last_pixels(micro, accelerator.device)
                    logged |= monitor_statistics(model, pixels, grid_thw=grid_thw)
            accelerator.log({f"{stage.name}/{k}": v for k, v in logged.items()}, step=state.step)
        if stage.save_every and state.step % stage.save_every == 0 and state.step < stage.max_steps:
            state.skips = skips.counts
            save_checkpoint(accelerator, stage_dir, state)
    bar.close()
    state.skips = skips.counts
    save_checkpoint(accelerator, stage_dir, state)
    return StageResult(state.losses, time.perf_counter() - start_time, seen_tokens, state.skips, wrapped)


def _load_checkpoint(accelerator: Any, ckpt: Path) -> None:
    """``accelerator.load_state`` with one-line errors, and a warning when the RNG state is lost."""
    from safetensors import SafetensorError

    try:
        accelerator.load_state(str(ckpt))
    except (SafetensorError, OSError, EOFError, RuntimeError, ValueError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{ckpt}: cannot restore the training state ({detail})") from err
    problem = rng_state_problem(ckpt, accelerator.process_index)
    if problem:
        logger.warning(
            "%s: could not restore the RNG state (%s): the resumed run will not exactly reproduce an "
            "uninterrupted one",
            ckpt,
            problem,
        )


def rng_state_problem(ckpt: Path, process_index: int) -> str | None:
    """Why this process's RNG state in ``ckpt`` cannot be restored (None: it can).

    `accelerate` only logs (at INFO) when it fails to restore it; exactness of the resumed run
    depends on it, so the loop warns.
    """
    path = ckpt / f"random_states_{process_index}.pkl"
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        states = torch.load(path, weights_only=False)
    except Exception as err:  # noqa: BLE001 - a damaged pickle raises anything
        return f"{path.name} is unreadable ({type(err).__name__})"
    wanted = ["random_state", "numpy_random_seed", "torch_manual_seed"]
    if torch.cuda.is_available():
        wanted.append("torch_cuda_manual_seed")
    missing = [k for k in wanted if not isinstance(states, dict) or k not in states]
    return f"{path.name} lacks {', '.join(missing)}" if missing else None


def _last_pixels(
    micro: list[dict[str, Any]], device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The crops (and NaViT grids) of the last micro-batch that has any (None in a text-only stage)."""
    for b in reversed(micro):
        pixels = b.get("pixel_values")
        if pixels is not None and pixels.shape[0] > 0:
            grid_thw = b.get("grid_thw")
            if grid_thw is None:
                return pixels[:MONITOR_CROPS].to(device), None
            return pixels.to(device), grid_thw
    return None, None


class SkipTally:
    """Adds up the skip counts the collator reports per batch."""

    def __init__(self, counts: dict[str, Any]):
        self.counts = {"total": 0, "skipped": {}, **counts}

    def add(self, batch: dict[str, Any]) -> None:
        self.counts["total"] += int(batch.get("num_samples", 0))
        for reason, n in (batch.get("skipped") or {}).items():
            self.counts["skipped"][reason] = self.counts["skipped"].get(reason, 0) + int(n)
