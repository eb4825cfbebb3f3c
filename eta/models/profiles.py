"""Prompt profiles: how a VLM's input is written (conversation) and how its image is prepared.

The thresholds were calibrated on the paper's inputs, so the input must be the paper's. For LLaVA-1.5 that is
the `llava_v1` conversation (a system text, then `USER: <image>\\n{prompt} ASSISTANT:`) and an image padded to a
square with the image processor's mean colour (LLaVA-1.5's `image_aspect_ratio: pad`) rather than centre-cropped:
llava-hf's chat template has no system text and its processor crops, which cuts off text at the edge of a tall
typographic image. Other models use their own chat template and processor (`chat-template`).

A profile is chosen per model: `ModelSpec.profile` when set, else `llava-1.5` for LLaVA-1.5 checkpoints
(a `llava` config over a Llama language model) and `chat-template` for everything else. The profile is part of
every result's fingerprint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass(frozen=True)
class PromptProfile:
    """A VLM's conversation format and image preparation.

    `system` is None for profiles that render through the processor's chat template; otherwise the prompt is
    `{system} USER: {image}\\n{prompt} ASSISTANT:` (LLaVA's `llava_v1`, separator a space). `image` is
    `pad-square` (pad to a square with the image processor's mean colour, then the processor) or `processor`.
    """

    name: str
    system: str | None
    image: str
    # Where a best-of-N candidate sentence ends: `period` (the paper's: only the "." token, LLaVA-1.5's 29889) or
    # `punctuation` (".", "!", "?" or a newline, judged on the decoded text).
    sentence_end: str = "punctuation"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "system": self.system, "image": self.image, "sentence_end": self.sentence_end}

    def render(self, processor: Any, prompt: str, *, has_image: bool, assistant_prefix: str | None = None) -> str:
        """The prompt text for one user turn, with the answer optionally prefilled with `assistant_prefix`."""
        if self.system is None:
            return _chat_template(processor, prompt, has_image=has_image, assistant_prefix=assistant_prefix)
        image_token = getattr(processor, "image_token", None) or "<image>"
        user = f"{image_token}\n{prompt}" if has_image else prompt
        text = f"{self.system} USER: {user} ASSISTANT:"
        return f"{text} {assistant_prefix}" if assistant_prefix else text

    def prepare_image(self, image: Image.Image, processor: Any) -> Image.Image:
        """The RGB image handed to the processor.

        `pad-square` never builds a canvas larger than the model's input: an image larger than the input is
        resized to it as part of the padding (see `pad_to_square`), instead of padded at full size and then
        resized by the processor (a 1000000x40 image made a 10^12-pixel canvas).
        """
        rgb = image.convert("RGB")
        if self.image != "pad-square":
            return rgb
        image_processor = getattr(processor, "image_processor", processor)
        mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        return pad_to_square(rgb, tuple(int(channel * 255) for channel in mean), side=input_side(image_processor))


# An image processor whose input size cannot be read gets squares of at most this side (larger than any
# LLaVA-style input, so the processor still makes the last resize).
_FALLBACK_SIDE = 2048


def input_side(image_processor: Any) -> int:
    """The side of the square the processor turns a square image into (its `shortest_edge`, `height`/`width`
    or `longest_edge`), else `_FALLBACK_SIDE`."""
    size = getattr(image_processor, "size", None)
    values = [_size_value(size, key) for key in ("shortest_edge", "height", "width", "longest_edge")]
    known = [value for value in values if value]
    return max(known) if known else _FALLBACK_SIDE


def _size_value(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return value if isinstance(value, int) and value > 0 else None


def pad_to_square(image: Image.Image, fill: tuple[int, ...], *, side: int | None = None) -> Image.Image:
    """`image` centred on a square canvas of its longer side, filled with `fill` (LLaVA's `expand2square`).

    With `side` smaller than the longer side, the result is that square already resized (bicubic) to `side` x
    `side`, made without building it: no image larger than `side` x (the image's short side plus a few output
    pixels' worth of fill) is ever allocated. It equals Pillow's resize of the full square up to rounding
    (tests/unit/test_profiles.py compares the two, and the processor's outputs of both).
    """
    width, height = image.size
    longer = max(width, height)
    if side is not None and longer > side:
        return _resized_square(image, fill, side)
    if width == height:
        return image
    canvas = Image.new(image.mode, (longer, longer), fill)
    canvas.paste(image, ((longer - width) // 2, (longer - height) // 2))
    return canvas


def _resized_square(image: Image.Image, fill: tuple[int, ...], side: int) -> Image.Image:
    width, height = image.size
    longer = max(width, height)
    scale = side / longer  # output pixels per source pixel, as for the full square
    # Along the long side the image spans the whole square: resize that axis alone (Pillow resamples one axis
    # at a time, the long one first here as in its resize of the full square).
    if width >= height:
        return _pad_rows(image.resize((side, height), Image.Resampling.BICUBIC), fill, side, scale, longer)
    across = image.resize((width, side), Image.Resampling.BICUBIC).transpose(Image.Transpose.TRANSPOSE)
    return _pad_rows(across, fill, side, scale, longer).transpose(Image.Transpose.TRANSPOSE)


def _pad_rows(rows: Image.Image, fill: tuple[int, ...], side: int, scale: float, longer: int) -> Image.Image:
    """`rows` (`side` wide, the image's short axis still at full size) placed where `expand2square` puts it and
    resized to `side` rows. Only a strip of the square is built: the image plus enough fill on each side for
    the bicubic window (2 output pixels) of every output row that reaches the image, so those rows blend image
    and fill as the full square's resize does; every other row is the fill in both."""
    height = rows.size[1]
    offset = (longer - height) // 2
    margin = math.ceil(3 / scale) + 2
    start, end = max(0, offset - margin), min(longer, offset + height + margin)
    strip = Image.new(rows.mode, (side, end - start), fill)
    strip.paste(rows, (0, offset - start))
    first, last = max(0, math.ceil(start * scale - 1e-9)), min(side, math.floor(end * scale + 1e-9))
    box = (0.0, max(0.0, first / scale - start), float(side), min(float(end - start), last / scale - start))
    canvas = Image.new(rows.mode, (side, side), fill)
    canvas.paste(strip.resize((side, last - first), Image.Resampling.BICUBIC, box=box), (0, first))
    return canvas


def _chat_template(processor: Any, prompt: str, *, has_image: bool, assistant_prefix: str | None) -> str:
    content: list[dict[str, str]] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": prompt})
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if assistant_prefix:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": assistant_prefix}]})
        return processor.apply_chat_template(messages, continue_final_message=True, tokenize=False)
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


PROFILES: dict[str, PromptProfile] = {
    "llava-1.5": PromptProfile("llava-1.5", system=LLAVA_V1_SYSTEM, image="pad-square", sentence_end="period"),
    "chat-template": PromptProfile("chat-template", system=None, image="processor"),
}


def is_llava_15(config: Any) -> bool:
    """A LLaVA-1.5 checkpoint: a `llava` model over a Llama language model (LLaVA-NeXT and OneVision have
    their own model types; BakLLaVA-style Mistral backbones are not LLaVA-1.5)."""
    text = getattr(config, "text_config", None)
    return getattr(config, "model_type", None) == "llava" and getattr(text, "model_type", None) == "llama"


def choose_profile(config: Any, name: str | None = None) -> PromptProfile:
    """The profile named `name`, else the one for this model config."""
    if name is not None:
        try:
            return PROFILES[name]
        except KeyError:
            raise ValueError(f"unknown prompt profile {name!r} (known: {', '.join(PROFILES)})") from None
    return PROFILES["llava-1.5"] if is_llava_15(config) else PROFILES["chat-template"]
