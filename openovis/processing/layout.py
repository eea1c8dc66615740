"""Token layout of one image in the text sequence (DESIGN §2, ``openovis.constants``).

With the five Ovis2 indicators ``(START, GRID, COL, ROW, END)`` and T atoms per crop::

    <IMG_START> atoms(crop 0) <IMG_GRID> [atoms(crop 1) <IMG_COL> atoms(crop 2) ... <IMG_ROW> ...] <IMG_END>

``<IMG_GRID>`` is always present (official Ovis2 ``construct_image_placeholders`` and
transformers' ``Ovis2Processor`` both emit it for a 1 x 1 grid too); the bracketed tile part only
appears when the grid has more than one tile, in which case crop 0 is the global thumbnail.
Token count: ``(1 + rows*cols) * T + 3 + rows*(cols-1) + (rows-1)`` for a multi-tile grid, ``T + 3``
for 1 x 1. With the two Ovis 1.0 indicators ``(START, END)``: ``<IMG_START> atoms <IMG_END>``,
``T + 2`` tokens, and only a 1 x 1 grid is allowed.

Native resolution (Ovis2.5, four indicators ``(IMG_START, IMG_END, VID_START, VID_END)``): an image
of ``gh x gw`` patches is one sequence of ``gh*gw/s²`` atoms, ``<IMG_START> atoms <IMG_END>``; the
"grid" of such an image is ``(gh, gw)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from openovis.constants import IMAGE_ATOM
from openovis.processing.image import Grid


def check_indicators(indicator_tokens: Sequence[str], max_partition: int = 1, native: bool = False) -> None:
    """Validates an indicator set against the grids it must lay out.

    Raises:
        ValueError: Not 2 or 5 distinct tokens (4 with ``native``), or 2 tokens with ``max_partition > 1``.
    """
    n = len(indicator_tokens)
    if native:
        if n != 4 or len(set(indicator_tokens)) != n:
            raise ValueError(
                f"indicator_tokens: native resolution (Ovis2.5) needs 4 distinct tokens, got {list(indicator_tokens)!r}"
            )
        return
    if n not in (2, 5) or len(set(indicator_tokens)) != n:
        raise ValueError(
            f"indicator_tokens: need 2 (Ovis 1.0) or 5 (Ovis2) distinct tokens, got {list(indicator_tokens)!r}"
        )
    if n == 2 and max_partition > 1:
        raise ValueError(
            f"max_partition: the 2-indicator (Ovis 1.0) layout has no grid tokens, so it must be 1, got {max_partition}"
        )


def image_layout_tokens(
    grid: Grid, tokens_per_crop: int, indicator_tokens: Sequence[str], atom_token: str = IMAGE_ATOM
) -> list[str]:
    """The token strings that stand for one image.

    Args:
        grid: (rows, cols) of the tile grid.
        tokens_per_crop: T, atoms per crop.
        indicator_tokens: 5 Ovis2 indicators (START, GRID, COL, ROW, END) or 2 Ovis 1.0 ones (START, END).
        atom_token: The atom token string.

    Returns:
        The layout, one string per text position.

    Raises:
        ValueError: A bad indicator set, or a multi-tile grid with the 2-indicator layout.
    """
    rows, cols = grid
    check_indicators(indicator_tokens, rows * cols)
    atoms = [atom_token] * tokens_per_crop
    if len(indicator_tokens) == 2:
        start, end = indicator_tokens
        return [start, *atoms, end]
    start, grid_token, col_token, row_token, end = indicator_tokens
    out = [start, *atoms, grid_token]
    if rows * cols > 1:
        for r in range(rows):
            for c in range(cols):
                out += atoms
                if c < cols - 1:
                    out.append(col_token)
            if r < rows - 1:
                out.append(row_token)
    out.append(end)
    return out


def native_layout_tokens(
    grid: Grid, hidden_stride: int, indicator_tokens: Sequence[str], atom_token: str = IMAGE_ATOM
) -> list[str]:
    """The token strings of one native-resolution image of ``grid = (gh, gw)`` patches:
    ``[IMG_START] + gh*gw/s² atoms + [IMG_END]`` (the official Ovis2.5 layout)."""
    check_indicators(indicator_tokens, native=True)
    gh, gw = grid
    start, end = indicator_tokens[:2]
    return [start, *[atom_token] * (gh * gw // hidden_stride**2), end]


def count_layout_tokens(grid: Grid, tokens_per_crop: int, num_indicators: int = 5) -> int:
    """Length of :func:`image_layout_tokens` without building it.

    Args:
        grid: (rows, cols).
        tokens_per_crop: T.
        num_indicators: 5 (Ovis2) or 2 (Ovis 1.0).
    """
    rows, cols = grid
    if num_indicators == 2:
        if rows * cols != 1:
            raise ValueError("max_partition: the 2-indicator layout only lays out a 1x1 grid")
        return tokens_per_crop + 2
    if num_indicators != 5:
        raise ValueError(f"indicator_tokens: need 2 or 5 indicators, got {num_indicators}")
    if rows * cols == 1:
        return tokens_per_crop + 3
    return (1 + rows * cols) * tokens_per_crop + 3 + rows * (cols - 1) + (rows - 1)
