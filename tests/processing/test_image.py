"""Image preprocessing: config validation, the official grid rule, letterbox geometry, modes, EXIF."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from openovis.processing.image import (
    ImageProcessingConfig,
    covering_ratio,
    load_image,
    num_crops,
    partition_boxes,
    process_image,
    select_grid,
    to_rgb,
)
from openovis.skips import SkipReason, SkipSample

ConfigFactory = Callable[..., ImageProcessingConfig]

# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_size", 0),
        ("patch_size", -1),
        ("hidden_stride", 0),
        ("max_partition", 0),
        ("image_mean", (0.5, 0.5)),
        ("image_std", (0.5, 0.0, 0.5)),
        ("covering_threshold", 1.5),
        ("resample", "cubic-ish"),
        ("letterbox", "yes"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(
    field: str, value: object, make_image_config: ConfigFactory
) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        make_image_config(**{field: value})


def test_config_rejects_image_smaller_than_patch() -> None:
    with pytest.raises(ValueError, match="^image_size"):
        ImageProcessingConfig(image_size=8, patch_size=14, hidden_stride=1)


@pytest.mark.parametrize(
    ("size", "patch", "stride", "tokens"),
    [
        (448, 14, 2, 256),  # Ovis2 / AIMv2-448
        (336, 14, 1, 576),  # Ovis 1.0 / CLIP-L-336
        (384, 14, 3, 81),  # SigLIP-384/14: 27 patches, padded to 27 -> 9 x 9
        (448, 14, 3, 121),  # 32 patches padded to 33 -> 11 x 11
        (28, 7, 2, 4),
    ],
)
def test_tokens_per_crop(size: int, patch: int, stride: int, tokens: int) -> None:
    cfg = ImageProcessingConfig(image_size=size, patch_size=patch, hidden_stride=stride)
    assert cfg.tokens_per_crop == tokens


def test_config_round_trips_through_dict(make_image_config: ConfigFactory) -> None:
    cfg = make_image_config(image_mean=0.4, max_partition=4, letterbox=False)
    assert cfg.image_mean == (0.4, 0.4, 0.4)
    assert ImageProcessingConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="^colour"):
        ImageProcessingConfig.from_dict({**cfg.to_dict(), "colour": 1})


# --------------------------------------------------------------------------- grid rule


def _official_best_grid(
    width: int, height: int, side: int, max_partition: int, threshold: float
) -> tuple[int, int]:
    """A literal transcription of the official Ovis2 ``_get_best_grid`` (with its ``_partition``)."""

    def partition(grid):
        row_height, col_width = height // grid[0], width // grid[1]
        out = []
        for row in range(grid[0]):
            for col in range(grid[1]):
                left, upper = col * col_width, row * row_height
                right = width if col == grid[1] - 1 else (col + 1) * col_width
                lower = height if row == grid[0] - 1 else (row + 1) * row_height
                out.append((left, upper, right, lower))
        return out

    def covering_area(left, upper, right, lower):
        w, h = right - left, lower - upper
        w, h = max(w, h), min(w, h)
        if w > side:
            h = h / w * side
            w = side
        return w * h

    candidates = [
        (i, j)
        for i in range(1, max_partition + 1)
        for j in range(1, max_partition + 1)
        if i * j <= max_partition
    ]
    all_grids, good = [], []
    for grid in candidates:
        ratio = sum(covering_area(*p) for p in partition(grid)) / (width * height)
        all_grids.append((grid, ratio))
        if ratio > threshold:
            good.append((grid, ratio))
    if good:
        return sorted(good, key=lambda x: (x[0][0] * x[0][1], -x[1]))[0][0]
    return sorted(all_grids, key=lambda x: (-x[1], x[0][0] * x[0][1]))[0][0]


@pytest.mark.parametrize(
    ("width", "height", "grid"),
    [
        (448, 448, (1, 1)),
        (896, 448, (1, 2)),  # two full tiles cover it exactly
        (448, 896, (2, 1)),
        (1344, 448, (1, 3)),
        (1000, 500, (2, 3)),  # 500 high x 1000 wide: 1x2, 1x3, 2x2 all keep only ~80% of the pixels
        (500, 1000, (3, 2)),
        (800, 600, (2, 2)),
        (1000, 1000, (3, 3)),
        (2000, 1000, (2, 4)),
        (10000, 10, (1, 9)),
        (100, 50, (1, 1)),  # small images are never split
        (1, 1, (1, 1)),
        (1, 1000, (3, 1)),
        (1000, 1, (1, 3)),
    ],
)
def test_select_grid_pinned(width: int, height: int, grid: tuple[int, int]) -> None:
    assert select_grid(width, height, 448, 9, 0.9) == grid


def test_select_grid_matches_the_official_rule_on_random_sizes() -> None:
    rng = random.Random(0)
    for _ in range(300):
        width, height = rng.randint(9, 4000), rng.randint(9, 4000)
        side, max_partition = rng.choice([28, 224, 448]), rng.choice([1, 4, 9, 12])
        expected = _official_best_grid(width, height, side, max_partition, 0.9)
        assert select_grid(width, height, side, max_partition, 0.9) == expected, (width, height, side)


def test_wide_images_get_columns_and_tall_images_rows() -> None:
    for long_side in (700, 1000, 1500, 3000):
        for short_side in (200, 300, 448):
            rows, cols = select_grid(long_side, short_side, 448)
            assert cols >= rows
            assert select_grid(short_side, long_side, 448) == (cols, rows)


def test_partition_covers_the_image_exactly() -> None:
    boxes = partition_boxes(101, 53, (2, 3))
    assert len(boxes) == 6
    assert sum((r - left) * (b - t) for left, t, r, b in boxes) == 101 * 53
    assert boxes[-1][2:] == (101, 53)
    assert covering_ratio(896, 448, (1, 2), 448) == 1.0


# --------------------------------------------------------------------------- crops


def _value(channel_value: int, mean: float = 0.5, std: float = 0.5) -> float:
    return (channel_value / 255.0 - mean) / std


def test_letterbox_centres_and_pads_with_zero_after_normalization(make_image_config: ConfigFactory) -> None:
    cfg = make_image_config(max_partition=1)  # S = 28
    out = process_image(Image.new("RGB", (56, 28), (255, 255, 255)), cfg)
    assert out.grid == (1, 1)
    pv = out.pixel_values
    assert pv.shape == (1, 3, 28, 28) and pv.dtype == torch.float32
    # 56 x 28 -> 28 x 14 content, top = (28 - 14) // 2 = 7.
    assert torch.all(pv[0, :, :7] == 0) and torch.all(pv[0, :, 21:] == 0)
    torch.testing.assert_close(pv[0, :, 7:21], torch.full((3, 14, 28), _value(255)))


def test_tall_image_pads_left_and_right(make_image_config: ConfigFactory) -> None:
    cfg = make_image_config(max_partition=1, image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))
    pv = process_image(Image.new("RGB", (7, 28), (255, 0, 0)), cfg).pixel_values[0]  # content 7 wide
    left = (28 - 7) // 2
    assert torch.all(pv[:, :, :left] == 0) and torch.all(pv[:, :, left + 7 :] == 0)
    torch.testing.assert_close(pv[0, :, left : left + 7], torch.ones(28, 7))


def test_thumbnail_comes_first_then_tiles_row_major(make_image_config: ConfigFactory) -> None:
    cfg = make_image_config()
    img = Image.new("RGB", (56, 28), (255, 0, 0))
    img.paste((0, 0, 255), (28, 0, 56, 28))  # left half red, right half blue
    out = process_image(img, cfg)
    assert out.grid == (1, 2) and out.num_crops == 3 == num_crops(out.grid)
    red, blue = out.pixel_values[1], out.pixel_values[2]
    assert torch.all(red[0] == _value(255)) and torch.all(red[2] == _value(0))
    assert torch.all(blue[2] == _value(255)) and torch.all(blue[0] == _value(0))
    thumb = out.pixel_values[0]
    assert torch.all(thumb[:, :7] == 0)  # the whole image, letterboxed
    assert thumb[0, 14, 2] > 0 and thumb[2, 14, 25] > 0  # red on the left, blue on the right


def test_max_partition_one_is_a_single_padded_image(make_image_config: ConfigFactory) -> None:
    cfg = make_image_config(max_partition=1)
    for size in [(1000, 30), (30, 1000), (28, 28), (500, 400)]:
        out = process_image(Image.new("RGB", size), cfg)
        assert out.grid == (1, 1) and out.pixel_values.shape == (1, 3, 28, 28)


@pytest.mark.parametrize("size", [(1, 1), (1, 1000), (1000, 1), (2, 3), (3, 2), (5000, 2)])
@pytest.mark.parametrize("letterbox", [True, False])
def test_tiny_and_extreme_images_do_not_crash(
    size: tuple[int, int], letterbox: bool, make_image_config: ConfigFactory
) -> None:
    cfg = make_image_config(letterbox=letterbox)
    out = process_image(Image.new("RGB", size, (10, 200, 30)), cfg)
    assert out.pixel_values.shape == (num_crops(out.grid), 3, 28, 28)
    assert torch.isfinite(out.pixel_values).all()


def test_stretch_mode_cuts_the_grid_canvas(make_image_config: ConfigFactory) -> None:
    cfg = make_image_config(letterbox=False, image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0))
    img = Image.new("RGB", (56, 28), (255, 0, 0))
    img.paste((0, 0, 255), (28, 0, 56, 28))
    out = process_image(img, cfg)
    assert out.grid == (1, 2)
    assert torch.all(out.pixel_values[1, 0] == 1.0) and torch.all(out.pixel_values[2, 2] == 1.0)
    assert (out.pixel_values[0].sum(0) > 0).all()  # the thumbnail is stretched: no padding anywhere


# --------------------------------------------------------------------------- modes


def _mode_images() -> dict[str, Image.Image]:
    rgba = Image.new("RGBA", (6, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black pixel
    palette = Image.new("P", (6, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.info["transparency"] = 0
    i16 = Image.fromarray(np.full((4, 6), 32896, dtype=np.uint16))
    i32 = Image.fromarray(np.full((4, 6), 65535, dtype=np.int32))
    f32 = Image.fromarray(np.full((4, 6), 0.5, dtype=np.float32))
    return {
        "1": Image.new("1", (6, 4), 1),
        "L": Image.new("L", (6, 4), 77),
        "LA": Image.new("LA", (6, 4), (0, 0)),
        "La": Image.new("La", (6, 4), (0, 0)),
        "P": palette,
        "PA": Image.new("PA", (6, 4), (0, 0)),
        "RGBA": rgba,
        "RGBa": Image.new("RGBa", (6, 4), (0, 0, 0, 0)),
        "I": i32,
        "I;16": i16,
        "F": f32,
        "CMYK": Image.new("CMYK", (6, 4), (0, 0, 0, 0)),
        "YCbCr": Image.new("YCbCr", (6, 4), (128, 128, 128)),
        "HSV": Image.new("HSV", (6, 4), (0, 0, 255)),
        "RGB": Image.new("RGB", (6, 4), (1, 2, 3)),
    }


@pytest.mark.parametrize("mode", list(_mode_images()))
def test_every_mode_becomes_rgb(mode: str, make_image_config: ConfigFactory) -> None:
    img = _mode_images()[mode]
    assert img.mode == mode
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == img.size
    process_image(img, make_image_config())  # and goes through the whole pipeline


def test_transparency_is_composited_on_white() -> None:
    images = _mode_images()
    assert to_rgb(images["RGBA"]).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(images["RGBA"]).getpixel((1, 0)) == (255, 0, 0)
    assert to_rgb(images["P"]).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(images["P"]).getpixel((1, 0)) == (255, 0, 0)
    assert to_rgb(images["LA"]).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(images["RGBA"], background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)


def test_high_bit_depth_is_scaled_not_clipped() -> None:
    images = _mode_images()
    assert to_rgb(images["I;16"]).getpixel((0, 0)) == (128, 128, 128)
    assert to_rgb(images["I"]).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(images["F"]).getpixel((0, 0)) == (128, 128, 128)


def _exif_png(path: Path, orientation: int) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    _exif_png(tmp_path / "rot90.png", 6)
    assert load_image(tmp_path / "rot90.png").size == (20, 40)
    _exif_png(tmp_path / "rot180.png", 3)
    upright = load_image(tmp_path / "rot180.png")
    assert upright.size == (40, 20)
    assert upright.getpixel((0, 10)) == (0, 0, 255)  # rotated half a turn: blue is now on the left


# --------------------------------------------------------------------------- loading failures


def test_load_image_failures_are_counted_skips(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good)
    data = good.read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    cases = {
        "missing.png": SkipReason.MISSING_IMAGE,
        "empty.png": SkipReason.EMPTY_IMAGE,
        "truncated.png": SkipReason.UNREADABLE_IMAGE,
        "garbage.png": SkipReason.UNREADABLE_IMAGE,
    }
    for name, reason in cases.items():
        with pytest.raises(SkipSample) as info:
            load_image(tmp_path / name)
        assert info.value.reason is reason, name
    assert load_image(good).size == (64, 64)
