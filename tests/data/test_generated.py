"""Generated datasets by name: validated configs, generated once, regenerated when the config changes."""

from __future__ import annotations

import json

import pytest

from openovis.data import generated
from openovis.data.generated import RECORD, generate_if_changed, generator_config
from openovis.data.shapes import ShapesConfig

SMALL = {"n_train": 5, "n_test": 7}


def test_config_errors_name_the_setting():
    assert generator_config("shapes", {"seed": 2}) == ShapesConfig(seed=2)
    with pytest.raises(ValueError, match="source: unknown generator 'mnist'; registered: shapes"):
        generator_config("mnist", {})
    with pytest.raises(ValueError, match="config.n_images: unknown setting of shapes"):
        generator_config("shapes", {"n_images": 3})
    with pytest.raises(ValueError, match="config.n_train: must be in"):
        generator_config("shapes", {"n_train": 0})


def test_generates_once_then_again_when_the_config_changes(tmp_path, monkeypatch):
    calls = []
    real = generated.GENERATORS["shapes"]
    counting = generated.DataGenerator(
        real.config, lambda *a, **k: calls.append(a[1]) or real.generate(*a, **k), real.description
    )
    monkeypatch.setitem(generated.GENERATORS, "shapes", counting)
    assert generate_if_changed(tmp_path, "shapes", SMALL, progress=False)
    assert (tmp_path / "qa_train.json").exists()
    record = json.loads((tmp_path / RECORD).read_text())
    assert record["source"] == "shapes" and record["config"]["n_train"] == 5
    assert not generate_if_changed(tmp_path, "shapes", {**SMALL, "seed": 0}, progress=False)  # same config
    assert generate_if_changed(tmp_path, "shapes", {**SMALL, "seed": 1}, progress=False)
    (tmp_path / RECORD).write_text("{broken")  # an unreadable record means: generate again
    assert generate_if_changed(tmp_path, "shapes", {**SMALL, "seed": 1}, progress=False)
    assert [c.seed for c in calls] == [0, 1, 1]
