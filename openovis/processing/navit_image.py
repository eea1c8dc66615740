"""Ovis2.5 image and video preprocessing: native resolution, packed patch rows, ``grid_thw``.

Notation: p = ``patch_size``, s = ``hidden_stride``, T = ``temporal_patch_size``, C = 3 channels.

    PIL image (W x H, any mode) -> RGB
      -> smart_resize            (h, w), both multiples of p*s, min_pixels <= h*w <= max_pixels
      -> resize (bicubic), rescale 1/255, normalize with mean/std      [C, h, w] float32
      -> patchify                rows [t*(h/p)*(w/p), C*T*p*p], grid_thw [1, 3] = (t, h/p, w/p)

Rows come in merge-unit order, as the official code lays them out: frame-major, then the
(h/p/s) x (w/p/s) merge units row by row, and inside each unit its s x s patches row by row; a row
holds channel, then temporal, then the p x p pixels. Consecutive groups of s*s rows are therefore
one visual token. A video is a list of frames resized to the first frame's size; frames are grouped
T at a time (the last frame is repeated to fill the last group).

This follows the official Ovis2.5 ``VisualTokenizer.preprocess`` and ``smart_resize``
(AIDC-AI/Ovis, ``ovis/model/modeling_ovis.py``) with transformers' ``SiglipImageProcessor``
(bicubic resize of the uint8 image, rescale in float64 then float32, normalize in float32), and
gives the same pixels bit for bit (tests/processing/test_navit_image.py). Two differences, both
where the official code fails:

- Images 1 or 3 pixels tall: transformers' processor guesses the channel axis from the array shape
  and takes ``(1|3, W, 3)`` for channels-first (1 px raises, 3 px is silently mis-read). The image is
  converted here as the RGB image it is.
- ``smart_resize`` can return 0 for a side (a very flat image under a small ``max_pixels``: the
  too-small branch widens it, then the max-pixels branch rescales by the widened area); sides are
  clamped to at least one factor here, which may exceed ``max_pixels`` by that one row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from openovis.processing.image import ImageProcessingConfig, to_rgb

logger = logging.getLogger(__name__)

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# the official defaults: preprocess_inputs() and chat() use different max_pixels
DEFAULT_MIN_PIXELS = 448 * 448
DEFAULT_MAX_PIXELS = 1344 * 1792
CHAT_MAX_PIXELS = 1792 * 1792


@dataclass(frozen=True)
class NavitImageConfig:
    """How images become packed patch rows for a NaViT encoder.

    Attributes:
        patch_size: p, the ViT patch side in pixels.
        hidden_stride: s, the merge-unit side in patches (a visual token is s x s patches).
        temporal_patch_size: T, frames per temporal patch (1 for images).
        min_pixels: Lower bound of h*w after resizing.
        max_pixels: Upper bound of h*w after resizing.
        image_mean: Per-channel mean, in [0, 1] units.
        image_std: Per-channel standard deviation.
    """

    patch_size: int = 16
    hidden_stride: int = 2
    temporal_patch_size: int = 1
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    image_mean: tuple[float, float, float] = SIGLIP_MEAN
    image_std: tuple[float, float, float] = SIGLIP_STD

    def __post_init__(self) -> None:
        for name in ("patch_size", "hidden_stride", "temporal_patch_size", "min_pixels", "max_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) > max_pixels ({self.max_pixels})")

    @property
    def factor(self) -> int:
        return self.patch_size * self.hidden_stride

    @classmethod
    def from_image_config(cls, cfg: ImageProcessingConfig) -> NavitImageConfig:
        """The native-resolution fields of a processor's `ImageProcessingConfig`."""
        return cls(
            patch_size=cfg.patch_size,
            hidden_stride=cfg.hidden_stride,
            temporal_patch_size=cfg.temporal_patch_size,
            min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
            image_mean=cfg.image_mean,
            image_std=cfg.image_std,
        )


