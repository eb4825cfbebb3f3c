"""Hostile and unusual images (issue 26, items 2 and 7): thin images that would blow up memory once prepared,
a request full of large images, a camera's MPO file, a phone's EXIF-rotated JPEG.

The decoding tests need no services; the API tests run against the session's Postgres (the hostile suite's
fixtures). Oracles: Pillow's own `ImageOps.exif_transpose` for orientation, pixel colours the test drew, and
what the database holds.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from PIL import Image, ImageFile, ImageOps

from eta.images import ImageError, ImageLimits, check_image, decode_image
from eta.store.models import Image as ImageRow
from eta.store.models import Job

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)
THIN = [(20_000, 100), (1_000_000, 40), (2_000_000, 20), (100, 20_000)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def thin_png(width: int, height: int) -> bytes:
    """A real, complete 1-bit greyscale PNG of `width` x `height` (a few KB: the rows compress to nothing)."""
    row = b"\x00" + b"\xaa" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def png(width: int, height: int, colour: tuple[int, int, int] = GREEN) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return out.getvalue()


def mpo(first: tuple[int, int, int] = RED, second: tuple[int, int, int] = BLUE) -> bytes:
    """A two-frame MPO as stereo cameras write it (Pillow writes the real format)."""
    out = io.BytesIO()
    Image.new("RGB", (48, 32), first).save(out, "MPO", save_all=True,
                                            append_images=[Image.new("RGB", (48, 32), second)])
    return out.getvalue()


def upright_picture() -> Image.Image:
    """60x30, red on its left third, green elsewhere: which way is up is visible in its pixels."""
    image = Image.new("RGB", (60, 30), GREEN)
    image.paste(RED, (0, 0, 20, 30))
    return image


def rotated_jpeg() -> bytes:
    """What a phone held upright writes: the sensor's pixels (the picture turned 90 degrees counter-clockwise)
    plus EXIF orientation 6, "turn 90 degrees clockwise to show"."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    upright_picture().transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


# ------------------------------------------------------------------------------ decoding, no services
@pytest.mark.parametrize(("width", "height"), THIN)
def test_a_thin_image_is_refused_from_its_header(width, height):
    data = thin_png(width, height)
    assert len(data) < 300_000 and width * height <= ImageLimits().max_pixels  # small, and inside the pixel limit
    for check in (lambda: decode_image(data), lambda: check_image(data, decode_pixels=0)):
        with pytest.raises(ImageError) as info:
            check()
        assert info.value.code == "image_aspect_ratio"
        assert f"{width}x{height}" in str(info.value) and "limit is 50" in str(info.value)


def test_an_image_just_inside_the_aspect_ratio_limit_decodes():
    decoded = decode_image(thin_png(5000, 100))
    assert (decoded.width, decoded.height) == (5000, 100) and decoded.image.mode == "RGB"


def test_the_decode_memory_budget_is_checked_before_decoding():
    # A header that claims 3000x3000 RGBA and carries no pixels: decoding would fail as unreadable, so the
    # budget's code proves the check ran first.
    header_only = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 3000, 3000, 8, 6, 0, 0, 0))
                   + _chunk(b"IEND", b""))
    with pytest.raises(ImageError) as info:
        decode_image(header_only, limits=ImageLimits(max_decode_bytes=64 * 1024 * 1024))
    assert info.value.code == "image_decode_too_large" and "3000x3000 RGBA" in str(info.value)
    with pytest.raises(ImageError) as info:
        decode_image(header_only)
    assert info.value.code == "image_unreadable"


