"""``OvisConfig.loss_impl='chunked'``: the same loss and gradients as the LLM's own loss, no logits."""

from __future__ import annotations

import pytest
import torch

from openovis import build_model
from openovis.constants import IGNORE_INDEX


def batch(model, g):
    cfg = model.config
    start, *_, end = cfg.indicator_token_ids
    ids = torch.randint(1, 900, (2, 40), generator=g)
    ids[:, 3] = start
    ids[:, 4 : 4 + cfg.visual_tokens_per_crop] = cfg.image_atom_id
    ids[:, 4 + cfg.visual_tokens_per_crop] = end
    labels = ids.clone()
    labels[:, :25] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    mask[1, 35:] = 0
    labels[1, 35:] = IGNORE_INDEX
    s = cfg.crop_size
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "pixel_values": torch.randn(2, 3, s, s, generator=g),
    }


@pytest.mark.parametrize("num_items", [None, 17])
def test_chunked_loss_matches_reference(num_items):
    ref = build_model("tiny", vet_impl="reference").train()
    ours = build_model("tiny", vet_impl="reference", loss_impl="chunked").train()
    ours.load_state_dict(ref.state_dict())
    inputs = batch(ref, torch.Generator().manual_seed(0))
    extra = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    out_ref = ref(**inputs, use_cache=False, **extra)
    out_ours = ours(**inputs, use_cache=False, **extra)
    assert out_ours.logits is None
    torch.testing.assert_close(out_ours.loss, out_ref.loss, rtol=1e-6, atol=1e-6)
    out_ref.loss.backward()
    out_ours.loss.backward()
    grads_ref = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(
            p.grad, grads_ref[name].grad, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_generation_and_plain_forward_unaffected():
    model = build_model("tiny", vet_impl="reference", loss_impl="chunked").eval()
    inputs = batch(model, torch.Generator().manual_seed(1))
    labels = inputs.pop("labels")
    assert model(**inputs).logits is not None  # no labels: the LLM's own forward
    assert model(**inputs, labels=labels).logits is None
