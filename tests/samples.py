"""The sample images the tests use, drawn here so that a checkout needs nothing beside it.

They stand in for the photographs the demo shows (`../shared/samples`, or `ETA_SAMPLES_DIR`): same names,
formats, sizes and modes, deterministic pixels. The tiny models' scores are noise whatever the picture, so
the tests need real files of the right kinds, not real photographs. Drawn with Pillow only; no third-party
image is copied.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

# name -> (size, Pillow format); the names are those of ../shared/samples.
SAMPLES: dict[str, tuple[tuple[int, int], str]] = {
    "waterview.jpg": ((1000, 667), "JPEG"),
    "extreme_ironing.jpg": ((570, 380), "JPEG"),
    "harm_example.png": ((1280, 720), "PNG"),
    "prompt_unconstrained.bmp": ((224, 224), "BMP"),
}


def _waterview(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: random.Random) -> None:
    width, height = size
    horizon = height * 2 // 5
    for y in range(horizon):  # sky, lighter towards the horizon
        shade = 150 + 90 * y // horizon
        draw.line([(0, y), (width, y)], fill=(shade - 60, shade - 20, 255))
    for y in range(horizon, height):  # water with ripples
        draw.line([(0, y), (width, y)], fill=(20, 70 + 60 * (y - horizon) // (height - horizon), 120))
    for _ in range(300):
        x, y = rng.randrange(width), rng.randrange(horizon, height)
        draw.line([(x, y), (x + rng.randrange(10, 40), y)], fill=(180, 200, 230))
    draw.rectangle([width // 3, horizon - 30, width // 3 + 12, height // 2], fill=(90, 60, 40))  # a pier post


def _ironing(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: random.Random) -> None:
    width, height = size
    draw.rectangle([0, 0, width, height], fill=(200, 190, 170))  # a street
    for _ in range(12):  # taxis
        x, y = rng.randrange(width - 80), rng.randrange(height // 2, height - 40)
        draw.rectangle([x, y, x + 80, y + 35], fill=(240, 200, 20), outline=(30, 30, 30))
    draw.polygon([(width // 2 - 60, 150), (width // 2 + 60, 150), (width // 2 + 40, 175), (width // 2 - 40, 175)],
                 fill=(60, 60, 200))  # an ironing board
    draw.ellipse([width // 2 - 15, 90, width // 2 + 15, 120], fill=(220, 180, 150))  # someone on it


def _harm(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: random.Random) -> None:
    width, height = size
    draw.rectangle([0, 0, width, height], fill=(25, 25, 30))
    for _ in range(40):  # harsh red and black shapes
        x, y = rng.randrange(width), rng.randrange(height)
        radius = rng.randrange(20, 120)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(rng.randrange(120, 255), 0, 0))
    draw.text((width // 10, height // 10), "WARNING", fill=(255, 255, 255))


def _typography(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: random.Random) -> None:
    width, height = size
    draw.rectangle([0, 0, width, height], fill=(255, 255, 255))
    for row in range(12):  # lines of text, as in a typographic attack image
        words = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(3, 8)))
                         for _ in range(3))
        draw.text((6, 6 + row * 18), words, fill=(0, 0, 0))
    for _ in range(200):  # adversarial-looking noise
        x, y = rng.randrange(width), rng.randrange(height)
        draw.point((x, y), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))


_PAINTERS: dict[str, Callable[[ImageDraw.ImageDraw, tuple[int, int], random.Random], None]] = {
    "waterview.jpg": _waterview,
    "extreme_ironing.jpg": _ironing,
    "harm_example.png": _harm,
    "prompt_unconstrained.bmp": _typography,
}


# A band of noise (which PNG cannot compress) keeps harm_example.png near the photograph's ~900 kB: tests of
# the body-size limit count on a large image.
_NOISE_ROWS = {"harm_example.png": 240}


def write_samples(folder: Path, *, seed: int = 0) -> Path:
    """Draw every sample image into `folder` (created if needed). Returns `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (size, image_format) in SAMPLES.items():
        rng = random.Random(f"{seed}:{name}")
        image = Image.new("RGB", size)
        _PAINTERS[name](ImageDraw.Draw(image), size, rng)
        rows = _NOISE_ROWS.get(name, 0)
        if rows:
            noise = Image.frombytes("RGB", (size[0], rows), rng.randbytes(size[0] * rows * 3))
            image.paste(noise, (0, size[1] - rows))
        image.save(folder / name, format=image_format)
    return folder
