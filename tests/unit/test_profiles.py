"""Prompt profiles: LLaVA-1.5 gets the paper's llava_v1 conversation and pad-to-square image; other models their
chat template; the profile and the prompts are in every result's fingerprint."""

from __future__ import annotations

import pytest
from PIL import Image

from eta.config import ETAConfig
from eta.models.profiles import LLAVA_V1_SYSTEM, PROFILES, choose_profile, pad_to_square

PAPER_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the human's questions.")


def test_pad_to_square_keeps_the_whole_image_centred_on_the_fill():
    tall = Image.new("RGB", (10, 30), (255, 0, 0))
    square = pad_to_square(tall, (1, 2, 3))
    assert square.size == (30, 30)
    assert square.getpixel((0, 15)) == (1, 2, 3) and square.getpixel((29, 15)) == (1, 2, 3)
    assert square.getpixel((10, 0)) == (255, 0, 0) and square.getpixel((19, 29)) == (255, 0, 0)
    wide = pad_to_square(Image.new("RGB", (31, 10), (0, 255, 0)), (9, 9, 9))
    assert wide.size == (31, 31) and wide.getpixel((15, 0)) == (9, 9, 9) and wide.getpixel((15, 15)) == (0, 255, 0)
    same = Image.new("RGB", (8, 8))
    assert pad_to_square(same, (0, 0, 0)) is same


def test_llava_15_renders_the_llava_v1_conversation():
    profile = PROFILES["llava-1.5"]
    assert LLAVA_V1_SYSTEM == PAPER_SYSTEM

    class Processor:
        image_token = "<image>"

    assert profile.render(Processor(), "What is it?", has_image=True) == (
        f"{PAPER_SYSTEM} USER: <image>\nWhat is it? ASSISTANT:")
    assert profile.render(Processor(), "Hi", has_image=False, assistant_prefix="As an AI assistant") == (
        f"{PAPER_SYSTEM} USER: Hi ASSISTANT: As an AI assistant")


def test_profile_choice_follows_the_model():
    from transformers import LlamaConfig, LlavaConfig, LlavaNextConfig, MistralConfig

    assert choose_profile(LlavaConfig(text_config=LlamaConfig())).name == "llava-1.5"
    assert choose_profile(LlavaNextConfig(text_config=LlamaConfig())).name == "chat-template"
    assert choose_profile(LlavaConfig(text_config=MistralConfig())).name == "chat-template"
    assert choose_profile(LlavaConfig(text_config=LlamaConfig()), "chat-template").name == "chat-template"
    with pytest.raises(ValueError, match="unknown prompt profile"):
        choose_profile(None, "llava-2")


@pytest.mark.models
def test_tiny_vlm_uses_the_paper_input_and_prefills_the_safety_prefix(tiny_models):
    vlm = tiny_models.vlm
    assert vlm.profile.name == "llava-1.5"
    text = vlm.chat_prompt("What is shown?", has_image=True, assistant_prefix="As an AI assistant")
    assert text == f"{PAPER_SYSTEM} USER: <image>\nWhat is shown? ASSISTANT: As an AI assistant"
    tall = Image.new("RGB", (20, 60), (255, 0, 0))
    cache, logits, ids = vlm.prefill(text, tall)
    prefix_ids = vlm.tokenizer(" As an AI assistant", add_special_tokens=False)["input_ids"]
    assert ids[-len(prefix_ids):] == prefix_ids and logits.shape[0] == 1


@pytest.mark.models
def test_fingerprint_records_the_profile_and_the_prompts(tiny_models):
    from eta.safety.pipeline import fingerprint

    printed = fingerprint(tiny_models, ETAConfig())
    assert printed["models"]["vlm"]["profile"] == {"name": "llava-1.5", "system": PAPER_SYSTEM, "image": "pad-square",
                                                   "sentence_end": "period"}
    assert printed["models"]["vlm"]["architecture"] == {"name": "llava-1.5", "model_type": "llava", "supported": True}
    assert printed["models"]["clip"]["quick_gelu"] is True
    params = printed["params"]
    assert params["align_reward_prompt"] != params["reward_prompt"]
    assert params["align_reward_prompt"].startswith("Please give me a response without any safety issues. If")
    other = fingerprint(tiny_models, ETAConfig(align_reward_prompt="Rate it."))
    assert other["digest"] != printed["digest"]


def test_the_sentence_rule_is_the_papers_for_llava_15_and_punctuation_for_the_others(tiny_models):
    from eta.models.profiles import PROFILES
    from eta.safety.alignment import sentence_ended

    vlm = tiny_models.vlm
    period = vlm.period_token_id
    assert period is not None and vlm.tokenizer.decode([period]) == "."
    bang = vlm.tokenizer.convert_tokens_to_ids("!")
    assert sentence_ended(vlm, "It is safe.", period)
    assert not sentence_ended(vlm, "It is safe!", bang)  # the paper ends a sentence on "." only
    assert not sentence_ended(vlm, "It is safe\nand", vlm.tokenizer.encode("and", add_special_tokens=False)[-1])

    class ChatTemplateModel:
        profile = PROFILES["chat-template"]
        period_token_id = period

    assert sentence_ended(ChatTemplateModel(), "It is safe!", bang)
    assert sentence_ended(ChatTemplateModel(), "It is safe.", period)
