"""Image token layout: exact order, counts, and agreement with transformers' Ovis2Processor."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from openovis.constants import IMAGE_ATOM, INDICATOR_TOKENS_OVIS1, INDICATOR_TOKENS_OVIS2
from openovis.processing.image import num_crops
from openovis.processing.layout import check_indicators, count_layout_tokens, image_layout_tokens

START, GRID, COL, ROW, END = INDICATOR_TOKENS_OVIS2
A = IMAGE_ATOM
ALL_GRIDS = [(r, c) for r in range(1, 10) for c in range(1, 10) if r * c <= 9]


def test_one_by_one_grid_is_t_plus_three_tokens() -> None:
    tokens = image_layout_tokens((1, 1), 4, INDICATOR_TOKENS_OVIS2)
    assert tokens == [START, A, A, A, A, GRID, END]
    assert count_layout_tokens((1, 1), 4) == 4 + 3


def test_two_by_two_grid() -> None:
    t = 3
    tokens = image_layout_tokens((2, 2), t, INDICATOR_TOKENS_OVIS2)
    # thumbnail + 4 tiles, START + GRID + END, 2 COL (one per row), 1 ROW
    assert len(tokens) == (1 + 4) * t + 3 + 2 + 1 == count_layout_tokens((2, 2), t)
    assert tokens.count(COL) == 2 and tokens.count(ROW) == 1 and tokens.count(A) == 5 * t


def test_exact_order_of_a_two_by_three_grid() -> None:
    expected = [START, A, GRID, A, COL, A, COL, A, ROW, A, COL, A, COL, A, END]
    assert image_layout_tokens((2, 3), 1, INDICATOR_TOKENS_OVIS2) == expected


@pytest.mark.parametrize("grid", ALL_GRIDS)
def test_counts_match_the_layout_and_the_crops(grid: tuple[int, int]) -> None:
    tokens = image_layout_tokens(grid, 5, INDICATOR_TOKENS_OVIS2)
    assert len(tokens) == count_layout_tokens(grid, 5)
    assert tokens.count(A) == num_crops(grid) * 5


@pytest.mark.parametrize("grid", ALL_GRIDS)
def test_matches_transformers_ovis2_processor(grid: tuple[int, int]) -> None:
    from transformers.models.ovis2.processing_ovis2 import Ovis2Processor

    fake_self = SimpleNamespace(image_seq_length=3)
    reference = Ovis2Processor.replace_image_token(fake_self, {"grids": [torch.tensor(grid)]}, 0)
    assert "".join(image_layout_tokens(grid, 3, INDICATOR_TOKENS_OVIS2)) == reference


def test_ovis1_layout() -> None:
    assert image_layout_tokens((1, 1), 2, INDICATOR_TOKENS_OVIS1) == ["<IMG_START>", A, A, "<IMG_END>"]
    assert count_layout_tokens((1, 1), 2, num_indicators=2) == 4
    with pytest.raises(ValueError, match="max_partition"):
        image_layout_tokens((1, 2), 2, INDICATOR_TOKENS_OVIS1)
    with pytest.raises(ValueError, match="max_partition"):
        check_indicators(INDICATOR_TOKENS_OVIS1, max_partition=9)


@pytest.mark.parametrize("indicators", [("<a>", "<b>", "<c>"), ("<a>", "<a>"), ()])
def test_bad_indicator_sets(indicators: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="indicator_tokens"):
        check_indicators(indicators)
