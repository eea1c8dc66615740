import pytest
from transformers import LlamaConfig, Siglip2VisionConfig

from openovis import OvisConfig, build_config


def test_round_trip_through_dict(tmp_path):
    config = build_config("tiny")
    config.save_pretrained(tmp_path)
    loaded = OvisConfig.from_pretrained(tmp_path)
    assert type(loaded.vision_config) is type(config.vision_config)
    assert type(loaded.text_config) is type(config.text_config)
    assert loaded.to_dict() == config.to_dict()


def test_derived_sizes():
    config = build_config("tiny")  # 64-px crops, 8-px patches, s = 2
    assert config.patch_grid == 8
    assert config.visual_tokens_per_crop == 16
    assert config.visual_feature_size == config.vision_config.hidden_size * 4
    odd = build_config("ovis1.6-gemma2-9b-like")  # 384 / 14 = 27 patches per side, padded to 28
    assert odd.visual_tokens_per_crop == 196


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tokenize_function", "sparsemax"),
        ("connector", "qformer"),
        ("vet_impl", "fast"),
        ("backbone_feature", "final"),
        ("hidden_stride", 0),
        ("visual_vocab_size", 5),
        ("tokenize_temperature", 0.0),
        ("indicator_tokens", ["<a>"]),
        ("indicator_token_ids", [1, 2]),
        ("image_atom_id", 10**6),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        build_config("tiny", **{field: value})


def test_unknown_model_type_names_the_field():
    with pytest.raises(ValueError, match="vision_config.model_type"):
        OvisConfig(vision_config={"model_type": "no_such_model"}, text_config=LlamaConfig())


def test_override_of_missing_subconfig_field_is_named():
    with pytest.raises(ValueError, match="text.no_such_field"):
        build_config("tiny", text={"no_such_field": 1})
    with pytest.raises(ValueError, match="no_such_field"):
        build_config("tiny", no_such_field=1)


def test_vision_config_needs_sizes():
    vision = Siglip2VisionConfig()  # NaFlex: no fixed image size unless one is given
    with pytest.raises(ValueError, match="vision_config.image_size"):
        OvisConfig(vision_config=vision, text_config=LlamaConfig())
