"""Checkpoints keep the official Ovis names while the model holds its connector at ``model.connector``.

The VET connector's head and table are ``connector.head.*`` and ``connector.vte.*`` in memory, and
``visual_tokenizer.head.{0,1}.*`` and ``vte.weight`` on disk (transformers' checkpoint conversion
mapping renames them on ``from_pretrained`` and back on ``save_pretrained``). The names on disk are
spelled out here, independently of the code that renames them.
"""

from __future__ import annotations

import json

import torch
from model_helpers import image_span
from safetensors import safe_open
from safetensors.torch import save_file

from openovis import OvisForConditionalGeneration, build_model
from openovis.modeling.connector import from_checkpoint_names, to_checkpoint_names

OFFICIAL = {"visual_tokenizer.head.": "connector.head.", "vte.": "connector.vte."}
"""Checkpoint prefix -> in-memory prefix of the VET connector (DESIGN §6)."""
VET_KEYS = {
    "visual_tokenizer.head.0.weight",
    "visual_tokenizer.head.1.weight",
    "visual_tokenizer.head.1.bias",
    "vte.weight",
}
MLP_KEYS = {f"connector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}


def saved_keys(folder) -> set[str]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    with safe_open(folder / "model.safetensors", "pt") as f:
        return set(f.keys())


def own_keys(keys) -> set[str]:
    """The keys outside the backbone and the LLM."""
    return {k for k in keys if not k.startswith(("llm.", "visual_tokenizer.backbone."))}


def old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as openovis wrote it before the connector moved: the official names, by hand."""
    out = {}
    for key, tensor in state.items():
        for saved, memory in OFFICIAL.items():
            if key.startswith(memory):
                key = saved + key[len(memory) :]
        out[key] = tensor.contiguous()
    return out


def test_save_pretrained_writes_the_official_names(tmp_path):
    model = build_model("tiny")
    assert own_keys(model.state_dict()) == {
        "connector.head.0.weight",
        "connector.head.1.weight",
        "connector.head.1.bias",
        "connector.vte.weight",
    }
    model.save_pretrained(tmp_path / "vet")
    assert own_keys(saved_keys(tmp_path / "vet")) == VET_KEYS
    tied = {"llm.lm_head.weight"}  # save_pretrained writes one name of the tied embeddings
    assert saved_keys(tmp_path / "vet") == set(old_layout(model.state_dict())) - tied
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert own_keys(saved_keys(tmp_path / "sharded")) == VET_KEYS
    mlp = build_model("tiny", connector="mlp")
    mlp.save_pretrained(tmp_path / "mlp")
    assert own_keys(saved_keys(tmp_path / "mlp")) == own_keys(mlp.state_dict()) == MLP_KEYS


def test_an_old_layout_folder_loads_and_saves_back_unchanged(tmp_path):
    model = build_model("tiny").eval()
    state = old_layout(model.state_dict())
    del state["llm.lm_head.weight"]  # tied to the input embeddings; save_pretrained writes one name
    folder = tmp_path / "old"
    model.config.save_pretrained(folder)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})

    loaded, info = OvisForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    ids = torch.tensor([[5, *image_span(model.config), 6]])
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.eval()(input_ids=ids, pixel_values=pixels).logits,
            model(input_ids=ids, pixel_values=pixels).logits,
            rtol=0,
            atol=0,
        )
    loaded.save_pretrained(tmp_path / "again")  # a model that came from from_pretrained
    with safe_open(tmp_path / "again" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(state)
        for key in state:
            assert torch.equal(f.get_tensor(key), state[key]), key


def test_state_dict_mapping_functions_are_inverse_and_match_save_pretrained():
    state = build_model("tiny").state_dict()
    saved = to_checkpoint_names(state)
    assert saved.keys() == old_layout(state).keys()
    assert from_checkpoint_names(saved).keys() == state.keys()
    back = to_checkpoint_names(from_checkpoint_names(saved))
    assert back.keys() == saved.keys() and all(back[k] is v for k, v in saved.items())
    mlp = build_model("tiny", connector="mlp").state_dict()
    assert to_checkpoint_names(mlp).keys() == mlp.keys()