@dataclass
class NavitProcessed:
    """``pixel_values [N, C*T*p*p]`` float32 rows and ``grid_thw [1, 3]`` int64."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor


def smart_resize(
    height: int,
    width: int,
    factor: int = 32,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """The resized (height, width): multiples of ``factor``, area within [min_pixels, max_pixels].

    The official rule (from Qwen2-VL, as Ovis2.5 has it): a side shorter than ``factor`` is scaled
    up to ``factor`` keeping aspect; an aspect ratio over 200 is cut to 200; sides are rounded to
    multiples of ``factor``; then scaled down (floor) or up (ceil) to fit the pixel budget. Unlike
    the official code, a side never comes out 0 (see the module docstring).
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    if height < factor or width < factor:
        if height < width:
            width = round(factor / height * width)
            height = factor
        else:
            height = round(factor / width * height)
            width = factor
    elif max(height, width) / min(height, width) > 200:
        if height > width:
            height = 200 * width
        else:
            width = 200 * height
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return max(factor, h_bar), max(factor, w_bar)


def _normalize(img: Image.Image, cfg: NavitImageConfig) -> np.ndarray:
    """RGB uint8 image -> ``[3, h, w]`` float32 with transformers' arithmetic (rescale in float64)."""
    arr = np.asarray(img, dtype=np.uint8)  # [h, w, 3]
    arr = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
    arr = (arr - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
    return arr.transpose(2, 0, 1)


def patchify(frames: np.ndarray, cfg: NavitImageConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``[F, C, h, w]`` frames -> rows ``[t*gh*gw, C*T*p*p]`` in merge-unit order and ``grid_thw [1, 3]``."""
    p, s, tp = cfg.patch_size, cfg.hidden_stride, cfg.temporal_patch_size
    if frames.shape[0] % tp:
        pad = np.repeat(frames[-1:], tp - frames.shape[0] % tp, axis=0)
        frames = np.concatenate([frames, pad], axis=0)
    f, c, h, w = frames.shape
    if h % (p * s) or w % (p * s):
        raise ValueError(f"frame size {h}x{w} is not a multiple of patch_size*hidden_stride = {p * s}")
    t, gh, gw = f // tp, h // p, w // p
    x = frames.reshape(t, tp, c, gh // s, s, p, gw // s, s, p)
    # -> t, unit row, unit col, row in unit, col in unit | channel, temporal, pixel row, pixel col
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    rows = np.ascontiguousarray(x).reshape(t * gh * gw, c * tp * p * p)
    return torch.from_numpy(rows), torch.tensor([[t, gh, gw]], dtype=torch.long)


def process_frames(
    frames: Sequence[Image.Image],
    cfg: NavitImageConfig,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> NavitProcessed:
    """Frames (one for an image) -> packed rows; every frame is resized to the first one's size."""
    if not frames:
        raise ValueError("no frames")
    frames = [to_rgb(f) for f in frames]
    width, height = frames[0].size
    rh, rw = smart_resize(
        height,
        width,
        cfg.factor,
        cfg.min_pixels if min_pixels is None else min_pixels,
        cfg.max_pixels if max_pixels is None else max_pixels,
    )
    arrays = [_normalize(f.resize((rw, rh), Image.Resampling.BICUBIC), cfg) for f in frames]
    rows, grid = patchify(np.stack(arrays), cfg)
    return NavitProcessed(pixel_values=rows, grid_thw=grid)


def process_image(img: Image.Image, cfg: NavitImageConfig, **budget: int | None) -> NavitProcessed:
    """One image -> ``pixel_values [gh*gw*t, C*T*p*p]``, ``grid_thw [[t, gh, gw]]`` (t = 1)."""
    return process_frames([img], cfg, **budget)


def process_video(
    frames: Sequence[Image.Image], cfg: NavitImageConfig, **budget: int | None
) -> NavitProcessed:
    """Video frames -> packed rows with ``t = ceil(len(frames) / T)`` temporal patches."""
    return process_frames(frames, cfg, **budget)


def num_visual_tokens(grid_thw: torch.Tensor, hidden_stride: int) -> int:
    """Visual tokens of one or more inputs: sum of t*gh*gw / s²."""
    return int(grid_thw.prod(dim=-1).sum()) // (hidden_stride * hidden_stride)
