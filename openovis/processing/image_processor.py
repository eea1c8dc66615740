"""`OvisImageProcessor`: the transformers image processor of Ovis (crops, letterbox, thumbnail, normalization).

A thin ``BaseImageProcessor`` around :mod:`openovis.processing.image`, so that a model folder carries a
``preprocessor_config.json`` that ``AutoImageProcessor`` (and ``AutoProcessor``) load without remote code.
The numerics are exactly those of :func:`openovis.processing.image.process_image`.

    images (N PIL images or paths) -> per image: to_rgb -> grid -> crops  [C_i, 3, S, S]
    pixel_values [sum C_i, 3, S, S] float32 (crops of all images, in order; thumbnail first per image)
    image_grids  [N, 2] long (rows, cols of each image's grid)

With ``native_resolution`` (Ovis2.5): ``pixel_values [sum N_i, C*T*p*p]`` packed patch rows and
``grid_thw [N, 3]`` (`openovis.processing.navit_image`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from transformers import BaseImageProcessor, BatchFeature

from openovis.processing.image import (
    ImageProcessingConfig,
    ProcessedImage,
    image_crops,
    image_grid,
    load_image,
    to_rgb,
)
from openovis.processing.navit_image import NavitImageConfig
from openovis.processing.navit_image import process_image as navit_process_image

_FIELDS = tuple(f.name for f in dataclasses.fields(ImageProcessingConfig))


class OvisImageProcessor(BaseImageProcessor):
    """Ovis2-style image preprocessing as a transformers image processor.

    Args:
        image_config: The preprocessing configuration; or give its fields as keyword arguments
            (``image_size``, ``patch_size``, ``hidden_stride``, ``image_mean``, ``image_std``,
            ``max_partition``, ``covering_threshold``, ``resample``, ``letterbox``), as
            ``from_pretrained`` does with the saved fields.
    """

    model_input_names = ["pixel_values"]  # noqa: RUF012 - transformers' class attribute

    def __init__(self, image_config: ImageProcessingConfig | None = None, **kwargs: Any) -> None:
        fields = {k: kwargs.pop(k) for k in _FIELDS if k in kwargs}
        if image_config is None:
            image_config = ImageProcessingConfig(**fields)
        elif fields:
            raise TypeError("give an ImageProcessingConfig or its fields, not both")
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)  # keeps what transformers adds (e.g. processor_class)
        self.image_config = image_config

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` content: the config fields and the class name."""
        out = {k: v for k, v in super().to_dict().items() if k not in ("image_config", "_processor_class")}
        out.update(self.image_config.to_dict())
        out["image_processor_type"] = type(self).__name__
        processor_class = getattr(self, "_processor_class", None)
        if processor_class is not None:
            out["processor_class"] = processor_class
        return out

    def process(self, image: Image.Image | str | os.PathLike) -> ProcessedImage:
        """One image (PIL or a local path) -> its crops and grid."""
        rgb = _load(image)
        grid = image_grid(rgb, self.image_config)
        return ProcessedImage(pixel_values=image_crops(rgb, grid, self.image_config), grid=grid)

    def preprocess(
        self,
        images: Image.Image | str | os.PathLike | Sequence[Any],
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Crops of one image or a (possibly nested, per-sample) list of images.

        Returns:
            ``pixel_values [sum C, 3, S, S]`` and ``image_grids [N, 2]``; see the module docstring.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        flat = list(_flatten(images))
        if not flat:
            raise ValueError("images: no image given")
        if self.image_config.native_resolution:  # Ovis2.5: packed patch rows
            nav = NavitImageConfig.from_image_config(self.image_config)
            packed = [navit_process_image(_load(img), nav) for img in flat]
            data = {
                "pixel_values": torch.cat([p.pixel_values for p in packed]),  # [N, C·T·p²]
                "grid_thw": torch.cat([p.grid_thw for p in packed]),  # [n, 3]
            }
            return BatchFeature(data, tensor_type=return_tensors)
        done = [self.process(img) for img in flat]
        data = {
            "pixel_values": torch.cat([d.pixel_values for d in done]),  # [sum C, 3, S, S]
            "image_grids": torch.tensor([d.grid for d in done], dtype=torch.long),  # [N, 2]
        }
        return BatchFeature(data, tensor_type=return_tensors)


def _load(image: Image.Image | str | os.PathLike) -> Image.Image:
    return load_image(image) if isinstance(image, (str, os.PathLike)) else to_rgb(image)


def _flatten(images: Any) -> Any:
    """Yields the images of an image, a list of images, or a list of per-sample lists (None skipped)."""
    if images is None:
        return
    if isinstance(images, (Image.Image, str, os.PathLike)):
        yield images
        return
    for item in images:
        yield from _flatten(item)
