"""The trainer's data set-up: generated data and a tokenizer trained on the data, declared by the recipe."""

from __future__ import annotations

import json

from openovis.data.generated import RECORD
from openovis.training.recipe import Recipe, parse
from openovis.training.run import prepare_data_root, prepare_tokenizer


class MainProcess:
    """The two things of an `accelerate.Accelerator` the set-up uses, for one process."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def _recipe(tmp_path, **top) -> Recipe:
    stage = {"name": "s", "data": [{"path": "corpus.txt", "format": "text"}], "module_lr": {"llm": 1e-3}}
    data = {
        "stages": [stage],
        "data_root": str(tmp_path / "data"),
        "output_dir": str(tmp_path / "run"),
        **top,
    }
    return parse(Recipe, data, "")


def test_generated_data_and_a_tokenizer_trained_on_it(tmp_path):
    recipe = _recipe(
        tmp_path,
        generate={"source": "shapes", "config": {"n_train": 6, "n_test": 7}},
        model={"preset": "tiny", "tokenizer": {"train_on": "corpus.txt", "vocab_size": 300}},
    )
    root = prepare_data_root(recipe, MainProcess(), progress=False)
    assert root == tmp_path / "data" and (root / "corpus.txt").exists()
    assert json.loads((root / RECORD).read_text())["config"]["n_train"] == 6
    tokenizer = prepare_tokenizer(recipe, root, MainProcess())
    assert len(tokenizer) == 300 and (tmp_path / "run" / "tokenizer" / "tokenizer.json").exists()


def test_a_shared_tokenizer_folder_is_reused(tmp_path):
    shared = tmp_path / "shared"
    spec = {"train_on": "missing.txt", "folder": str(shared)}
    recipe = _recipe(tmp_path, model={"preset": "tiny", "tokenizer": spec})
    from openovis.data.text_tokenizer import byte_level_tokenizer

    byte_level_tokenizer(shared)  # already there: not trained again (its corpus does not even exist)
    assert prepare_data_root(recipe, MainProcess()) == tmp_path / "data"  # nothing generated
    assert not (tmp_path / "data").exists()
    assert len(prepare_tokenizer(recipe, tmp_path / "data", MainProcess())) == len(byte_level_tokenizer())
