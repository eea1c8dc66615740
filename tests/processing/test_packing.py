"""A packed batch gives every sample the loss it gets alone (SDPA and eager attention, fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from openovis import build_model
from openovis.constants import IGNORE_INDEX
from openovis.processing.collator import OvisCollator, model_inputs
from openovis.processing.packing import PackingCollator, pack_rows
from openovis.skips import SkippedSample, SkipReason

PAD = 0


def sample(model, text: int, answer: int, crops: int, g: torch.Generator) -> dict:
    """``text`` prompt ids, an image of ``crops`` crops (start, atoms, end), ``answer`` supervised ids."""
    cfg = model.config
    start, *_, end = cfg.indicator_token_ids
    atoms = [cfg.image_atom_id] * (cfg.visual_tokens_per_crop * crops)
    prompt = torch.randint(1, 900, (text,), generator=g).tolist()
    reply = torch.randint(1, 900, (answer,), generator=g).tolist()
    ids = [*prompt[: text // 2], start, *atoms, end, *prompt[text // 2 :], *reply]
    labels = [IGNORE_INDEX] * (len(ids) - answer) + reply
    s = cfg.crop_size
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.ones(len(ids), dtype=torch.long),
        "labels": torch.tensor(labels),
        "pixel_values": torch.randn(crops, 3, s, s, generator=g),
        "grids": [(1, crops)],
    }


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position CE of the next token ``[B, L]`` (0 where ignored; the last position has none)."""
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    flat = F.cross_entropy(logits.flatten(0, 1).float(), shifted.flatten(), reduction="none")
    return flat.view(labels.shape)


def test_pack_rows_is_next_fit_in_order():
    assert pack_rows([3, 4, 2, 9, 1], max_length=8) == [[0, 1], [2], [3], [4]]
    assert pack_rows([], 8) == []


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_gives_each_sample_its_own_loss(attn):
    model = build_model("tiny", vet_impl="reference").eval()
    model.llm.set_attn_implementation(attn)
    g = torch.Generator().manual_seed(0)
    samples = [sample(model, t, a, c, g) for t, a, c in [(7, 5, 1), (3, 9, 2), (12, 4, 1), (5, 6, 1)]]
    packed = PackingCollator(PAD, max_length=80)([*samples, SkippedSample(9, SkipReason.MISSING_IMAGE, "")])
    assert packed["num_samples"] == 5 and sum(packed["skipped"].values()) == 1
    assert len(packed["sample_lengths"]) < len(samples)  # something was actually packed
    separate = OvisCollator(PAD, "right")(samples)

    with torch.no_grad():
        out_p = model(**model_inputs(packed))
        out_s = model(**model_inputs(separate))
    lp, ls = token_losses(out_p.logits, packed["labels"]), token_losses(out_s.logits, separate["labels"])
    got = [
        seg.sum()
        for row, lens in zip(lp, packed["sample_lengths"], strict=True)
        for seg in row.split([*lens, row.numel() - sum(lens)])[: len(lens)]
    ]
    want = [row.sum() for row in ls]
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=1e-5, atol=1e-5)

    # the model's own loss (token mean over the batch) agrees too, with either loss implementation
    with torch.no_grad():
        loss_s = model(**model_inputs(separate)).loss
        loss_p = model(**model_inputs(packed)).loss
    torch.testing.assert_close(loss_p, loss_s, rtol=1e-5, atol=1e-6)


def test_position_ids_restart_and_padding_is_ignored():
    a = {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([5, 6, 7])}
    b = {"input_ids": torch.tensor([8, 9]), "labels": torch.tensor([8, 9])}
    batch = PackingCollator(PAD, max_length=6, pad_to_multiple_of=4)([a, b])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9] + [IGNORE_INDEX] * 3]
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 3]
    inputs = model_inputs(batch)
    assert "attention_mask" not in inputs and "position_ids" in inputs and inputs["use_cache"] is False
