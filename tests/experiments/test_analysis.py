"""Visual-word analysis: nearest text tokens, patch boxes, image lists, then `run_analysis` on a tiny saved model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from openovis import build_model
from openovis.constants import IMAGE_ATOM, IMAGE_PLACEHOLDER
from openovis.data.shapes import ShapesConfig, generate_shapes_world
from openovis.data.text_tokenizer import train_text_tokenizer
from openovis.experiments.analysis import run_analysis
from openovis.experiments.analysis.collect import analysis_images, crop_to_image, token_box
from openovis.experiments.analysis.statistics import nearest_text_tokens
from openovis.modeling.visual_words import visual_word_probabilities
from openovis.processing.image import load_image, process_image
from openovis.processing.processor import OvisProcessor

# --------------------------------------------------------------------------- nearest text tokens, patch boxes


def test_nearest_text_tokens_on_a_hand_built_table():
    text = torch.tensor(
        [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0], [-1.0, 0, 0], [2.0, 0, 0.1]]
    )  # [V=6, D=3]
    vet = torch.tensor([[3.0, 0, 0], [0, 0, -2.0], [0, 5.0, 0.0]])  # [K=3, D]
    near = nearest_text_tokens(vet, text, words=[0, 2], m=2, center=False)
    assert [t["id"] for t in near[0]] == [0, 5]  # along x: the exact direction, then almost
    assert near[0][0]["cosine"] == pytest.approx(1.0) and near[0][0]["token"] is None
    assert [t["id"] for t in near[1]] == [1, 3]
    assert near[1][1]["cosine"] == pytest.approx(1 / math.sqrt(2))
    assert [t["id"] for t in nearest_text_tokens(vet, text, [0], m=2, exclude=[0], center=False)[0]] == [5, 3]

    class FiveTokens:  # a tokenizer shorter than the table: row 5 is padding
        def __len__(self) -> int:
            return 5

        def decode(self, ids: list[int]) -> str:
            return "abcde"[ids[0]]

    near = nearest_text_tokens(vet, text, [0], m=2, tokenizer=FiveTokens(), center=False)
    assert [(t["id"], t["token"]) for t in near[0]] == [(0, "a"), (3, "d")]


def test_nearest_text_tokens_compare_directions_around_the_mean_text_embedding():
    offset = torch.tensor([0.0, 0.0, 10.0])  # every text row shares it: raw cosines are all close to 1
    text = offset + torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [0, -1.0, 0]])  # mean = offset
    vet = (offset + torch.tensor([0.2, 0.9, 0])).unsqueeze(0)  # [1, D]
    near = nearest_text_tokens(vet, text, [0], m=4)
    assert [t["id"] for t in near[0]] == [1, 0, 2, 3]
    assert near[0][0]["cosine"] == pytest.approx(0.9 / math.hypot(0.2, 0.9))
    raw = nearest_text_tokens(vet, text, [0], m=4, center=False)
    assert min(t["cosine"] for t in raw[0]) > 0.98


def test_token_box_follows_the_hidden_stride_merge():
    # 64-px crops of 8-px patches, s = 2: a 4×4 grid of 16-px visual tokens.
    assert token_box(0, 64, 8, 2) == (0, 0, 16, 16)
    assert token_box(5, 64, 8, 2) == (16, 16, 32, 32)
    assert token_box(15, 64, 8, 2) == (48, 48, 64, 64)
    # 384-px crops of 14-px patches: 27 patches per side (378 px), padded to 28 for s = 2: the last
    # column of tokens covers one real patch column.
    assert token_box(13, 384, 14, 2) == (364, 0, 378, 28)
    assert token_box(3, 448, 14, 1) == (42, 0, 56, 14)
    with pytest.raises(ValueError, match="token"):
        token_box(16, 64, 8, 2)


def test_crop_to_image_undoes_the_normalization():
    rgb = torch.tensor([200, 100, 0], dtype=torch.float32) / 255
    mean, std = (0.5, 0.4, 0.3), (0.5, 0.2, 0.1)
    pixels = ((rgb - torch.tensor(mean)) / torch.tensor(std)).view(3, 1, 1).expand(3, 2, 2)
    assert crop_to_image(pixels, mean, std)[1, 1].tolist() == [200, 100, 0]


# --------------------------------------------------------------------------- image lists


def test_analysis_images_from_a_data_file_or_a_folder(tmp_path):
    rows = [
        {"image": "a.png", "caption": "x"},
        {"image": "../outside.png", "caption": "never read"},
        {"images": ["b.png", "a.png"], "conversations": []},
        {"caption": "no image"},
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    assert analysis_images(data) == [(tmp_path / "a.png").resolve(), (tmp_path / "b.png").resolve()]
    assert analysis_images(data, max_images=1) == [(tmp_path / "a.png").resolve()]
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for name in ("imgs/z.png", "imgs/sub/a.jpg", "imgs/notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert analysis_images(images=tmp_path / "imgs") == [tmp_path / "imgs/sub/a.jpg", tmp_path / "imgs/z.png"]
    with pytest.raises(ValueError, match="either data"):
        analysis_images()
    with pytest.raises(ValueError, match="either data"):
        analysis_images(data, images=tmp_path / "imgs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        analysis_images(images=tmp_path / "empty")


# --------------------------------------------------------------------------- run_analysis


def _save_model(folder: Path, corpus: Path, **overrides) -> Path:
    tokenizer = train_text_tokenizer(corpus.read_text().splitlines(), vocab_size=300)
    model = build_model("tiny", tokenizer=tokenizer, **overrides)
    with torch.no_grad():  # a sharper head than at initialization: a few words dominate, as after training
        if model.config.connector == "vet":
            model.connector.head[1].weight.mul_(8.0)
    model.save_pretrained(folder)
    OvisProcessor.from_model_config(model.config, tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("analysis")
    generate_shapes_world(root / "data", ShapesConfig(n_train=7, n_test=14), progress=False)
    _save_model(root / "model", root / "data" / "corpus.txt")
    return root


@pytest.fixture(scope="module")
def analysis(world) -> dict:
    return run_analysis(
        world / "model", world / "data" / "qa_test_id.json", world / "out", max_images=10, progress=False
    )


def test_run_analysis_writes_the_report_and_consistent_numbers(world, analysis):
    out = world / "out"
    for name in ("analysis.md", "analysis.json", *analysis["figures"].values()):
        assert (out / name).stat().st_size > 0, name
    assert set(analysis["figures"]) == {"token_distributions", "usage", "visual_words", "gallery"}
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["tokens"] == analysis["tokens"] == 10 * 16  # 10 one-crop images, 4×4 visual tokens each
    assert saved["images"] == 10 and saved["crops"] == 10 and saved["words"] == 256 - 5
    assert 0 <= saved["entropy"]["mean"] <= math.log(251)
    assert 1 <= saved["effective_vocabulary"] <= 251
    assert len(saved["usage_mass"]) == 251 and sum(saved["usage_mass"]) == pytest.approx(1.0, abs=1e-4)
    assert sum(saved["top_counts"]) == saved["tokens"]
    assert sum(saved["entropy_histogram"]["counts"]) == saved["tokens"]
    words = [w["word"] for w in saved["inspected_words"]]
    masses = [w["mass"] for w in saved["inspected_words"]]
    assert len(words) == 20 and masses == sorted(masses, reverse=True)
    tokenizer = OvisProcessor.from_pretrained(world / "model").tokenizer
    reserved = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    assert {tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_PLACEHOLDER, IMAGE_ATOM)} <= reserved
    for word in saved["inspected_words"]:
        assert len(word["nearest_text_tokens"]) == 5
        assert not reserved & {t["id"] for t in word["nearest_text_tokens"]}
    report = (out / "analysis.md").read_text()
    for name in analysis["figures"].values():
        assert f"]({name})" in report
    assert "| 1 | " in report and "effective vocabulary" in report


def test_gallery_examples_are_the_tokens_that_give_the_word_its_highest_probability(world, analysis):
    from openovis.inference import OvisPipeline

    pipeline = OvisPipeline.from_pretrained(world / "model", device="cpu")
    config = pipeline.processor.image_config
    for row in analysis["gallery"][:2]:
        probs = [e["probability"] for e in row["examples"]]
        assert probs == sorted(probs, reverse=True) and len(probs) == 8
        for example in row["examples"][:2]:
            pixels = process_image(load_image(example["image"]), config).pixel_values  # [C, 3, S, S]
            with torch.no_grad():
                token_probs = visual_word_probabilities(pipeline.model, pixels)  # [C, T, K']
            actual = token_probs[example["crop"], example["token"], row["word"]]
            assert float(actual) == pytest.approx(example["probability"], rel=1e-4)


def test_run_analysis_checks_its_inputs(world, tmp_path):
    mlp = _save_model(tmp_path / "mlp", world / "data" / "corpus.txt", connector="mlp")
    with pytest.raises(ValueError, match=r"analysis needs a VET model \(connector: vet\)"):
        run_analysis(mlp, images=world / "data" / "images", out=tmp_path / "out")
    with pytest.raises(ValueError, match="words"):
        run_analysis(world / "model", images=world / "data" / "images", out=tmp_path / "out", words=[251])
    with pytest.raises(ValueError, match="either data"):
        run_analysis(world / "model", out=tmp_path / "out")
