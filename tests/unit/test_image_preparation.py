"""LLaVA-1.5's pad-to-square made without a canvas larger than the model's input (issue 26, item 2).

The oracle is the old, obvious path: the image padded at full size (`expand2square`), then the real
`CLIPImageProcessor` (torchvision's resize) turns it into the model's pixels. The bounded path must give the same
pixels up to rounding, on ordinary images of every shape, and never allocate a large canvas.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from eta.models import profiles
from eta.models.profiles import PROFILES, input_side, pad_to_square

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
FILL = tuple(int(channel * 255) for channel in OPENAI_MEAN)


def _processor(side: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                              image_mean=OPENAI_MEAN, image_std=OPENAI_STD)


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like image: smooth random colour fields with edges (blurred, upsampled noise)."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((height // 8 + 1, width // 8 + 1, 3)) * 255).astype(np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC).filter(
        ImageFilter.GaussianBlur(1))


def _levels(processor, image: Image.Image) -> np.ndarray:
    """The processor's pixels back in 0-255 levels."""
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"][0].numpy()
    return pixels * np.array(OPENAI_STD).reshape(3, 1, 1) * 255


@pytest.mark.parametrize("side", [336, 32])
@pytest.mark.parametrize("size", [(1000, 667), (640, 480), (480, 640), (1000, 333), (4032, 3024), (3000, 120),
                                  (120, 3000), (1201, 1200), (777, 777)])
def test_the_bounded_square_gives_the_processor_the_same_pixels_as_the_full_square(size, side):
    processor = _processor(side)
    image = _photo(*size, seed=size[0] * 7 + size[1])
    old = _levels(processor, pad_to_square(image, FILL))
    new = _levels(processor, pad_to_square(image, FILL, side=side))
    difference = np.abs(old - new)
    # Tolerance: at most 3 levels of 255 on any pixel, 0.15 on average (Pillow's resize, one axis at a time with
    # 8-bit rounding between, against torchvision's resize of the full square; the image/fill borders included).
    assert difference.max() <= 3.0 + 1e-3, difference.max()
    assert difference.mean() <= 0.15, difference.mean()


def test_the_bounded_square_matches_pillows_own_resize_of_the_full_square():
    image = _photo(900, 500, seed=3)
    full = np.asarray(pad_to_square(image, FILL).resize((336, 336), Image.Resampling.BICUBIC), dtype=float)
    bounded = np.asarray(pad_to_square(image, FILL, side=336), dtype=float)
    assert np.abs(full - bounded).max() <= 1.0


def test_a_thin_image_never_builds_a_canvas_larger_than_the_input(monkeypatch):
    created: list[tuple[int, int]] = []
    new = Image.new

    def recording_new(mode, size, *args, **kwargs):
        assert size[0] * size[1] <= 336 * 40_000, f"a {size[0]}x{size[1]} canvas"
        created.append(tuple(size))
        return new(mode, size, *args, **kwargs)

    thin = Image.new("RGB", (200_000, 20), (255, 0, 0))  # the full square would be 4e10 pixels
    monkeypatch.setattr(profiles.Image, "new", recording_new)
    square = pad_to_square(thin, FILL, side=336)
    assert square.size == (336, 336) and created
    # The line is still there, at the centre, blended into the fill as the full square's resize blends it.
    centre = square.getpixel((168, 168))
    assert centre[0] > FILL[0] and centre[1] < FILL[1]
    assert square.getpixel((168, 0)) == FILL and square.getpixel((168, 335)) == FILL


def test_small_images_are_padded_exactly_as_before():
    image = _photo(30, 20, seed=1)
    assert pad_to_square(image, FILL, side=336).tobytes() == pad_to_square(image, FILL).tobytes()


def test_the_profile_prepares_a_square_of_the_processors_input_side():
    processor = _processor(336)
    assert input_side(processor) == 336
    prepared = PROFILES["llava-1.5"].prepare_image(_photo(2000, 500, seed=2), processor)
    assert prepared.size == (336, 336)
    assert PROFILES["chat-template"].prepare_image(_photo(200, 50, seed=2), processor).size == (200, 50)
