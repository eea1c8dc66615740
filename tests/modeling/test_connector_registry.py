"""Adding a connector is one class and its registration: a toy one, defined and registered in this file,
builds from a config, trains through the training loop, saves and loads."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from model_helpers import image_span
from safetensors import safe_open
from torch import nn
from torch.utils.data import Dataset

from openovis import OvisForConditionalGeneration, build_model
from openovis.configuration import OvisConfig
from openovis.constants import IGNORE_INDEX
from openovis.modeling.connector import CONNECTORS, Connector, register_connector
from openovis.processing.collator import OvisCollator
from openovis.training.loop import train_stage
from openovis.training.param_groups import assign_learning_rates, param_groups
from openovis.training.recipe import DataSourceSpec, StageSpec

TOY = "toy-linear"


@register_connector(TOY)
class ToyLinearConnector(Connector):
    """One Linear from the merged features ``[C, T, F]`` to the LLM width ``[C, T, D]``."""

    def __init__(self, config: OvisConfig):
        super().__init__()
        self.proj = nn.Linear(config.visual_feature_size, config.text_config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class TwoColours(Dataset):
    """Solid-colour crops; the answer token is the colour's, so only the image tells it."""

    def __init__(self, config: OvisConfig, n: int = 8):
        self.config, self.n = config, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        ids = torch.tensor([5, *image_span(cfg), 6, 7 + i % 2, 1])
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[-2:] = ids[-2:]
        sign = 1.0 if i % 2 else -1.0
        pixels = torch.full((1, 3, cfg.crop_size, cfg.crop_size), sign)
        mask = torch.ones_like(ids)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


def test_the_config_picks_the_registered_class():
    model = build_model("tiny", connector=TOY)
    assert type(model.connector) is ToyLinearConnector and CONNECTORS[TOY] is ToyLinearConnector
    pixels = torch.randn(2, 3, 64, 64)
    assert model.visual_embeddings(pixels).shape == (2, 16, model.config.text_config.hidden_size)
    with pytest.raises(NotImplementedError, match=f"connector '{TOY}' has no visual vocabulary"):
        model.visual_probabilities(pixels)
    ids = torch.tensor([[5, *image_span(model.config), 6]])
    spliced = model.embed_inputs(ids, pixels[:1])
    text = model.get_input_embeddings()(ids)
    torch.testing.assert_close(spliced[0, 1], text[0, 1])  # no indicator rows: text embeddings stay


def test_one_optimizer_step_through_the_training_loop(tmp_path):
    model = build_model("tiny", connector=TOY)
    stage = StageSpec(
        name="toy",
        data=[DataSourceSpec(path="unused")],
        module_lr={"connector": 1e-2},
        max_steps=1,
        batch_size=4,
        warmup_ratio=0.0,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_stage(
        Accelerator(cpu=True),
        model,
        stage,
        tmp_path,
        TwoColours(model.config),
        OvisCollator(pad_token_id=0, padding_side="right"),
        seed=0,
        progress=False,
    )
    assert len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses)).all()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == {"connector.proj.weight", "connector.proj.bias"}


def test_save_and_load_round_trip(tmp_path):
    model = build_model("tiny", connector=TOY).eval()
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert {"connector.proj.weight", "connector.proj.bias"} <= keys  # no renames declared: kept as they are
    loaded = OvisForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.connector == TOY and type(loaded.connector) is ToyLinearConnector
    ids = torch.tensor([[5, *image_span(model.config), 6]])
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, pixel_values=pixels).logits,
            model(input_ids=ids, pixel_values=pixels).logits,
            rtol=0,
            atol=0,
        )


def test_module_lr_keys_each_connector_declares():
    def trained(model, module_lr):
        return {n for n, r in assign_learning_rates(model, module_lr).items() if r > 0}

    toy = build_model("tiny", connector=TOY)
    assert trained(toy, {"connector": 1.0}) == {"connector.proj.weight", "connector.proj.bias"}
    assert not any(n.startswith("connector.") for n in trained(toy, {"visual_tokenizer": 1.0}))
    for key in ("vte", "visual_tokenizer.head"):  # the VET's names: a toy has neither
        with pytest.raises(ValueError, match=f"module_lr.{key}: the model \\(connector '{TOY}'\\)"):
            param_groups(toy, {key: 1.0})
    vet = build_model("tiny")
    head = {"connector.head.0.weight", "connector.head.1.weight", "connector.head.1.bias"}
    backbone = {n for n, _ in vet.named_parameters() if n.startswith("visual_tokenizer.backbone.")}
    assert trained(vet, {"visual_tokenizer.head": 1.0}) == head
    assert trained(vet, {"vte": 1.0}) == {"connector.vte.weight"}
    assert trained(vet, {"visual_tokenizer": 1.0}) == head | (backbone & trained(vet, {"all": 1.0}))
    rates = assign_learning_rates(vet, {"visual_tokenizer": 1.0, "visual_tokenizer.head": 2.0, "vte": 3.0})
    assert rates["connector.head.0.weight"] == 2.0 and rates["connector.vte.weight"] == 3.0
    mlp = build_model("tiny", connector="mlp")
    projector = {f"connector.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    assert trained(mlp, {"connector": 1.0}) == projector


def test_registry_refuses_clashing_names():
    with pytest.raises(ValueError, match="already registered"):

        @register_connector("vet")
        class _AnotherVet(Connector):
            pass

    with pytest.raises(ValueError, match="overlap"):  # a second owner of the official 'vte.' names

        @register_connector("toy-table")
        class _Table(Connector):
            checkpoint_names = {"table": "vte"}

    with pytest.raises(ValueError, match="overlaps the model's own names"):

        @register_connector("toy-llm")
        class _IntoTheLlm(Connector):
            checkpoint_names = {"proj": "llm.proj"}

    assert {"toy-table", "toy-llm"}.isdisjoint(CONNECTORS) and CONNECTORS["vet"].__name__ == "VETConnector"
    with pytest.raises(TypeError, match="not a Connector subclass"):
        register_connector("toy-module")(nn.Linear)


@register_connector("toy-head")
class _HeadConnector(Connector):
    """Keeps a submodule called ``head``, whose names the VET renames in checkpoints."""

    def __init__(self, config: OvisConfig):
        super().__init__()
        self.head = nn.Linear(config.visual_feature_size, config.text_config.hidden_size)


@register_connector("toy-heads")
class _HeadsConnector(Connector):
    """``heads``: transformers' regex for the VET's ``connector.head.`` (dots unescaped) matches it too."""

    def __init__(self, config: OvisConfig):
        super().__init__()
        self.heads = nn.Linear(config.visual_feature_size, config.text_config.hidden_size)


@pytest.mark.parametrize("name", ["toy-head", "toy-heads"])
def test_a_submodule_under_another_connectors_rename_is_refused(name):
    with pytest.raises(ValueError, match=rf"connector '{name}': connector\.heads?\.weight falls under"):
        build_model("tiny", connector=name)
