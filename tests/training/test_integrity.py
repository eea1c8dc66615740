"""Checkpoint integrity: manifests catch truncated and bit-flipped files; resume falls back; RNG loss warns."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from helpers import ColourImages, collator

from openovis import build_model
from openovis.integrity import MANIFEST_FILE, CheckpointError, verify_folder, write_manifest
from openovis.training.checkpoint import latest_verified_checkpoint
from openovis.training.loop import rng_state_problem, train_stage
from openovis.training.recipe import DataSourceSpec, StageSpec


def _stage(**kw) -> StageSpec:
    base = {"name": "s", "data": [DataSourceSpec(path="unused")], "module_lr": {"vte": 1e-2}}
    return StageSpec(**{**base, "max_steps": 6, "batch_size": 4, "warmup_ratio": 0.0, "save_every": 2, **kw})


def _train(folder: Path, **kw) -> list[float]:
    torch.manual_seed(0)
    model = build_model("tiny", vet_impl="reference")
    result = train_stage(
        Accelerator(cpu=True),
        model,
        _stage(**kw),
        folder,
        ColourImages(model.config),
        collator(),
        seed=0,
        resume=True,
        progress=False,
    )
    return result.losses


def flip_payload_byte(path: Path) -> None:
    """Flips one bit in the last byte of the file (tensor data in safetensors; the header stays intact)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def saved_model(tmp_path) -> Path:
    folder = tmp_path / "model"
    build_model("tiny").save_pretrained(folder)
    write_manifest(folder)
    return folder


@pytest.mark.parametrize("damage", [truncate, flip_payload_byte])
def test_damaged_weights_give_one_line_naming_the_file(saved_model, damage):
    weights = saved_model / "model.safetensors"
    verify_folder(saved_model)
    damage(weights)
    with pytest.raises(CheckpointError) as err:
        verify_folder(saved_model)
    assert str(weights) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("damage", [truncate, flip_payload_byte])
def test_load_model_refuses_a_damaged_folder(saved_model, damage):
    from openovis.inference import load_model

    damage(saved_model / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(saved_model)


def test_without_a_manifest_truncation_is_still_caught(saved_model):
    (saved_model / MANIFEST_FILE).unlink()
    verify_folder(saved_model)
    truncate(saved_model / "model.safetensors", 0.9)
    with pytest.raises(CheckpointError, match=r"model.safetensors.*truncated"):
        verify_folder(saved_model)


def test_extra_files_beside_a_model_are_not_checked(saved_model):
    (saved_model / "eval_test.json").write_text("{}")
    verify_folder(saved_model)


def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path, caplog):
    _train(tmp_path)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000004", "step-000006"]
    assert (ckpts / "step-000006" / MANIFEST_FILE).is_file()
    flip_payload_byte(ckpts / "step-000006" / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        assert latest_verified_checkpoint(tmp_path).name == "step-000004"
        losses = _train(tmp_path, max_steps=8)
    assert len(losses) == 8
    text = caplog.text
    assert "step-000006 is damaged" in text and "model.safetensors" in text
    assert "resuming from the older checkpoint" in text


def test_no_checkpoint_verifies_is_an_error(tmp_path):
    _train(tmp_path, max_steps=2)
    truncate(tmp_path / "checkpoints" / "step-000002" / "model.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint of .* verifies"):
        latest_verified_checkpoint(tmp_path)


def test_an_rng_state_that_cannot_be_restored_warns(tmp_path, caplog):
    _train(tmp_path, max_steps=2)
    ckpt = tmp_path / "checkpoints" / "step-000002"
    assert rng_state_problem(ckpt, 0) is None
    torch.save({"random_state": None}, ckpt / "random_states_0.pkl")
    write_manifest(ckpt)  # a consistent folder whose RNG state is incomplete
    assert "lacks" in rng_state_problem(ckpt, 0)
    with caplog.at_level(logging.WARNING):
        _train(tmp_path, max_steps=3)
    assert "could not restore the RNG state" in caplog.text
    assert "will not exactly reproduce" in caplog.text
