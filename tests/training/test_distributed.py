"""Saving and the VET under sharded parameters, without a GPU: the detection from the accelerator's
state, the gather-then-save path (mock accelerator), and the ZeRO-3 VET/loss paths under a simulation
of ZeRO-3's partitioning (a module's weights exist only inside its own forward)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from model_helpers import image_span
from safetensors import safe_open

from openovis import OvisForConditionalGeneration, build_model
from openovis.training.distributed import (
    ZERO3_CONFIG,
    check_stage_supported,
    forced_config,
    parameters_sharded,
    saved_final_model,
)


def fake_accelerator(kind: str, stage: int | None = None, main: bool = True, gathered=None):
    """What the functions read of an `accelerate.Accelerator`; records ``get_state_dict`` calls."""
    calls = []

    def get_state_dict(model):
        calls.append(model)
        return gathered

    return SimpleNamespace(
        distributed_type=DistributedType[kind],
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage)),
        is_main_process=main,
        unwrap_model=lambda m: m.module if hasattr(m, "module") else m,
        get_state_dict=get_state_dict,
        calls=calls,
    )


@pytest.mark.parametrize(
    ("kind", "stage", "sharded", "zero3"),
    [
        ("NO", None, False, False),
        ("MULTI_CPU", None, False, False),
        ("MULTI_GPU", None, False, False),
        ("DEEPSPEED", 2, False, False),
        ("DEEPSPEED", 3, True, True),
        ("FSDP", None, True, False),
    ],
)
def test_sharding_is_detected_from_the_accelerator_state(kind, stage, sharded, zero3, caplog):
    acc = fake_accelerator(kind, stage)
    assert parameters_sharded(acc) is sharded
    with caplog.at_level(logging.INFO, logger="openovis.training.distributed"):
        forced = forced_config(acc)
    assert forced == (ZERO3_CONFIG if zero3 else {})
    assert ("ZeRO-3" in caplog.text) is zero3


def test_lora_is_refused_only_where_parameters_are_sharded():
    check_stage_supported(fake_accelerator("MULTI_GPU"), lora=True)
    check_stage_supported(fake_accelerator("FSDP"), lora=False)
    for acc in (fake_accelerator("FSDP"), fake_accelerator("DEEPSPEED", 3)):
        with pytest.raises(ValueError, match="LoRA"):
            check_stage_supported(acc, lora=True)


def test_every_process_gathers_and_only_the_main_one_gets_the_weights():
    model = torch.nn.Linear(2, 2)
    wrapped = SimpleNamespace(module=model)
    full = {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}
    for main in (True, False):
        acc = fake_accelerator("FSDP", main=main, gathered=full if main else {})
        unwrapped, state_dict = saved_final_model(acc, wrapped, "final")
        assert unwrapped is model and acc.calls == [wrapped]  # the collective ran on this process
        assert state_dict is (full if main else None)
    acc = fake_accelerator("MULTI_GPU")
    assert saved_final_model(acc, wrapped, "final") == (model, None) and acc.calls == []


def test_a_gathered_state_dict_saves_under_the_official_names(tmp_path):
    """What the main process does with the gathered weights: the model's ``save_pretrained(state_dict=)``
    writes them, not the model's own (sharded) tensors, under the official checkpoint names."""
    model = build_model("tiny")
    gathered = {k: v.detach().clone() + 1.0 for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path, state_dict=gathered)
    keys = set()
    for path in tmp_path.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            keys |= set(f.keys())
    assert {"vte.weight", "visual_tokenizer.head.0.weight", "visual_tokenizer.head.1.weight"} <= keys
    assert not any(k.startswith("connector.") for k in keys)
    loaded = OvisForConditionalGeneration.from_pretrained(tmp_path)
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, gathered[name], msg=name)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == model.config.model_type


def partition_like_zero3(model: torch.nn.Module) -> None:
    """Empties every parameter outside the forward of the module that owns it, as ZeRO-3 does."""
    whole = {id(p): p.data for p in model.parameters()}
    empty = torch.empty(0)

    def release(module, *_):
        for p in module.parameters(recurse=False):
            p.data = empty

    def gather(module, *_):
        for p in module.parameters(recurse=False):
            p.data = whole[id(p)]

    for module in model.modules():
        if any(True for _ in module.parameters(recurse=False)):
            module.register_forward_pre_hook(gather)
            module.register_forward_hook(release)
            release(module)


def tiny_batch(config):
    ids = torch.tensor([[7, *image_span(config), 9, 10, 11]])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": ids.clone(),
        "pixel_values": torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
    }


def test_the_zero3_paths_run_when_weights_exist_only_inside_their_modules_forward():
    torch.manual_seed(0)
    model = build_model("tiny", **ZERO3_CONFIG).eval()
    batch = tiny_batch(model.config)
    with torch.no_grad():
        expected = model(**batch).loss
        partition_like_zero3(model)
        torch.testing.assert_close(model(**batch).loss, expected, rtol=0, atol=0)


@pytest.mark.parametrize("overrides", [{"vet_impl": "chunked"}, {"loss_impl": "chunked"}])
def test_the_fused_paths_read_weights_outside_their_modules_forward(overrides):
    """Why ZeRO-3 forces the reference paths: under the same simulation the fused ones fail."""
    model = build_model("tiny", **{**ZERO3_CONFIG, **overrides}).eval()
    batch = tiny_batch(model.config)
    partition_like_zero3(model)
    with torch.no_grad(), pytest.raises((RuntimeError, ValueError, ZeroDivisionError)):
        model(**batch)


def test_forced_config_wins_when_a_saved_model_is_loaded(tmp_path):
    from openovis.inference import load_model
    from openovis.integrity import write_manifest

    build_model("tiny", vet_impl="chunked", loss_impl="chunked").save_pretrained(tmp_path)
    write_manifest(tmp_path)
    config = load_model(tmp_path, config_overrides=ZERO3_CONFIG).config
    assert (config.vet_impl, config.loss_impl) == ("reference", "reference")
