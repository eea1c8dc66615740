"""Training-speed levers give the loss and gradients of the plain model (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from openovis import build_model
from openovis.constants import IGNORE_INDEX
from openovis.training.speed import SpeedSpec, apply_speed_levers


def loss_and_grads(spec: SpeedSpec, **overrides) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = apply_speed_levers(build_model("tiny", vet_impl="reference", **overrides).train(), spec)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 900, (2, 30), generator=g)
    ids[:, 2 : 2 + cfg.visual_tokens_per_crop] = cfg.image_atom_id
    labels = ids.masked_fill(torch.arange(30) < 20, IGNORE_INDEX)
    pixels = torch.randn(2, 3, cfg.crop_size, cfg.crop_size, generator=g)
    loss = model(input_ids=ids, pixel_values=pixels, labels=labels, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def assert_same(a, b, tol: float = 0.0) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=tol, atol=tol)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(
            a[1][name], b[1][name], rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_checkpointing_is_exact(mode):
    assert_same(loss_and_grads(SpeedSpec(activation_checkpointing=mode)), loss_and_grads(SpeedSpec()))


def test_checkpointing_with_chunked_loss():
    plain = loss_and_grads(SpeedSpec())
    assert_same(
        loss_and_grads(SpeedSpec(activation_checkpointing="selective"), loss_impl="chunked"), plain, 1e-5
    )


@pytest.mark.slow  # the CPU compile takes a minute or more on 2 cores
def test_compiled_blocks_match():
    plain = loss_and_grads(SpeedSpec())
    assert_same(
        loss_and_grads(SpeedSpec(compile_llm=True, activation_checkpointing="selective")), plain, 1e-5
    )


def test_spec_is_validated():
    with pytest.raises(ValueError, match="activation_checkpointing"):
        SpeedSpec(activation_checkpointing="some")
    with pytest.raises(ValueError, match="pack_length"):
        SpeedSpec(pack_length=0)


def test_levers_apply_once_and_parse_from_a_recipe():
    from openovis.training.recipe import Recipe, parse

    model = build_model("tiny", vet_impl="reference")
    spec = SpeedSpec(activation_checkpointing="selective")
    apply_speed_levers(model, spec)
    forwards = [block.forward for block in model.llm.model.layers]
    apply_speed_levers(model, spec)
    assert [block.forward for block in model.llm.model.layers] == forwards
    data = {
        "stages": [{"name": "s", "data": [{"path": "x.json"}], "module_lr": {"all": 1e-3}}],
        "model": {"preset": "tiny", "tokenizer": "tok"},
        "speed": {"activation_checkpointing": "selective", "pack_length": 512},
    }
    recipe = parse(Recipe, data, "")
    assert recipe.speed == SpeedSpec(activation_checkpointing="selective", pack_length=512)
    assert parse(Recipe, {k: v for k, v in data.items() if k != "speed"}, "").speed == SpeedSpec()
