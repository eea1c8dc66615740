"""Image preprocessing: any PIL image -> RGB -> grid of crops -> letterboxed, normalized tensors.

Shapes (S = ``image_size``, C = crops of one image, T = visual tokens per crop)::

    PIL image (W x H, any mode)
      -> to_rgb                                  RGB, EXIF orientation applied
      -> select_grid                             (rows, cols), rows * cols <= max_partition
      -> crops: [thumbnail] + rows * cols tiles  C = 1 if rows * cols == 1 else 1 + rows * cols
      -> letterbox each crop                     pixel_values [C, 3, S, S] float32
    T = ceil((S // patch_size) / hidden_stride) ** 2

This follows the official Ovis2 ``preprocess_image`` (AIDC-AI/Ovis, ``modeling_ovis.py``):
the grid rule (``_get_best_grid``), the tile boxes (``_partition``), the aspect-keeping resize with
``int()`` truncation and the centred zero padding (``_preprocess``). The official code pads with
zeros *after* normalization (it copies the normalized crop into ``torch.zeros``), so the padding is
the backbone's mean colour, not black; we do the same.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from openovis.skips import SkipReason, SkipSample

logger = logging.getLogger(__name__)

Resample = Literal["bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"]
Grid = tuple[int, int]
"""(rows, cols) of the tile grid."""

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_WHITE = (255, 255, 255)

DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
"""Largest image (width x height) decoded by default, checked from the header before decoding.

