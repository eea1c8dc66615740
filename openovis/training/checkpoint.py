"""Atomic, resumable checkpoints.

A checkpoint folder ``<run>/<stage>/checkpoints/step-000100`` holds what `accelerate` saves (model
in safetensors, optimizer, scheduler, RNG states of every process; sharded for FSDP/DeepSpeed) and
``trainer_state.json`` (stage, step, data position, loss history, skip counts). It is written under
a ``.tmp`` name and renamed when complete, so a run killed mid-write never leaves a half checkpoint
that ``--resume auto`` would pick up. Before the rename, ``manifest.json`` records every file's size
and sha256 (:mod:`openovis.integrity`); ``--resume auto`` takes the newest checkpoint that still
verifies (:func:`latest_verified_checkpoint`) and says so when it has to fall back.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from openovis.integrity import CheckpointError, verify_folder, write_manifest

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
DONE_FILE = "stage_done.json"


class _TiedWeightsNotice(logging.Filter):
    """Drops accelerate's "Removed shared tensor" notice: tied embeddings are saved once by design and
    re-tied on load, so the notice (printed at every checkpoint) says nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNotice())


@dataclass
class TrainerState:
    """Everything beyond tensors that a resumed stage needs."""

    stage: str
    """Stage name."""
    step: int = 0
    """Optimizer steps completed."""
    losses: list[float] = field(default_factory=list)
    """Loss of every completed step."""
    tokens: int = 0
    """Supervised tokens seen."""
    skips: dict[str, Any] = field(default_factory=dict)
    """Skip counts of the data pipeline."""

    def save(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, folder: Path) -> TrainerState:
        return cls(**json.loads((folder / STATE_FILE).read_text()))


def checkpoint_dir(stage_dir: Path, step: int) -> Path:
    return stage_dir / "checkpoints" / f"step-{step:06d}"


def complete_checkpoints(stage_dir: Path) -> list[Path]:
    """The complete checkpoints of a stage, newest first (``.tmp`` folders are ignored)."""
    folder = stage_dir / "checkpoints"
    if not folder.is_dir():
        return []
    done = [
        p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).exists()
    ]
    done = [p for p in done if not p.name.endswith(".tmp")]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The newest complete checkpoint of a stage (``.tmp`` folders are ignored)."""
    return next(iter(complete_checkpoints(stage_dir)), None)


def latest_verified_checkpoint(stage_dir: Path) -> Path | None:
    """The newest complete checkpoint whose files verify; a damaged newer one is passed over with a warning.

    Raises:
        CheckpointError: Checkpoints exist but none verifies (resuming would silently restart the stage).
    """
    problems = []
    for ckpt in complete_checkpoints(stage_dir):
        try:
            verify_folder(ckpt)
            TrainerState.load(ckpt)
        except (CheckpointError, ValueError, TypeError, OSError) as err:
            logger.warning("checkpoint %s is damaged: %s", ckpt.name, err)
            problems.append(f"{ckpt.name}: {err}")
            continue
        if problems:
            logger.warning("resuming from the older checkpoint %s instead", ckpt)
        return ckpt
    if problems:
        raise CheckpointError(
            f"no checkpoint of {stage_dir} verifies ({'; '.join(problems)}); "
            f"delete {stage_dir / 'checkpoints'} to restart the stage"
        )
    return None


def save_checkpoint(accelerator: Any, stage_dir: Path, state: TrainerState, keep: int = 2) -> Path:
    """Writes a checkpoint atomically (temp folder, then rename) and prunes old ones."""
    final = checkpoint_dir(stage_dir, state.step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.save(tmp)
        write_manifest(tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        old = sorted(
            (p for p in final.parent.iterdir() if p.is_dir() and not p.name.endswith(".tmp") and p != final),
            key=lambda p: int(p.name.split("-")[1]),
        )
        for p in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def mark_stage_done(stage_dir: Path, summary: dict[str, Any]) -> None:
    (stage_dir / DONE_FILE).write_text(json.dumps(summary, indent=2))


def stage_done(stage_dir: Path) -> bool:
    return (stage_dir / DONE_FILE).exists() and (stage_dir / "final").is_dir()
