"""Images of a request: ``data:`` URLs and local paths under the operator's image root, with limits.

Nothing is fetched from the network. A local path (``file://`` URL or plain path, relative to the
root or absolute) is resolved with symlinks followed and must stay inside ``image_root``.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from openovis.processing.image import to_rgb

_DATA_URL = re.compile(
    r"data:(?P<mime>image/[\w.+-]+)?(?P<params>(;[\w-]+=[\w.-]+)*);base64,(?P<data>.*)", re.S
)


class ImageError(ValueError):
    """An image the server will not use; the message says why (it becomes the HTTP 400 message)."""


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URL."""
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise ImageError("bad data URL: expected data:image/<type>;base64,<data>")
    data = match["data"]
    if len(data) > (max_bytes * 4) // 3 + 4:
        raise ImageError(f"image too large: over {max_bytes} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageError(f"bad data URL: invalid base64 ({err})") from err
    if not raw:
        raise ImageError("bad data URL: empty image")
    return raw


def local_path(url: str, image_root: Path | None) -> Path:
    """The file a ``file://`` URL or plain path names, which must be inside ``image_root``."""
    if image_root is None:
        raise ImageError("local image paths are disabled (start the server with --image-root DIR)")
    raw = url[len("file://") :] if url.startswith("file://") else url
    root = image_root.resolve()
    path = (root / raw).resolve()  # an absolute raw path replaces root here
    if not path.is_relative_to(root):
        raise ImageError("image path is outside the server's image root")
    if not path.is_file():
        raise ImageError(f"image not found under the image root: {raw}")
    return path


def open_image(data: bytes | Path, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decodes an image with size checks before the pixels are decoded; returns RGB."""
    if isinstance(data, Path):
        if data.stat().st_size > max_bytes:
            raise ImageError(f"image too large: over {max_bytes} bytes")
        data = data.read_bytes()
    if len(data) > max_bytes:
        raise ImageError(f"image too large: over {max_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"image too large: {width}x{height} is over {max_pixels} pixels")
            img.load()
            return to_rgb(img)
    except ImageError:
        raise
    except UnidentifiedImageError as err:
        raise ImageError("unreadable image: not a known image format") from err
    except (OSError, Image.DecompressionBombError, ValueError) as err:
        raise ImageError(f"unreadable image: {err}") from err
    except Exception as err:  # noqa: BLE001 - decoders of corrupt files raise anything
        raise ImageError(f"unreadable image: {type(err).__name__}") from err


def load_request_image(url: str, image_root: Path | None, max_bytes: int, max_pixels: int) -> Image.Image:
    """One ``image_url.url`` -> an RGB image, or :class:`ImageError`."""
    if url.startswith("data:"):
        return open_image(decode_data_url(url, max_bytes), max_bytes, max_pixels)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url) and not url.startswith("file://"):
        raise ImageError(
            "remote image URLs are not fetched: send a data: URL (base64) or a path under the image root"
        )
    return open_image(local_path(url, image_root), max_bytes, max_pixels)
