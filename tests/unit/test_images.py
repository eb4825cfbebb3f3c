from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from eta.images import ImageError, ImageLimits, decode_image


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which carries no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_sample_images_decode(samples_dir):
    for path in sorted(samples_dir.iterdir()):
        decoded = decode_image(path.read_bytes())
        assert decoded.image.mode == "RGB"
        assert decoded.image.size == (decoded.width, decoded.height)
        assert decoded.mime.startswith("image/")


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_bomb_refused_from_header_without_decoding(side):
    # The data holds no pixels: decoding would fail as unreadable, so this code proves the check ran first.
    with pytest.raises(ImageError) as info:
        decode_image(_png_header_only(side, side))
    assert info.value.code == "image_too_many_pixels"
    assert str(side * side) in str(info.value)


@pytest.mark.parametrize(
    ("data", "limits", "code"),
    [
        (b"", None, "image_empty"),
        (b"not an image at all", None, "image_unreadable"),
        (b"x" * 101, ImageLimits(max_bytes=100), "image_too_large"),
    ],
)
def test_bad_inputs_have_codes(data, limits, code):
    with pytest.raises(ImageError) as info:
        decode_image(data, limits=limits)
    assert info.value.code == code


def test_truncated_and_disallowed_formats(samples_dir):
    jpeg = (samples_dir / "waterview.jpg").read_bytes()
    with pytest.raises(ImageError) as info:
        decode_image(jpeg[: len(jpeg) // 3])
    assert info.value.code == "image_unreadable"

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")
    with pytest.raises(ImageError) as info:
        decode_image(buf.getvalue())
    assert info.value.code == "image_format_not_allowed"
