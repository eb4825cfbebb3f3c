"""Decoding untrusted images under limits: size in bytes, pixel count (decompression bombs), formats."""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_FORMATS = frozenset({"JPEG", "PNG", "BMP", "WEBP", "GIF"})
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "WEBP": "image/webp", "GIF": "image/gif"}
# Formats that are another format with extras: a camera's MPO (multi-picture) file is a JPEG whose first frame is
# the picture every viewer shows, followed by more frames (a stereo view, a preview). It is read as that JPEG.
FORMAT_ALIASES = {"MPO": "JPEG"}

# Bytes per pixel Pillow allocates for a decoded image of each mode (its RGB is stored 4 bytes a pixel).
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_TWO_BYTE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


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
    # Longer side / shorter side. Models resize the shorter side to their input (336 px): a 1000000x40 image
    # would become 8,400,000x336 before any crop, so thin images are refused from the header. 50 admits long
    # phone screenshots (1080x20000 is 18.5) and panoramas.
    max_aspect_ratio: float = 50.0
    # Memory one decode may take (the decoded image plus its RGB / upright copy), estimated from the header's
    # size and mode before decoding. The default admits every image within `max_pixels`; a raised pixel limit
    # meets this one.
    max_decode_bytes: int = 336 * 1024 * 1024
    # Pixels one request (a batch) may fully decode at intake; images past it get the header and structure
    # checks only, and their full decode happens once, in the worker (a job whose image then fails to decode
    # fails with the image's code). Keeps a batch of large images from costing the API seconds and memory.
    request_decode_pixels: int = 16_000_000
    # Pixels a worker holds decoded at once: a chunk's images are decoded (and run through the models) in parts
    # of at most this many, a larger image alone. A chunk of 32 images of 40 M pixels held 6 GB before.
    worker_decode_pixels: int = 64_000_000


