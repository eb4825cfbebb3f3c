"""Decoding untrusted images under limits: size in bytes, pixel count (decompression bombs), formats."""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

DEFAULT_FORMATS = frozenset({"JPEG", "PNG", "BMP", "WEBP", "GIF"})
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "WEBP": "image/webp", "GIF": "image/gif"}


class ImageError(ValueError):
    """An image was refused; `code` is stable for clients, the message says what was wrong."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024  # encoded size
    max_pixels: int = 40_000_000  # width * height, checked from the header before decoding
    formats: frozenset[str] = DEFAULT_FORMATS


@dataclass
class DecodedImage:
    image: Image.Image  # fully decoded, RGB
    format: str
    mime: str
    width: int
    height: int


def decode_image(data: bytes, *, limits: ImageLimits | None = None) -> DecodedImage:
    """Decode `data` completely (not just sniff it) and return an RGB image.

    Raises:
        ImageError: `image_empty`, `image_too_large`, `image_unreadable`, `image_format_not_allowed` or
            `image_too_many_pixels` (a decompression bomb is refused from its header, before decoding).
    """
    limits = limits or ImageLimits()
    if not data:
        raise ImageError("image_empty", "the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError("image_too_large", f"the image has {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or ""
            if fmt not in limits.formats:
                raise ImageError(
                    "image_format_not_allowed",
                    f"image format {fmt or 'unknown'} is not allowed (allowed: {', '.join(sorted(limits.formats))})",
                )
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ImageError(
                    "image_too_many_pixels",
                    f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}",
                )
            image.load()
            rgb = image.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("image_too_many_pixels", f"the image is a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("image_unreadable", "the data is not an image in a format this service reads") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("image_unreadable", f"the image cannot be decoded: {exc}") from exc
    return DecodedImage(rgb, fmt, MIME_TYPES.get(fmt, "application/octet-stream"), width, height)
