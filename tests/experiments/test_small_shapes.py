"""The GPU-sized `small-shapes` recipe: its own Shapes World settings, and its stages run (shrunk, on CPU)."""

from __future__ import annotations

import copy

from openovis.experiments.ablation import AblationConfig
from openovis.experiments.grid import recipe_data
from openovis.training.recipe import Recipe, parse
from openovis.training.run import train

SHRINK = {
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
    "text": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    },
    "visual_vocab_size": 64,
    "mlp_hidden_size": 64,
}


def test_the_recipe_gets_a_workspace_of_its_own_data(tmp_path):
    small = AblationConfig("connector", tmp_path, recipe="small-shapes").workspace()
    demo = AblationConfig("connector", tmp_path).workspace()
    assert small.shapes == {"seed": 0, "image_size": 128, "n_train": 20000}
    assert demo.shapes == {
        "seed": 0,
        "image_size": 48,
        "n_test": 1050,
        "simple_qa_types": ["color", "shape", "count", "position"],
    }
    assert small.data != demo.data and small.tokenizer != demo.tokenizer
    assert small.base("small-shapes")["generate"]["config"]["image_size"] == 128


def test_the_recipe_trains_through_both_stages_shrunk_on_cpu(tmp_path):
    data = copy.deepcopy(recipe_data("small-shapes"))
    data["model"]["overrides"].update(SHRINK)
    data["generate"]["config"].update(n_train=8, n_test=7)
    for stage in data["stages"]:
        stage.update(max_steps=2, batch_size=2)
    data.update(
        precision="fp32", data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "run"), report_to=[]
    )
    summary = train(parse(Recipe, data, ""), progress=False)
    assert [s["stage"] for s in summary["stages"]] == ["stage3a-see", "stage3b-qa"]
    assert all(s["steps"] == 2 for s in summary["stages"])
    assert (tmp_path / "data" / "images" / "train").is_dir()
    from PIL import Image

    first = sorted((tmp_path / "data" / "images" / "train").iterdir())[0]
    assert Image.open(first).size == (128, 128)
