"""The regions stage: per-token attribute labels, the backbone alone learns them, bad input is named."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from openovis.builders import build_model
from openovis.processing.image import ImageProcessingConfig
from openovis.training.recipe import Recipe, StageSpec, parse
from openovis.training.regions import (
    IGNORE,
    RegionsDataset,
    attribute_vocabulary,
    read_regions,
    token_features,
)
from openovis.training.run import train

CFG = ImageProcessingConfig(image_size=48, patch_size=8, hidden_stride=2, max_partition=1)


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _dataset(tmp_path: Path, rows: list[dict], size: tuple[int, int] = (48, 48)) -> RegionsDataset:
    for row in rows:
        Image.new("RGB", size, (200, 200, 200)).save(tmp_path / row["image"])
    records = read_regions(_write(tmp_path / "regions.jsonl", rows))
    return RegionsDataset(records, [tmp_path] * len(records), attribute_vocabulary(records), CFG, 3)


def test_each_token_gets_the_attributes_of_the_object_whose_centre_it_holds(tmp_path):
    rows = [
        {
            "image": "a.png",
            "objects": [
                {"x": 40.0, "y": 8.0, "color": "green", "shape": "circle", "region": "top right"},
                {"x": 8.0, "y": 40.0, "color": "red", "shape": "cross", "region": "bottom left"},
            ],
        }
    ]
    data = _dataset(tmp_path, rows)
    assert data.vocabulary == {"color": ["none", "green", "red"], "shape": ["none", "circle", "cross"]}
    sample = data[0]
    assert sample["pixel_values"].shape == (3, 48, 48)
    want = torch.zeros(9, 2, dtype=torch.long)
    want[2] = torch.tensor([1, 1])  # token (row 0, col 2): green circle
    want[6] = torch.tensor([2, 2])  # token (row 2, col 0): red cross
    assert torch.equal(sample["labels"], want)


def test_letterboxed_coordinates_and_disagreeing_objects(tmp_path):
    # a 96 x 48 image letterboxed into 48 x 48: x halves, y halves and moves down by 12 pixels
    rows = [
        {
            "image": "wide.png",
            "objects": [
                {"x": 90.0, "y": 2.0, "color": "red", "shape": "circle"},  # -> (45, 13): token (0, 2)
                {"x": 4.0, "y": 46.0, "color": "red", "shape": "square"},  # -> (2, 35): token (2, 0)
                {"x": 6.0, "y": 44.0, "color": "blue", "shape": "square"},  # same token, other colour
            ],
        }
    ]
    labels = _dataset(tmp_path, rows, size=(96, 48))[0]["labels"]
    assert labels[2].tolist() == [2, 1]
    assert labels[6].tolist() == [IGNORE, 2]  # the colours disagree; the shapes agree
    assert labels[[0, 1, 3, 4, 5, 7, 8]].eq(0).all()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"regions\.jsonl:2: not JSON"),
        ('{"objects": []}', r"regions\.jsonl:2: image: expected an image path"),
        ('{"image": "a.png", "objects": {}}', r"regions\.jsonl:2: objects: expected a list"),
        ('{"image": "a.png", "objects": [{"x": 1, "color": "red"}]}', r"regions\.jsonl:2: objects\.0\.y"),
        ('{"image": "a.png", "objects": [{"x": 1, "y": NaN}]}', r"regions\.jsonl:2: objects\.0\.y"),
    ],
)
def test_a_malformed_line_is_named_with_its_field(tmp_path, line, message):
    good = {"image": "a.png", "objects": [{"x": 1, "y": 1, "color": "red"}]}
    path = _write(tmp_path / "regions.jsonl", [good, line])
    with pytest.raises(ValueError, match=message):
        read_regions(path)


def test_objects_without_string_attributes_are_refused(tmp_path):
    records = read_regions(
        _write(tmp_path / "regions.jsonl", [{"image": "a.png", "objects": [{"x": 1, "y": 1}]}])
    )
    with pytest.raises(ValueError, match="no string attributes"):
        attribute_vocabulary(records)


def test_a_missing_or_corrupt_image_is_skipped_not_fatal(tmp_path):
    rows = [{"image": f"{n}.png", "objects": [{"x": 8, "y": 8, "color": "red"}]} for n in range(3)]
    data = _dataset(tmp_path, rows)
    (tmp_path / "1.png").write_bytes(b"not a png")
    (tmp_path / "2.png").unlink()
    assert isinstance(data[0], dict)
    assert data[1].reason.value == "unreadable image" and data[2].reason.value == "missing image"


def test_token_features_average_each_tokens_patches():
    model = build_model("tiny-shapes", vision={"image_size": 48}).eval()
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        pooled = token_features(model, pixels)
        patches = model.visual_tokenizer.backbone(
            pixel_values=pixels, output_hidden_states=True
        ).hidden_states[-1]
    assert pooled.shape == (2, 9, model.config.vision_config.hidden_size)
    grid = patches.view(2, 6, 6, -1)
    torch.testing.assert_close(pooled[:, 4], grid[:, 2:4, 2:4].mean(dim=(1, 2)))  # the centre token


REGIONS = {
    "name": "stage0-regions",
    "data": [{"path": "scenes_train.jsonl", "format": "regions"}],
    "module_lr": {"visual_tokenizer.backbone": 2e-3},
    "max_steps": 30,
    "batch_size": 16,
}
CAPTIONS = {
    "name": "stage1",
    "data": [{"path": "captions_train.jsonl", "format": "caption"}],
    "module_lr": {"all": 1e-3},
    "max_steps": 1,
    "batch_size": 2,
    "max_length": 96,
}


def regions_recipe(tmp_path: Path, name: str, connector: str = "vet", steps: int = 30) -> Recipe:
    data = {
        "model": {
            "preset": "tiny-shapes",
            "overrides": {"connector": connector, "vision": {"image_size": 48}},
            "tokenizer": {"train_on": "corpus.txt", "vocab_size": 320},
        },
        "generate": {"source": "shapes", "config": {"n_train": 48, "n_test": 7, "image_size": 48}},
        "data_root": str(tmp_path / "data"),
        "output_dir": str(tmp_path / name),
        "stage_cache": str(tmp_path / "cache"),
        "stages": [{**REGIONS, "max_steps": steps}, CAPTIONS],
        "report_to": [],
    }
    return parse(Recipe, data, "")


def test_the_stage_trains_the_backbone_alone_and_a_second_run_reuses_it(tmp_path):
    first = train(regions_recipe(tmp_path, "vet"), progress=False)
    stage = first["stages"][0]
    assert "cached" not in stage and stage["final_loss"] < 0.6 * stage["first_loss"]
    assert set(stage["region_accuracy"]) == {"color", "shape", "size"}
    assert stage["region_accuracy"]["size"] > 0.6  # large vs small, on the tokens that hold an object

    (entry,) = (tmp_path / "cache").iterdir()
    assert entry.name.startswith("stage0-regions-") and (entry / "backbone.safetensors").is_file()
    second = train(regions_recipe(tmp_path, "mlp", connector="mlp"), progress=False)
    assert second["stages"][0]["cached"] == str(entry)
    assert not (tmp_path / "mlp" / "stage0-regions").exists()  # not retrained
    trained = load_file(tmp_path / "vet" / "stage0-regions" / "final" / "model.safetensors")
    cached = load_file(entry / "backbone.safetensors")
    for name, value in cached.items():  # what the second run started from is the first run's stage 0
        torch.testing.assert_close(value, trained[f"visual_tokenizer.backbone.{name}"], rtol=0, atol=0)
    third = train(regions_recipe(tmp_path, "longer", steps=31), progress=False)  # another stage spec
    assert "cached" not in third["stages"][0]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_only_the_backbone_moves_and_the_heads_are_thrown_away(tmp_path):
    from accelerate import Accelerator

    from openovis.data.shapes import ShapesConfig, generate_shapes_world
    from openovis.training.regions import regions_dataset, train_regions_stage

    generate_shapes_world(tmp_path, ShapesConfig(n_train=16, n_test=7, image_size=48), progress=False)
    model = build_model("tiny-shapes", vision={"image_size": 48})
    stage = parse(StageSpec, {**REGIONS, "max_steps": 3, "batch_size": 4}, "")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = regions_dataset(stage, model, CFG, tmp_path)
    with warnings.catch_warnings(record=True) as caught:  # the demo's console shows none
        warnings.simplefilter("always")
        result = train_regions_stage(Accelerator(cpu=True), model, stage, data, seed=0, progress=False)
    assert [str(w.message) for w in caught] == []
    assert len(result.losses) == 3 and result.tokens == 12  # images
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved and all(n.startswith("visual_tokenizer.backbone.") for n in moved)
    assert set(before) == {n for n, _ in model.named_parameters()}  # no head was left on the model
    assert all(p.requires_grad for p in model.parameters())  # the next stage decides what trains


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (
            {**REGIONS, "data": [*REGIONS["data"], CAPTIONS["data"][0]]},
            r"stages\.0\.data: regions files cannot be mixed",
        ),
        ({**REGIONS, "module_lr": {"all": 1e-3}}, r"stages\.0\.module_lr: a regions stage trains only"),
        ({**REGIONS, "lora": {"r": 4}}, r"stages\.0\.lora: a regions stage"),
    ],
)
def test_recipe_refuses_a_regions_stage_that_would_train_more(stage, message):
    data = {"model": {"preset": "tiny-shapes", "tokenizer": "t"}, "stages": [stage]}
    with pytest.raises(ValueError, match=message):
        parse(Recipe, data, "")


def test_a_navit_model_is_refused():
    from openovis.training.regions import check_regions_stage

    model = build_model("ovis2.5-2b", scale_down=True)
    with pytest.raises(ValueError, match="NaViT"):
        check_regions_stage(model, parse(StageSpec, REGIONS, ""), "stages.0")
