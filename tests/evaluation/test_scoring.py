import math

import pytest

from openovis.evaluation.scoring import exact_match, normalize, option_letter, score


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Red.", "red"),
        ("  top   LEFT ", "top left"),
        ("three", "3"),
        ("Yes!", "yes"),
        ("a circle", "circle"),
    ],
)
def test_normalize(text, expected):
    assert normalize(text) == expected


def test_exact_match_is_strict_after_normalization():
    assert exact_match("Red.", "red")
    assert not exact_match("dark red", "red")
    assert exact_match("There are three", "there are 3")


@pytest.mark.parametrize(
    ("prediction", "letter"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(C)", "C"),
        ("A. red", "A"),
        ("Answer: D", "D"),
        ("blue", "B"),
        ("purple", None),
        ("Banana", None),
    ],
)
def test_option_letter(prediction, letter):
    assert option_letter(prediction, ["red", "blue", "green", "yellow"]) == letter


def test_letters_beyond_the_options_do_not_count():
    assert option_letter("E", ["x", "y"]) is None


def test_per_type_breakdown_and_chance():
    records = [
        {"prediction": "red", "answer": "red", "type": "color"},
        {"prediction": "blue", "answer": "red", "type": "color"},
        {"prediction": "B", "answer": "B", "type": "mcq", "options": ["a", "b", "c", "d"]},
        {"prediction": "yes", "answer": "yes", "type": "exist"},
    ]
    b = score(records)
    assert b.accuracy("color") == 0.5 and b.accuracy("mcq") == 1.0
    assert b.overall == 0.75
    d = b.as_dict({"color": 1 / 6, "exist": 0.5})
    assert d["per_type"]["color"] == {"accuracy": 0.5, "n": 2, "chance": 1 / 6}
    assert d["per_type"]["mcq"]["chance"] is None
    assert math.isnan(score([]).overall)