@dataclass
class DecodedImage:
    image: Image.Image  # fully decoded, RGB, upright (EXIF orientation applied)
    format: str
    mime: str
    width: int  # of the upright image
    height: int


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header (and, when checked, its full decode) says, without keeping any pixels."""

    format: str
    mime: str
    width: int  # of the upright image
    height: int
    decoded: bool  # True when every pixel was decoded; False when only the header and structure were read


def header_pixels(data: bytes | None) -> int:
    """Width x height from the header alone (0 for no image, or one whose header cannot be read: its decode
    reports why)."""
    if not data:
        return 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            width, height = Image.open(io.BytesIO(data)).size
    except Exception:  # noqa: BLE001 - any failure here is reported by the decode that follows
        return 0
    return width * height


def split_by_pixels(items: Sequence[T], pixels: Callable[[T], int], budget: int) -> Iterator[list[T]]:
    """`items` in order, in consecutive parts whose pixels add up to at most `budget` (an item over it alone)."""
    part: list[T] = []
    total = 0
    for item in items:
        count = pixels(item)
        if part and total + count > budget:
            yield part
            part, total = [], 0
        part.append(item)
        total += count
    if part:
        yield part


def decoded_bytes(mode: str, width: int, height: int) -> int:
    """Bytes Pillow allocates for a decoded `mode` image of `width` x `height`."""
    per_pixel = 1 if mode in _ONE_BYTE_MODES else 2 if mode in _TWO_BYTE_MODES else 4
    return per_pixel * width * height


def decode_image(data: bytes, *, limits: ImageLimits | None = None, at_least: int | None = None) -> DecodedImage:
    """Decode `data` completely (not just sniff it) and return an upright RGB image.

    Every limit that the header can answer (bytes, format, pixels, aspect ratio, decode memory) is checked
    before any pixel is decoded. EXIF orientation is applied here, once, so the models, the thumbnails and a
    browser showing the original all see the same upright picture. An MPO file is read as its first frame.

    `at_least` (for previews, never for the models): a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size (the
    decoder's own scaling, far less memory) as long as both sides stay at least `at_least` pixels.

    Raises:
        ImageError: `image_empty`, `image_too_large`, `image_unreadable`, `image_format_not_allowed`,
            `image_too_many_pixels` (a decompression bomb is refused from its header, before decoding),
            `image_aspect_ratio` or `image_decode_too_large`.
    """
    limits = limits or ImageLimits()
    with _opened(data, limits) as (image, fmt):
        if at_least is not None and fmt == "JPEG":
            image.draft("RGB", (at_least, at_least))
        image.load()
        orientation = _orientation(image)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
    del image  # the source's pixels go (with the block that held them) before the upright copy is made
    upright = _apply_orientation(rgb, orientation)
    width, height = upright.size
    return DecodedImage(upright, fmt, MIME_TYPES.get(fmt, "application/octet-stream"), width, height)


def check_image(data: bytes, *, limits: ImageLimits | None = None, decode_pixels: int | None = None) -> ImageInfo:
    """Check `data` as `decode_image` would, without keeping its pixels, or without decoding them at all when
    the image has more than `decode_pixels` pixels (None: always decode).

    A decoded image is decoded in the source's own mode (no RGB copy) and dropped. An image not decoded gets the
    header limits and the structure check its format allows cheaply (a PNG's chunks and their checksums, without
    inflating them); its full decode is left to whoever needs the pixels.

    Raises:
        ImageError: as `decode_image`.
    """
    limits = limits or ImageLimits()
    with _opened(data, limits) as (image, fmt):
        width, height = image.size
        full = decode_pixels is None or width * height <= decode_pixels
        if full:
            image.load()
        if _orientation(image) in _SWAPS_SIDES:
            width, height = height, width
        if not full:
            image.verify()
    return ImageInfo(fmt, MIME_TYPES.get(fmt, "application/octet-stream"), width, height, decoded=full)


@contextlib.contextmanager
def _opened(data: bytes, limits: ImageLimits) -> Iterator[tuple[Image.Image, str]]:
    """The image opened (header read, nothing decoded) after the byte, format, pixel, aspect-ratio and memory
    limits; decoding errors inside the block become `ImageError`s."""
    if not data:
        raise ImageError("image_empty", "the image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError("image_too_large", f"the image has {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # A broken EXIF block is ignored (see `_orientation`), not worth a warning per image.
            warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)
            image = Image.open(io.BytesIO(data))
            fmt = FORMAT_ALIASES.get(image.format or "", image.format or "")
            if fmt not in limits.formats:
                raise ImageError(
                    "image_format_not_allowed",
                    f"image format {fmt or 'unknown'} is not allowed (allowed: {', '.join(sorted(limits.formats))})",
                )
            _check_size(image, limits)
            yield image, fmt
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("image_too_many_pixels", f"the image is a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("image_unreadable", "the data is not an image in a format this service reads") from exc
    except MemoryError as exc:
        raise ImageError("image_decode_too_large", "the image does not fit in memory to decode") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError("image_unreadable", f"the image cannot be decoded: {exc}") from exc


def _check_size(image: Image.Image, limits: ImageLimits) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("image_unreadable", f"the image is {width}x{height} pixels")
    if width * height > limits.max_pixels:
        raise ImageError(
            "image_too_many_pixels",
            f"the image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}",
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ImageError(
            "image_aspect_ratio",
            f"the image is {width}x{height}, {ratio:.0f} times longer than wide; the limit is "
            f"{limits.max_aspect_ratio:g}",
        )
    # The decoded image, plus an RGB copy when its mode is another, plus an upright copy when it is rotated.
    needed = decoded_bytes(image.mode, width, height)
    if image.mode != "RGB" or _orientation(image) in _TRANSPOSES:
        needed += decoded_bytes("RGB", width, height)
    if needed > limits.max_decode_bytes:
        raise ImageError(
            "image_decode_too_large",
            f"decoding the {width}x{height} {image.mode} image takes about {needed >> 20} MiB; the limit is "
            f"{limits.max_decode_bytes >> 20} MiB",
        )


# EXIF orientation (tag 0x0112) -> the transpose that makes the picture upright; 1 (or none) is upright.
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = frozenset({5, 6, 7, 8})


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation of what has been read so far (the header; a PNG's eXIf chunk after its pixels is
    seen once they are decoded). Only EXIF counts, as in browsers, not XMP. 1 when absent or unreadable: a
    broken EXIF block is not worth a refusal, and the picture is then shown as stored, as browsers do.

    Not `Image.getexif()`: for a PNG that decodes the whole image to look for a late eXIf chunk.
    """
    raw = image.info.get("exif")
    if not isinstance(raw, bytes | bytearray) or not raw:
        return 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF before giving up on it
            exif = Image.Exif()
            exif.load(bytes(raw))
            value = exif.get(0x0112, 1)
    except Exception:  # noqa: BLE001 - Pillow raises many kinds of errors on hostile EXIF data
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSES else 1


def _apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    transpose = _TRANSPOSES.get(orientation)
    return image if transpose is None else image.transpose(transpose)
