"""Training-time monitors: logged with the loss, finite, in range, and free of side effects."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from helpers import ColourImages, collator

from openovis import build_model
from openovis.modeling.visual_words import effective_vocabulary, rms_row_norm, token_entropy
from openovis.training.loop import monitor_statistics, train_stage
from openovis.training.recipe import DataSourceSpec, StageSpec

VISUAL = ("visual_entropy", "visual_eff_vocab")


def _logged_run(model, tmp_path, **stage) -> dict[int, dict[str, float]]:
    """Trains a short stage and returns what the loop gave ``accelerator.log``, by step."""
    spec = StageSpec(
        name="s",
        data=[DataSourceSpec(path="unused")],
        module_lr={"all": 1e-3},
        max_steps=3,
        batch_size=2,
        warmup_ratio=0.0,
        log_every=2,
        **stage,
    )
    accelerator = Accelerator(cpu=True)
    logged: dict[int, dict[str, float]] = {}
    accelerator.log = lambda values, step=None, **_: logged.setdefault(step, {}).update(values)
    train_stage(
        accelerator, model, spec, tmp_path, ColourImages(model.config), collator(), seed=0, progress=False
    )
    return logged


def test_vet_monitors_are_logged_with_the_loss_and_in_range(tmp_path):
    model = build_model("tiny")  # the default (fused) VET path: the monitors must not need the probabilities
    logged = _logged_run(model, tmp_path)
    assert sorted(logged) == [2, 3]  # every log_every steps, and the last step
    words = model.config.visual_vocab_size - model.config.num_indicators
    for values in logged.values():
        assert {f"s/{k}" for k in ("loss", "lr", "text_embed_rms", "vte_rms", *VISUAL)} <= set(values)
        assert all(math.isfinite(v) for v in values.values())
        assert 0 <= values["s/visual_entropy"] <= math.log(words)
        assert 1 <= values["s/visual_eff_vocab"] <= words
    # The last log follows the last optimizer step: its norms are those of the trained tables.
    assert logged[3]["s/vte_rms"] == pytest.approx(rms_row_norm(model.connector.vte.weight))
    assert logged[3]["s/text_embed_rms"] == pytest.approx(rms_row_norm(model.get_input_embeddings().weight))


def test_mlp_model_logs_only_the_text_embedding_norm(tmp_path):
    logged = _logged_run(build_model("tiny", connector="mlp"), tmp_path)
    for values in logged.values():
        assert "s/text_embed_rms" in values and math.isfinite(values["s/text_embed_rms"])
        assert not {f"s/{k}" for k in ("vte_rms", *VISUAL)} & set(values)


def test_monitor_statistics_match_the_full_distributions_and_leave_no_trace():
    model = build_model("tiny", vet_impl="reference").train()
    n = model.config.num_indicators
    pixels = torch.randn(3, 3, model.config.crop_size, model.config.crop_size)
    rng = torch.get_rng_state()
    stats = monitor_statistics(model, pixels)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.visual_tokenizer.training
    with torch.no_grad():
        model.eval()
        probs = model.visual_probabilities(pixels).flatten(0, 1)  # [N, K], softmax
    assert stats["visual_entropy"] == pytest.approx(float(token_entropy(probs, n).mean()), rel=1e-5)
    assert stats["visual_eff_vocab"] == pytest.approx(effective_vocabulary(probs[:, :-n].sum(0)), rel=1e-5)
    assert stats["vte_rms"] == pytest.approx(
        float(model.connector.vte.weight.detach().pow(2).sum(-1).mean().sqrt())
    )
    # Only the first `max_crops` crops count; without images only the norms remain.
    one = monitor_statistics(model, pixels, max_crops=1)
    assert one["visual_entropy"] == pytest.approx(monitor_statistics(model, pixels[:1])["visual_entropy"])
    assert set(monitor_statistics(model, None)) == {"text_embed_rms", "vte_rms"}