The model never sees more than ``max_partition * image_size**2`` pixels (9 x 448² ≈ 1.8 M for
Ovis2), so a larger image is only downscaled; 40 M admits 8K x 5K photos and most page scans, while
bounding the decoded RGB buffer (120 MB, ~2.5x that during conversion) per DataLoader worker.
Pillow's own limit (``Image.MAX_IMAGE_PIXELS``, ~89 M, an error only at twice that) is a
decompression-bomb guard, not a memory budget.
"""


@dataclass(frozen=True)
class ImageProcessingConfig:
    """How images become crops. Validated on construction; never mutated.

    Attributes:
        image_size: S, the side of every square crop fed to the vision backbone, in pixels.
        patch_size: The backbone's ViT patch size. Patches per side are ``image_size // patch_size``
            (a strided patch conv drops the remainder, e.g. SigLIP-384/14 -> 27).
        hidden_stride: s; each s x s block of patches becomes one visual token.
        image_mean: Per-channel mean (RGB, in [0, 1] units) of the backbone's normalization.
        image_std: Per-channel standard deviation of the backbone's normalization.
        max_partition: Most tiles in the grid (Ovis2: 9); 1 gives the Ovis 1.0 single padded image.
        covering_threshold: A grid is good enough when its covering ratio exceeds this.
        resample: PIL resampling filter for every resize.
        letterbox: Keep aspect and zero-pad to square (official Ovis); False stretches each crop to
            S x S after resizing the whole image to the grid canvas (transformers-Ovis2 style).
        max_image_pixels: Images with more pixels (width x height) are refused before decoding
            (skip reason ``image too large``); None leaves only Pillow's decompression-bomb limit.
        native_resolution: Ovis2.5's NaViT preprocessing (`openovis.processing.navit_image`): each
            image resized to multiples of ``patch_size * hidden_stride`` within [min_pixels,
            max_pixels] and packed into patch rows; no crops (``image_size``, ``max_partition``,
            ``covering_threshold``, ``resample`` and ``letterbox`` are then unused).
        min_pixels: Native resolution: lower bound of the resized area (official: 448²).
        max_pixels: Native resolution: upper bound of the resized area (official: 1344·1792 in
            ``preprocess_inputs``, 1792² in ``chat``).
        temporal_patch_size: Native resolution: frames per temporal patch (1 for images).
    """

    image_size: int
    patch_size: int
    hidden_stride: int
    image_mean: tuple[float, float, float] = SIGLIP_MEAN
    image_std: tuple[float, float, float] = SIGLIP_STD
    max_partition: int = 9
    covering_threshold: float = 0.9
    resample: Resample = "bicubic"
    letterbox: bool = True
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    native_resolution: bool = False
    min_pixels: int = 448 * 448
    max_pixels: int = 1344 * 1792
    temporal_patch_size: int = 1

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "hidden_stride", "max_partition"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        if self.image_size < self.patch_size:
            raise ValueError(f"image_size: must be >= patch_size ({self.patch_size}), got {self.image_size}")
        object.__setattr__(self, "image_mean", _three_floats("image_mean", self.image_mean))
        object.__setattr__(self, "image_std", _three_floats("image_std", self.image_std))
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"image_std: every value must be > 0, got {self.image_std!r}")
        threshold = self.covering_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"covering_threshold: must be a number in [0, 1], got {threshold!r}")
        if self.resample not in get_args(Resample):
            raise ValueError(f"resample: must be one of {get_args(Resample)}, got {self.resample!r}")
        if not isinstance(self.letterbox, bool):
            raise ValueError(f"letterbox: must be a bool, got {self.letterbox!r}")
        if not isinstance(self.native_resolution, bool):
            raise ValueError(f"native_resolution: must be a bool, got {self.native_resolution!r}")
        for name in ("min_pixels", "max_pixels", "temporal_patch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels: {self.min_pixels} > max_pixels {self.max_pixels}")
        pixels = self.max_image_pixels
        if pixels is not None and (isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1):
            raise ValueError(f"max_image_pixels: must be a positive integer or None, got {pixels!r}")

    @property
    def patch_grid(self) -> int:
        """Patches along one side of a crop (S // patch_size)."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_crop(self) -> int:
        """T, visual tokens per crop: the patch grid padded to a multiple of s, then merged s x s."""
        return math.ceil(self.patch_grid / self.hidden_stride) ** 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        out = asdict(self)
        out["image_mean"] = list(self.image_mean)
        out["image_std"] = list(self.image_std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageProcessingConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming the key."""
        for key in data:
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"{key}: unknown ImageProcessingConfig field")
        return cls(**data)


def _three_floats(name: str, value: Any) -> tuple[float, float, float]:
    """Normalizes a mean/std given as one number or three numbers."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if not isinstance(value, (str, bytes)):
        try:
            values = tuple(float(v) for v in value)  # list, tuple, numpy array, ...
        except (TypeError, ValueError):
            values = ()
        if len(values) == 3:
            return values  # type: ignore[return-value]
    raise ValueError(f"{name}: expected one number or three numbers, got {value!r}")


@dataclass(frozen=True)
class ProcessedImage:
    """One image ready for the model.

    Attributes:
        pixel_values: ``[C, 3, S, S]`` float32; the thumbnail first when the grid has > 1 tile.
        grid: (rows, cols) of the tile grid.
    """

    pixel_values: torch.Tensor
    grid: Grid

    @property
    def num_crops(self) -> int:
        """C, the number of crops (tiles plus the thumbnail when there is more than one tile)."""
        return int(self.pixel_values.shape[0])


def num_crops(grid: Grid) -> int:
    """Crops an image with this grid produces (the thumbnail only exists with more than one tile)."""
    tiles = grid[0] * grid[1]
    return 1 if tiles == 1 else tiles + 1


# --------------------------------------------------------------------------- modes and loading


def to_rgb(img: Image.Image, background: tuple[int, int, int] = _WHITE) -> Image.Image:
    """Converts any PIL image to RGB, applying its EXIF orientation.

    Transparent images (RGBA, LA, PA, P or L/RGB with a transparency key) are composited on
    ``background`` (white by default: dark content on transparent backgrounds, such as logos,
    text and diagrams, stays visible; a plain ``convert("RGB")`` would keep whatever colour the
    transparent pixels happen to store, usually black). High bit-depth modes (I;16, I, F) are
    scaled to 8 bits rather than clipped.

    Args:
        img: Any PIL image.
        background: RGB colour behind transparent pixels.

    Returns:
        A new RGB image.

    Raises:
        ValueError: The mode cannot be converted to RGB.
    """
    img = _exif_upright(img)
    if img.mode.startswith("I") or img.mode == "F":
        img = _high_depth_to_l(img)
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "La":  # premultiplied; PIL only un-premultiplies it to LA
        img = img.convert("LA")
    if img.mode in ("PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode == "RGB":
        return img.copy()
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise ValueError(f"cannot convert image mode {img.mode!r} to RGB") from err


def _exif_upright(img: Image.Image) -> Image.Image:
    """Applies the EXIF orientation tag; a broken EXIF block leaves the image as it is."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as err:  # noqa: BLE001 - corrupt EXIF must not make a good image unusable
        logger.debug("ignoring unreadable EXIF orientation: %s", err)
        return img


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """Maps a 16/32-bit integer or float single-channel image to 8-bit ``L``.

    Values already in 0..255 are kept as they are (8-bit content stored in a wider mode, which is
    what converters often write); 16-bit values above 255 are scaled by 1/257; a float image in
    [0, 1] is scaled by 255; any other range is stretched min..max.
    """
    arr = np.nan_to_num(np.asarray(img).astype(np.float64))
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode.startswith("I") and lo >= 0 and 255 < hi <= 65535:
        arr = arr / 257.0  # full 16-bit range -> 8 bits
    elif img.mode == "F" and lo >= 0 and hi <= 1.0:
        arr = arr * 255.0
    elif lo < 0 or hi > 255:
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0  # unknown range: stretch min..max
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))


def load_image(
    path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Opens, fully decodes and converts an image file to RGB.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this, read from the header before decoding
            (None: only Pillow's own decompression-bomb limit).

    Returns:
        An RGB image, detached from the file.

    Raises:
        SkipSample: MISSING_IMAGE, EMPTY_IMAGE, IMAGE_TOO_LARGE or UNREADABLE_IMAGE (truncated,
            undecodable, decompression bomb, unsupported mode).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise SkipSample(SkipReason.MISSING_IMAGE, str(path)) from err
    except OSError as err:
        raise SkipSample(SkipReason.UNREADABLE_IMAGE, f"{path}: {err}") from err
    if size == 0:
        raise SkipSample(SkipReason.EMPTY_IMAGE, str(path))
    return _decode(path, str(path), max_pixels)


def load_image_bytes(
    data: bytes, where: str = "image bytes", max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """:func:`load_image` for an encoded image held in memory (e.g. base64 from a TSV cell).

    Raises:
        SkipSample: EMPTY_IMAGE, IMAGE_TOO_LARGE or UNREADABLE_IMAGE.
    """
    if not data:
        raise SkipSample(SkipReason.EMPTY_IMAGE, where)
    return _decode(io.BytesIO(data), where, max_pixels)


def check_image_pixels(width: int, height: int, max_pixels: int | None, where: str) -> None:
    """Raises SkipSample(IMAGE_TOO_LARGE) when ``width * height`` exceeds ``max_pixels``."""
    if max_pixels is not None and width * height > max_pixels:
        raise SkipSample(
            SkipReason.IMAGE_TOO_LARGE,
            f"{where}: {width}x{height} = {width * height:,} pixels > max_image_pixels {max_pixels:,}",
        )


def _decode(source: Path | io.BytesIO, where: str, max_pixels: int | None) -> Image.Image:
    """Opens (header only), checks the pixel count, then decodes and converts to RGB."""
    try:
        with Image.open(source) as img:
            check_image_pixels(img.width, img.height, max_pixels, where)  # before decoding anything
            img.load()  # decode now: truncated files fail here, not later in a worker
            return to_rgb(img)
    except SkipSample:
        raise
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise SkipSample(SkipReason.UNREADABLE_IMAGE, f"{where}: {err}") from err
    except Exception as err:  # noqa: BLE001 - decoders of corrupt files raise anything (struct.error, ...)
        raise SkipSample(SkipReason.UNREADABLE_IMAGE, f"{where}: {type(err).__name__}: {err}") from err


# --------------------------------------------------------------------------- image paths

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative_path(rel: Any) -> str:
    """Lexical check of an image path: relative, no way up out of the root.

    Raises:
        SkipSample: MALFORMED_RECORD (not a non-empty string), INVALID_TEXT or PATH_ESCAPE.
    """
    if not isinstance(rel, str):
        raise SkipSample(SkipReason.MALFORMED_RECORD, f"image path: expected text, got {type(rel).__name__}")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError as err:
        raise SkipSample(SkipReason.INVALID_TEXT, f"image path: {err.reason}") from err
    if not rel or "\x00" in rel:
        raise SkipSample(SkipReason.MALFORMED_RECORD, f"bad image path {rel!r}")
    if os.path.isabs(rel) or rel.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(rel):
        raise SkipSample(SkipReason.PATH_ESCAPE, f"absolute path {rel!r}")
    normalized = os.path.normpath(rel.replace("\\", "/"))
    if normalized == ".." or normalized.startswith("../"):
        raise SkipSample(SkipReason.PATH_ESCAPE, f"{rel!r} leaves the image root")
    return rel


def resolve_image_path(root: str | os.PathLike[str], rel: Any) -> Path:
    """``root / rel`` with symlinks resolved; it must stay inside ``root``.

    The one resolver of image paths for training data, evaluation data and ``chat --image-root``.

    Raises:
        SkipSample: PATH_ESCAPE (absolute, ``..``, or a symlink out of the root), MALFORMED_RECORD
            or INVALID_TEXT.
    """
    real_root = Path(root).resolve()
    real = (real_root / check_relative_path(rel)).resolve()
    if not real.is_relative_to(real_root):
        raise SkipSample(SkipReason.PATH_ESCAPE, f"{rel!r} resolves outside the image root")
    return real


# --------------------------------------------------------------------------- grid selection


def partition_boxes(width: int, height: int, grid: Grid) -> list[tuple[int, int, int, int]]:
    """Tile boxes ``(left, upper, right, lower)`` in row-major order; the last row/column takes the rest.

    Matches the official ``_partition``: tiles are ``height // rows`` by ``width // cols``.
    """
    rows, cols = grid
    row_height, col_width = height // rows, width // cols
    return [
        (
            c * col_width,
            r * row_height,
            width if c == cols - 1 else (c + 1) * col_width,
            height if r == rows - 1 else (r + 1) * row_height,
        )
        for r in range(rows)
        for c in range(cols)
    ]


def _covering_area(box: tuple[int, int, int, int], side: int) -> float:
    """Pixels of a tile that survive letterboxing to ``side``: the area after a fit-inside downscale."""
    left, upper, right, lower = box
    w, h = right - left, lower - upper
    w, h = max(w, h), min(w, h)
    if w > side:
        h = h / w * side
        w = side
    return w * h


def covering_ratio(width: int, height: int, grid: Grid, side: int) -> float:
    """Fraction of the image's pixels that the letterboxed tiles of ``grid`` keep (1.0 = no downscale)."""
    covered = sum(_covering_area(box, side) for box in partition_boxes(width, height, grid))
    return covered / (width * height)


def select_grid(
    width: int, height: int, side: int, max_partition: int = 9, covering_threshold: float = 0.9
) -> Grid:
    """The official Ovis2 grid rule (``_get_best_grid``).

    Among all grids with ``rows * cols <= max_partition``, take the one with the fewest tiles whose
    covering ratio exceeds ``covering_threshold`` (ties: higher ratio, then candidate order, rows
    outer); if none does, the one with the highest ratio (ties: fewer tiles). The covering ratio of
    a grid is the fraction of the image's pixels kept after each tile is shrunk to fit ``side``.
    Grids with more rows (columns) than the image has pixel rows (columns) would make empty tiles
    and are not candidates (the official code would fail on them).

    Args:
        width: Image width in pixels.
        height: Image height in pixels.
        side: Crop side S in pixels.
        max_partition: Most tiles allowed.
        covering_threshold: Ratio a grid must exceed to count as good.

    Returns:
        (rows, cols); a wide image gets more columns, a tall one more rows.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1x1, got {width}x{height}")
    candidates = [
        (rows, cols)
        for rows in range(1, max_partition + 1)
        for cols in range(1, max_partition + 1)
        if rows * cols <= max_partition and rows <= height and cols <= width
    ]
    scored = [(grid, covering_ratio(width, height, grid, side)) for grid in candidates]
    good = [item for item in scored if item[1] > covering_threshold]
    if good:
        return min(good, key=lambda x: (x[0][0] * x[0][1], -x[1]))[0]
    return min(scored, key=lambda x: (-x[1], x[0][0] * x[0][1]))[0]


# --------------------------------------------------------------------------- crops to tensors


def _normalize(img: Image.Image, cfg: ImageProcessingConfig) -> np.ndarray:
    """RGB image -> ``[3, h, w]`` float32, rescaled to [0, 1] then normalized with mean/std."""
    arr = np.asarray(img, dtype=np.float32) / 255.0  # [h, w, 3]
    arr = (arr - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return arr.transpose(2, 0, 1)  # [3, h, w]


def letterbox_size(w: int, h: int, side: int) -> tuple[int, int]:
    """Width and height of a ``w x h`` image letterboxed into ``side x side`` (long side = ``side``)."""
    if w == h:
        return side, side
    if w > h:
        return side, max(1, int(h / w * side))
    return max(1, int(w / h * side)), side


def letterbox(img: Image.Image, cfg: ImageProcessingConfig) -> np.ndarray:
    """Resizes keeping aspect so the long side is S, normalizes, centres in zeros: ``[3, S, S]``.

    Sizes follow the official ``_preprocess`` (``int()`` truncation of the short side), clamped to at
    least 1 pixel so that extreme aspect ratios (1 x 1000) do not produce an empty image.
    """
    side = cfg.image_size
    new_w, new_h = letterbox_size(*img.size, side)
    values = _normalize(img.resize((new_w, new_h), _RESAMPLE[cfg.resample]), cfg)  # [3, new_h, new_w]
    square = np.zeros((3, side, side), dtype=np.float32)  # zero *after* normalization, as official
    top, left = (side - new_h) // 2, (side - new_w) // 2
    square[:, top : top + new_h, left : left + new_w] = values
    return square


def _letterboxed_crops(img: Image.Image, grid: Grid, cfg: ImageProcessingConfig) -> list[np.ndarray]:
    """Official Ovis2 crops: tiles cut from the original image, each letterboxed; thumbnail first."""
    crops = [img.crop(box) for box in partition_boxes(img.width, img.height, grid)]
    if len(crops) > 1:
        crops.insert(0, img)
    return [letterbox(crop, cfg) for crop in crops]


def _stretched_crops(img: Image.Image, grid: Grid, cfg: ImageProcessingConfig) -> list[np.ndarray]:
    """transformers-Ovis2 style: resize the whole image to the grid canvas, cut S x S tiles."""
    side, (rows, cols) = cfg.image_size, grid
    resample = _RESAMPLE[cfg.resample]
    canvas = img.resize((cols * side, rows * side), resample)
    tiles = [
        canvas.crop((c * side, r * side, (c + 1) * side, (r + 1) * side))
        for r in range(rows)
        for c in range(cols)
    ]
    if len(tiles) > 1:
        tiles.insert(0, img.resize((side, side), resample))
    return [_normalize(tile, cfg) for tile in tiles]


def image_grid(img: Image.Image, cfg: ImageProcessingConfig) -> Grid:
    """The tile grid of an RGB image under ``cfg`` (depends only on its size)."""
    return select_grid(img.width, img.height, cfg.image_size, cfg.max_partition, cfg.covering_threshold)


def image_crops(img: Image.Image, grid: Grid, cfg: ImageProcessingConfig) -> torch.Tensor:
    """The crops of an RGB image for ``grid``: ``[C, 3, S, S]`` float32, thumbnail first if C > 1."""
    make = _letterboxed_crops if cfg.letterbox else _stretched_crops
    return torch.from_numpy(np.stack(make(img, grid, cfg)))  # [C, 3, S, S]


def process_image(img: Image.Image, cfg: ImageProcessingConfig) -> ProcessedImage:
    """Turns one image into its crops.

    Args:
        img: Any PIL image (converted with :func:`to_rgb` first).
        cfg: The preprocessing configuration.

    Returns:
        ``pixel_values [C, 3, S, S]`` float32 and the grid.
    """
    img = to_rgb(img)
    grid = image_grid(img, cfg)
    return ProcessedImage(pixel_values=image_crops(img, grid, cfg), grid=grid)
