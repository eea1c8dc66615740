"""The training loop: per-module rates reach the optimizer, loss falls, divergence stops cleanly."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from helpers import ColourImages, NativeColourImages, collator

from openovis import build_model
from openovis.training.checkpoint import latest_checkpoint
from openovis.training.loop import IndexStream, TrainingDiverged, cosine_schedule, train_stage
from openovis.training.param_groups import assign_learning_rates, last_block_prefix, param_groups
from openovis.training.recipe import DataSourceSpec, StageSpec

DATA = [DataSourceSpec(path="unused")]


def _stage(**kw) -> StageSpec:
    base = {
        "name": "s",
        "data": DATA,
        "module_lr": {"vte": 1e-2},
        "max_steps": 4,
        "batch_size": 4,
        "warmup_ratio": 0.0,
    }
    return StageSpec(**{**base, **kw})


def test_module_rates_reach_the_optimizer_and_frozen_parts_stay_put(tmp_path):
    model = build_model("tiny", vet_impl="reference")
    rates = {
        "visual_tokenizer.head": 1e-3,
        "vte": 2e-3,
        "visual_tokenizer.backbone.last_block": 5e-4,
        "llm": 0.0,
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stage = _stage(module_lr=rates, max_steps=1, max_grad_norm=0.0)
    captured = {}
    original = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        captured.update({n: g["lr"] for g in self.param_groups for n in g["names"]})
        return original(self, *a, **kw)

    torch.optim.AdamW.step = spy
    try:
        train_stage(
            Accelerator(cpu=True),
            model,
            stage,
            tmp_path,
            ColourImages(model.config),
            collator(),
            seed=0,
            progress=False,
        )
    finally:
        torch.optim.AdamW.step = original
    last = last_block_prefix(model)
    for name, p in model.named_parameters():
        if name.startswith("connector.head"):  # visual_tokenizer.head.* in checkpoints
            expected = 1e-3
        elif name == "connector.vte.weight":  # vte.weight in checkpoints
            expected = 2e-3
        elif name.startswith(last + "."):
            expected = 5e-4
        else:
            expected = 0.0
        assert captured.get(name, 0.0) == pytest.approx(expected), name
        changed = not torch.equal(before[name], p.detach())
        assert changed == (expected > 0), name


def test_a_native_resolution_model_trains_through_the_loop(tmp_path):
    """Ovis2.5 shapes (NaViT + Qwen3, scaled down): packed rows and grid_thw through collator and loop."""
    model = build_model("ovis2.5-2b", scale_down=True, vet_impl="reference")
    rates = {
        "visual_tokenizer.head": 1e-2,
        "vte": 1e-2,
        "visual_tokenizer.backbone.last_block": 1e-3,
        "llm": 0.0,
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stage = _stage(module_lr=rates, max_steps=2, log_every=1)
    result = train_stage(
        Accelerator(cpu=True),
        model,
        stage,
        tmp_path,
        NativeColourImages(model.config),
        collator(),
        seed=0,
        progress=False,
    )
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
    last = last_block_prefix(model)
    assert last.startswith("visual_tokenizer.backbone.vision_model.encoder.layers.")
    for name, p in model.named_parameters():
        trained = name.startswith(("connector.", last + "."))
        assert (not torch.equal(before[name], p.detach())) == trained, name


def test_longest_prefix_wins_and_all_covers_the_rest():
    model = build_model("tiny")
    rates = assign_learning_rates(model, {"all": 1.0, "llm": 0.0, "vte": 3.0})
    assert rates["connector.vte.weight"] == 3.0
    assert all(r == 0.0 for n, r in rates.items() if n.startswith("llm."))
    assert rates["connector.head.0.weight"] == 1.0


def test_unknown_prefix_for_a_connector_the_model_lacks_is_an_error():
    model = build_model("tiny")
    with pytest.raises(ValueError, match="module_lr.connector"):
        param_groups(model, {"connector": 1e-3})


def test_loss_falls_on_a_task_that_needs_the_image(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny", vet_impl="reference")
    stage = _stage(module_lr={"all": 3e-3}, max_steps=40, batch_size=8)
    result = train_stage(
        Accelerator(cpu=True),
        model,
        stage,
        tmp_path,
        ColourImages(model.config),
        collator(),
        seed=0,
        progress=False,
    )
    assert len(result.losses) == 40
    assert sum(result.losses[-5:]) / 5 < 0.5 * sum(result.losses[:5]) / 5
    assert latest_checkpoint(tmp_path) is not None  # the end-of-stage checkpoint


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    model = build_model("tiny", vet_impl="reference")
    stage = _stage(module_lr={"vte": 1e-3}, max_steps=6, save_every=2)
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        if calls["n"] > 3:  # after two optimizer steps and the checkpoint at step 2
            output.loss = output.loss * float("nan")
        return output

    model.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 4.*step-000002"):
        train_stage(
            Accelerator(cpu=True),
            model,
            stage,
            tmp_path,
            ColourImages(model.config),
            collator(),
            seed=0,
            progress=False,
        )
    assert latest_checkpoint(tmp_path).name == "step-000002"


def test_index_stream_gives_the_same_global_batches_for_any_world_size():
    one = IndexStream(10, batch_size=4, seed=3)
    it = iter(one)
    single = [next(it) for _ in range(6)]  # 24 indices, 2 epochs + 4
    two = [iter(IndexStream(10, batch_size=2, seed=3, rank=r, world=2)) for r in range(2)]
    for micro in range(6):
        assert [*next(two[0]), *next(two[1])] == single[micro]
    assert sorted(single[0] + single[1] + single[2][:2]) == list(range(10))  # epoch 0 is a permutation
    resumed = iter(IndexStream(10, batch_size=4, seed=3, start=3))
    assert next(resumed) == single[3]


def test_cosine_schedule():
    assert cosine_schedule(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert cosine_schedule(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert cosine_schedule(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert cosine_schedule(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine_schedule(100, 100, 0, 0.0) == pytest.approx(0.0)
