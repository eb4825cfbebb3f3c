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
        """The RGB image handed to the processor."""
        rgb = image.convert("RGB")
        if self.image != "pad-square":
            return rgb
        image_processor = getattr(processor, "image_processor", processor)
        mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        return pad_to_square(rgb, tuple(int(channel * 255) for channel in mean))


def pad_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """`image` centred on a square canvas of its longer side, filled with `fill` (LLaVA's `expand2square`)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
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
