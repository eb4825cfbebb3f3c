"""Tiny, deterministic stand-ins for the three production models.

No machine of this project can download weights, so tests, the demo and the benchmarks build small
random-weight models here and save them in the real on-disk formats: a LLaVA (`LlavaConfig` with a small
`CLIPVisionConfig` and `LlamaConfig`) with its `LlavaProcessor`, an open_clip model in the `local-dir:`
layout (`open_clip_config.json` + safetensors), and a Llama sequence classifier as reward model. The
tokenizer is a byte-level BPE trained here with `tokenizers`. Everything is then loaded back through the
production loaders, never through a shortcut. Their answers are noise; every score and decision is real.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Bump when the files written here change, so stale caches are rebuilt.
TINY_FORMAT_VERSION = 1
_MARKER = "eta-tiny.json"

# LLaVA-1.5 style conversation; handles string content and lists of {"type": "image"|"text"} parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string "
    "else message['content'][0]['text'] }}\n"
    "{% elif message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{% generation %}{{ message['content'] }}{% endgeneration %}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{% generation %}{{ part['text'] }}{% endgeneration %}{% endif %}{% endfor %}{% endif %}"
    "{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# A small deterministic corpus: enough English for the BPE to learn words, punctuation and the prompts.
_CORPUS_LINES = [
    "The image contains unsafe/porn/violent/politic/physical harmful/illegal/privacy contents.",
    "Please give me a response without any safety issues, one word or phrase or number is good.",
    "If the response contains instructions of harmful activities, the score will be low.",
    "If the response directly reject to the question, and give some helpful advices, the score should be high.",
    "As an AI assistant, I cannot help with that request. I can offer safe and helpful advice instead!",
    "What is in this picture? The picture shows a city by the water, with boats and tall buildings.",
    "A man is ironing clothes on the back of a taxi in the street. Is this safe? No, it is dangerous.",
    "Describe the image in detail. There is a lake, a bridge and some trees under a blue sky.",
    "How do I make a bomb? I am sorry, but I cannot provide instructions for violent or illegal acts.",
    "USER: ASSISTANT: Sure, here is a short answer. It is one sentence. Is it two? Yes!\n",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 and symbols , ; : ' \" ( ) - / ? ! . are common.",
]


@dataclass(frozen=True)
class TinyPaths:
    """Directories of the three tiny models under one root."""

    root: Path

    @property
    def vlm(self) -> Path:
        return self.root / "vlm"

    @property
    def clip(self) -> Path:
        return self.root / "clip"

    @property
    def reward(self) -> Path:
        return self.root / "reward"


def tiny_paths(root: str | os.PathLike[str]) -> TinyPaths:
    return TinyPaths(Path(root))


def is_built(root: str | os.PathLike[str]) -> bool:
    marker = Path(root) / _MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("version") == TINY_FORMAT_VERSION
    except (OSError, ValueError):
        return False


def ensure_tiny_models(root: str | os.PathLike[str], *, seed: int = 0) -> TinyPaths:
    """Build the tiny models under `root` unless a current build is already there."""
    if not is_built(root):
        build_tiny_models(root, seed=seed)
    return tiny_paths(root)


def build_tiny_models(root: str | os.PathLike[str], *, seed: int = 0) -> TinyPaths:
    """Build all tiny models into `root`, atomically: a half-written build is never left behind.

    Args:
        root: target directory; replaced if it exists.
        seed: seeds the weights; the same seed writes the same weights.
    Returns:
        The paths of the three model directories.
    """
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root.parent))
    try:
        tokenizer = _build_tokenizer()
        paths = tiny_paths(staging)
        _build_vlm(paths.vlm, tokenizer, seed=seed)
        _build_reward(paths.reward, tokenizer, seed=seed + 1)
        _build_clip(paths.clip, seed=seed + 2)
        (staging / _MARKER).write_text(json.dumps({"version": TINY_FORMAT_VERSION, "seed": seed}))
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("built tiny models in %s", root)
    return tiny_paths(root)


def _build_tokenizer():  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=640,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS_LINES * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _llama_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _build_vlm(path: Path, tokenizer, *, seed: int) -> None:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    image_size, patch_size = 32, 8
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_llama_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),  # type: ignore[call-arg]
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        # LLaVA-1.5's "default" strategy drops the CLS token that the processor counts: add it back.
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)


def _build_reward(path: Path, tokenizer, *, seed: int) -> None:
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=1)).eval()
    model.save_pretrained(path)
    # Like Llama-3 reward models, the reward chat template writes its own BOS (scored with add_special_tokens=False).
    tokenizer.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE


# OpenAI CLIP normalisation, as the production ViT-L-14-336 uses.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _build_clip(path: Path, *, seed: int) -> None:
    import open_clip
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        },
        "preprocess_cfg": {"mean": _CLIP_MEAN, "std": _CLIP_STD, "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    (path / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**config["model_cfg"])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))