def test_a_header_check_skips_the_pixels_but_not_the_structure():
    big = png(3000, 2000)
    info = check_image(big, decode_pixels=1_000_000)
    assert (info.width, info.height, info.decoded, info.mime) == (3000, 2000, False, "image/png")
    assert check_image(big).decoded
    truncated = big[: len(big) // 2]
    with pytest.raises(ImageError) as error:
        check_image(truncated, decode_pixels=0)
    assert error.value.code == "image_unreadable"
    corrupt = bytearray(big)
    corrupt[60] ^= 0xFF  # inside the first IDAT chunk: its checksum no longer matches
    with pytest.raises(ImageError):
        check_image(bytes(corrupt), decode_pixels=0)


def test_an_mpo_camera_file_is_read_as_the_jpeg_of_its_first_frame():
    data = mpo()
    assert Image.open(io.BytesIO(data)).format == "MPO"  # what Pillow calls it: refused before
    decoded = decode_image(data)
    assert (decoded.format, decoded.mime, decoded.image.size) == ("JPEG", "image/jpeg", (48, 32))
    assert _near(decoded.image.getpixel((24, 16)), RED)
    info = check_image(data)
    assert (info.format, info.mime) == ("JPEG", "image/jpeg")
    with pytest.raises(ImageError) as error:
        decode_image(data, limits=ImageLimits(formats=frozenset({"PNG"})))
    assert error.value.code == "image_format_not_allowed"


def test_exif_orientation_is_applied_once():
    data = rotated_jpeg()
    stored = Image.open(io.BytesIO(data))
    assert stored.size == (30, 60)  # the pixels as stored are sideways
    decoded = decode_image(data)
    oracle = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert decoded.image.size == oracle.size == (60, 30) and (decoded.width, decoded.height) == (60, 30)
    assert _near(decoded.image.getpixel((5, 15)), RED) and _near(decoded.image.getpixel((50, 15)), GREEN)
    assert decoded.image.tobytes() == oracle.tobytes()
    info = check_image(data, decode_pixels=0)
    assert (info.width, info.height) == (60, 30)


def test_a_preview_decodes_a_large_jpeg_at_a_fraction_of_its_size_and_upright():
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    Image.new("RGB", (3000, 4000), BLUE).save(out, "JPEG", exif=exif)  # shown as 4000x3000
    preview = decode_image(out.getvalue(), at_least=320)
    assert preview.image.size == (500, 375)  # the decoder's 1/8 scale, both sides still >= 320, then upright
    assert decode_image(out.getvalue()).image.size == (4000, 3000)
    assert decode_image(png(3000, 2000), at_least=320).image.size == (3000, 2000)  # only JPEG scales


def test_a_broken_exif_block_is_ignored_not_fatal():
    out = io.BytesIO()
    upright_picture().save(out, "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    assert decode_image(out.getvalue()).image.size == (60, 30)


def test_eta_run_refuses_a_thin_image_in_one_line(tmp_path):
    from eta.commands.main import main

    path = tmp_path / "thin.png"
    path.write_bytes(thin_png(1_000_000, 40))
    result = CliRunner().invoke(main, ["run", "--image", str(path), "--prompt", "What is it?"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "1000000x40" in lines[0] and "Traceback" not in result.output, result.output


# --------------------------------------------------------------------------------- the API (Postgres)
J, B = "/v1/jobs", "/v1/batches"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.postgres
@pytest.mark.parametrize(("width", "height"), THIN[:3])
def test_the_api_refuses_a_thin_image_naming_the_item(client, tenant, postgres_engine, width, height):
    response = client.post(B, headers=tenant.auth(), json={"items": [
        {"prompt": "fine", "custom_id": "ok"},
        {"prompt": "thin", "custom_id": "thin", "image_base64": _b64(thin_png(width, height))}]})
    assert response.status_code == 422, response.get_json()
    (error,) = response.get_json()["errors"]
    assert (error["index"], error["custom_id"], error["code"]) == (1, "thin", "image_aspect_ratio")
    with postgres_engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.custom_id == "thin")) == 0


@pytest.mark.postgres
def test_the_api_accepts_an_mpo_photo_as_a_jpeg(client, tenant, postgres_engine):
    data = mpo()
    response = client.post(J, headers=tenant.auth(), json={"prompt": "What is it?", "image_base64": _b64(data)})
    assert response.status_code == 202, response.get_json()
    with postgres_engine.connect() as connection:
        mime = connection.scalar(sa.select(ImageRow.mime).where(ImageRow.sha256 == hashlib.sha256(data).hexdigest()))
    assert mime == "image/jpeg"


@pytest.mark.postgres
def test_the_thumbnail_is_upright_like_the_models_input(client, tenant):
    made = client.post(J, headers=tenant.auth(), json={"prompt": "What is it?", "image_base64": _b64(rotated_jpeg())})
    assert made.status_code == 202, made.get_json()
    thumb = client.get(f"{J}/{made.get_json()['id']}/image?size=thumb", headers=tenant.auth())
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    image = Image.open(io.BytesIO(thumb.get_data()))
    assert image.size == (60, 30)  # wide, as shown; the stored pixels are tall
    assert ImageOps.exif_transpose(image).size == (60, 30)  # and no orientation left to apply a second time
    rgb = image.convert("RGB")
    assert _near(rgb.getpixel((5, 15)), RED) and _near(rgb.getpixel((50, 15)), GREEN)


@pytest.mark.postgres
def test_a_batch_of_large_images_decodes_within_the_request_budget(client, tenant, postgres_engine, monkeypatch):
    decoded_pixels: list[int] = []
    load = ImageFile.ImageFile.load

    def counting_load(self):
        decoded_pixels.append(self.size[0] * self.size[1])
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    images = [png(2400, 2000, (n, 100, 200)) for n in range(12)]  # 12 distinct images of 4.8 M pixels
    files = [(io.BytesIO(data), f"{n}.png") for n, data in enumerate(images)]
    manifest = "".join(f'{{"prompt": "p", "custom_id": "{n}", "image": "{n}.png"}}\n' for n in range(12))
    response = client.post(B, headers=tenant.auth(), content_type="multipart/form-data",
                           data={"manifest": (io.BytesIO(manifest.encode()), "m.jsonl"), "files": files})
    assert response.status_code == 202, response.get_json()
    budget = ImageLimits().request_decode_pixels
    assert sum(decoded_pixels) <= budget < 12 * 2400 * 2000
    digests = [hashlib.sha256(data).hexdigest() for data in images]
    with postgres_engine.connect() as connection:
        widths = connection.scalars(sa.select(ImageRow.width).where(ImageRow.sha256.in_(digests))).all()
    assert widths == [2400] * 12


@pytest.mark.postgres
def test_a_corrupt_image_past_the_budget_is_still_refused_when_its_structure_is_broken(client, tenant):
    big = [png(2400, 2000, (n, 1, 2)) for n in range(4)]
    broken = bytearray(big[3])
    broken[60] ^= 0xFF
    items = [{"prompt": "p", "custom_id": str(n), "image_base64": _b64(bytes(data))}
             for n, data in enumerate([*big[:3], broken])]
    response = client.post(B, headers=tenant.auth(), json={"items": items})
    assert response.status_code == 422, response.get_json()
    assert [error["index"] for error in response.get_json()["errors"]] == [3]


def test_thin_pngs_written_here_are_real_images(tmp_path: Path):
    image = Image.open(io.BytesIO(thin_png(64, 2)))
    image.load()
    assert image.size == (64, 2) and image.mode == "1"
