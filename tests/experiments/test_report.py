"""The demo report's baselines and its plain-language reading of the numbers."""

from __future__ import annotations

import json

import pytest

from openovis.evaluation.runner import majority_levels
from openovis.experiments.report import ABOVE_CHANCE, accuracy_table, reading


def test_majority_levels_is_the_best_constant_answer(tmp_path):
    records = [
        {
            "image": "a.png",
            "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": a}],
            "answer": a,
            "type": t,
        }
        for t, a in [("color", "red"), ("color", "Red"), ("color", "blue"), ("count", "2"), ("count", "3")]
    ]
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(records))
    assert majority_levels(path) == {"color": pytest.approx(2 / 3), "count": 0.5}


def _results(vet_color: float, mlp_color: float) -> dict:
    def cell(color):
        return {"in-distribution": {"color": (color, 0.0), "count": (0.5, 0.0), "overall": (color, 0.0)}}

    stage = lambda name, loss: {"stage": name, "final_loss": loss, "steps": 10, "first_loss": 2 * loss}  # noqa: E731
    return {
        "table": {"vet": cell(vet_color), "mlp": cell(mlp_color)},
        "chance": {"color": 0.2, "count": 0.2},
        "majority": {"in-distribution": {"color": 0.3, "count": 0.45}},
        "config": {"seeds": 1},
        "runs": [
            {"connector": "vet", "stages": [stage("s1", 0.9)]},
            {"connector": "mlp", "stages": [stage("s1", 1.1)]},
        ],
    }


def test_reading_compares_with_the_stricter_baseline():
    lines = reading(_results(vet_color=0.3 + ABOVE_CHANCE + 0.01, mlp_color=0.3 + ABOVE_CHANCE - 0.01))
    assert lines[0].startswith("VET answers color clearly")  # count: 0.5 is only 0.05 above the constant 0.45
    assert lines[1].startswith(
        "MLP is nowhere more than"
    )  # above chance + margin, but not above the constant + margin
    assert lines[2] == "s1: final loss VET 0.900, MLP 1.100 (lower: VET)."


def test_a_stage_shared_through_the_stage_cache_is_not_compared():
    results = _results(0.5, 0.5)
    shared = {"stage": "s0", "final_loss": 0.01, "steps": 10, "first_loss": 0.5}
    results["runs"][0]["stages"].insert(0, shared)
    results["runs"][1]["stages"].insert(0, {**shared, "cached": "/cache/s0-abc"})
    lines = reading(results)
    assert "s0: shared by every run (stage cache), final loss 0.010." in lines
    assert "s1: final loss VET 0.900, MLP 1.100 (lower: VET)." in lines


def test_accuracy_table_shows_both_baselines():
    table = accuracy_table(_results(0.9, 0.4))
    assert "| type | chance | constant | VET in-distribution | MLP in-distribution |" in table
    assert "| color | 0.200 | 0.300 | 0.900 | 0.400 |" in table


def _seeded(vet: list[float], mlp: list[float], vet_gap: list[float], mlp_gap: list[float]) -> dict:
    from openovis.experiments.tables import mean_std

    runs = [
        {"label": label, "image_check": {"gap": g}}
        for label, gaps in (("vet", vet_gap), ("mlp", mlp_gap))
        for g in gaps
    ]
    table = {
        label: {"in-distribution": {"overall": mean_std(v)}} for label, v in (("vet", vet), ("mlp", mlp))
    }
    return {"table": table, "runs": runs, "seeds": len(vet)}


def test_seed_spread_lines_say_whether_a_difference_is_outside_the_spread():
    from openovis.experiments.tables import seed_spread_lines

    apart = seed_spread_lines(
        _seeded([0.40, 0.41, 0.42], [0.60, 0.61, 0.62], [0.1, 0.1, 0.1], [0.1, 0.2, 0.3])
    )
    assert apart == [
        "mlp vs vet (in-distribution, 3 seeds): overall +0.200 (0.610 ± 0.010 vs 0.410 ± 0.010), outside the "
        "seed spread; image gap +0.100 nats, within the seed spread."
    ]
    close = seed_spread_lines(_seeded([0.40, 0.50, 0.60], [0.45, 0.55, 0.65], [0.1] * 3, [0.1] * 3))
    assert "overall +0.050" in close[0] and "within the seed spread" in close[0]
    one = seed_spread_lines(_seeded([0.4], [0.6], [0.1], [0.1]))
    assert one == ["One seed: differences between vet, mlp cannot be told from seed noise."]
