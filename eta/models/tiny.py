"""Tiny, deterministic stand-ins for the three production models.

No machine of this project can download weights, so tests, the demo and the benchmarks build small
random-weight models here and save them in the real on-disk formats: a LLaVA (`LlavaConfig` with a small
`CLIPVisionConfig` and `LlamaConfig`) with its `LlavaProcessor`, an open_clip model in the `local-dir:`
layout (`open_clip_config.json` + safetensors), and a Llama sequence classifier as reward model. The
tokenizer is a byte-level BPE trained here with `tokenizers`. Everything is then loaded back through the
production loaders, never through a shortcut. Their answers are noise; every score and decision is real.

A *shape* says how big the random models are: `tiny` (the default, for tests and the demo), `small` (tens of
millions of parameters, LLaVA-1.5's layout and a 32k vocabulary: a realistic CPU benchmark) and `llava-7b`
(LLaVA-1.5-7B's language model and vision tower, an ArmoRM/Llama-3-8B-shaped reward model and CLIP
ViT-L-14-336). `llava-7b` is too large to write to disk usefully; `build_random_models` builds any shape
directly on the target device in the target precision, for GPU timings with random weights.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from eta.models import Models

logger = logging.getLogger(__name__)

# Bump when the files written here change, so stale caches are rebuilt.
TINY_FORMAT_VERSION = 3
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

# The reward model's tokenizer is Llama-3's kind (ArmoRM's): its special tokens, its pre-tokenizer split (runs of
# newlines are one piece, so "\n\n" after a header is the same token alone as in context) and its chat template.
_LLAMA3_SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                          "<|eot_id|>"]
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + (message['content'] | trim) "
    "+ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# ArmoRM's head at small width: 19 objectives and 3 hidden gating layers as published, a narrower gate.
_ARMORM_OBJECTIVES = 19
_ARMORM_GATING_HIDDEN_LAYERS = 3

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
class DecoderShape:
    """A Llama decoder: the VLM's language model or the reward model's trunk."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


@dataclass(frozen=True)
class VisionShape:
    """The VLM's CLIP vision tower; (image_size / patch_size)**2 image tokens enter the prompt."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    projection_dim: int


@dataclass(frozen=True)
class ModelShape:
    """Sizes of the three random-weight models built here."""

    name: str
    # Vocabulary the byte-level BPE is trained to (the VLM and reward model share the tokenizer).
    vocab_size: int
    language: DecoderShape
    vision: VisionShape
    reward: DecoderShape
    # open_clip `model_cfg` of the CLIP scorer.
    clip: dict[str, Any] = field(hash=False)
    # Whether `build_tiny_models` may write it to disk (a 7B-shaped build would be ~30 GB of noise).
    saveable: bool = True
    # Width of ArmoRM's gating layers (1024 in the published model).
    gating_hidden_dim: int = 1024


_TINY_DECODER = DecoderShape(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2)

SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(
        name="tiny",
        vocab_size=640,
        language=_TINY_DECODER,
        vision=VisionShape(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=32),
        reward=_TINY_DECODER,
        clip={
            "embed_dim": 32,
            "quick_gelu": True,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        },
        gating_hidden_dim=64,
    ),
    # LLaVA-1.5's layout scaled down: 576 image tokens (336 px, patch 14), a 32k vocabulary, multi-head
    # attention in the VLM and grouped-query attention in the reward model (as in Llama-3-8B).
    "small": ModelShape(
        name="small",
        vocab_size=32000,
        language=DecoderShape(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                              num_key_value_heads=8),
        vision=VisionShape(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                           image_size=336, patch_size=14, projection_dim=256),
        reward=DecoderShape(hidden_size=512, intermediate_size=1792, num_hidden_layers=8, num_attention_heads=8,
                            num_key_value_heads=2),
        clip={
            "embed_dim": 256,
            "quick_gelu": True,
            "vision_cfg": {"image_size": 224, "layers": 4, "width": 256, "head_width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4},
        },
        gating_hidden_dim=256,
    ),
    # LLaVA-1.5-7B (Vicuna-7B language model, CLIP ViT-L/14-336 tower), ArmoRM's Llama-3-8B trunk (its
    # 128k vocabulary only changes an embedding lookup, so the shared 32k tokenizer stands in), and
    # open_clip's ViT-L-14-336.
    "llava-7b": ModelShape(
        name="llava-7b",
        vocab_size=32000,
        language=DecoderShape(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                              num_attention_heads=32, num_key_value_heads=32),
        vision=VisionShape(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14, projection_dim=768),
        reward=DecoderShape(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=8),
        clip={
            "embed_dim": 768,
            "quick_gelu": True,
            "vision_cfg": {"image_size": 336, "layers": 24, "width": 1024, "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12},
        },
        saveable=False,
    ),
}


def get_shape(name: str) -> ModelShape:
    """The shape called `name`; a ValueError lists the known ones."""
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown model shape {name!r} (known: {', '.join(SHAPES)})") from None


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


def is_built(root: str | os.PathLike[str], *, shape: str = "tiny") -> bool:
    """True when `root` holds a current build of `shape`."""
    marker = Path(root) / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("version") == TINY_FORMAT_VERSION and info.get("shape", "tiny") == shape


def ensure_tiny_models(root: str | os.PathLike[str], *, seed: int = 0, shape: str = "tiny") -> TinyPaths:
    """Build the models of `shape` under `root` unless a current build is already there."""
    if not is_built(root, shape=shape):
        build_tiny_models(root, seed=seed, shape=shape)
    return tiny_paths(root)


def build_tiny_models(root: str | os.PathLike[str], *, seed: int = 0, shape: str = "tiny") -> TinyPaths:
    """Build all three random-weight models into `root`, atomically: a half-written build is never left behind.

    Args:
        root: target directory; replaced if it exists.
        seed: seeds the weights; the same seed writes the same weights.
        shape: `tiny` (default) or `small`; see `SHAPES`.
    Returns:
        The paths of the three model directories.
    Raises:
        ValueError: an unknown shape, or one too large to save (`llava-7b`: use `build_random_models`).
    """
    spec = get_shape(shape)
    if not spec.saveable:
        raise ValueError(f"shape {shape!r} is too large to write to disk; build it on the device with "
                         "build_random_models")
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root.parent))
    try:
        tokenizer = _build_tokenizer(spec)
        paths = tiny_paths(staging)
        _build_vlm(paths.vlm, tokenizer, spec, seed=seed)
        _build_reward(paths.reward, _reward_tokenizer(spec), spec, seed=seed + 1)
        _build_clip(paths.clip, spec, seed=seed + 2)
        marker: dict[str, Any] = {"version": TINY_FORMAT_VERSION, "seed": seed}
        if spec.name != "tiny":  # the tiny marker stays as it always was (the build is byte-identical)
            marker["shape"] = spec.name
        (staging / _MARKER).write_text(json.dumps(marker))
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("built %s models in %s", spec.name, root)
    return tiny_paths(root)


def _synthetic_corpus(seed: int, *, words: int = 60_000, lines: int = 20_000) -> list[str]:
    """Pseudo-English sentences (letter frequencies of English, punctuation) from which a BPE can learn a
    vocabulary of tens of thousands of tokens; the real corpus lines are repeated so common words merge."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible corpus, not a secret
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5,
               1.0, 0.8, 0.2, 0.2, 0.1, 0.1]
    lexicon = ["".join(rng.choices(letters, weights, k=rng.randint(2, 11))) for _ in range(words)]
    out = []
    for _ in range(lines):
        sentence = " ".join(rng.choices(lexicon, k=rng.randint(5, 15))).capitalize()
        out.append(sentence + rng.choice([".", ".", "?", "!", ",", "\n"]))
    return _CORPUS_LINES * 50 + out


def _build_tokenizer(shape: ModelShape | None = None):  # -> PreTrainedTokenizerFast
    """A fresh copy of the tokenizer of `shape` (callers change its chat template and padding side)."""
    shape = shape or SHAPES["tiny"]
    return copy.deepcopy(_trained_tokenizer(shape.name == "tiny", shape.vocab_size, _max_positions(shape)))


@functools.lru_cache(maxsize=4)
def _trained_tokenizer(tiny_corpus: bool, vocab_size: int, max_positions: int):  # -> PreTrainedTokenizerFast
    # Training is deterministic; a 32k vocabulary takes seconds, so each one is trained once per process.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = _CORPUS_LINES * 4 if tiny_corpus else _synthetic_corpus(0)
    tok.train_from_iterator(corpus, trainer=trainer)
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
        model_max_length=max_positions,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _reward_tokenizer(shape: ModelShape | None = None):  # -> PreTrainedTokenizerFast
    """A fresh copy of the Llama-3-style tokenizer of the reward model of `shape`."""
    shape = shape or SHAPES["tiny"]
    return copy.deepcopy(_trained_reward_tokenizer(shape.name == "tiny", shape.vocab_size, _max_positions(shape)))


@functools.lru_cache(maxsize=4)
def _trained_reward_tokenizer(tiny_corpus: bool, vocab_size: int, max_positions: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())  # byte-level: every byte has a token, nothing is unknown
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_LLAMA3_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = _CORPUS_LINES * 4 if tiny_corpus else _synthetic_corpus(0)
    # The headers' words and the blank line after them, as the chat template writes them.
    chats = [f"user\n\n{a}assistant\n\n{b}" for a, b in zip(_CORPUS_LINES, reversed(_CORPUS_LINES), strict=True)]
    tok.train_from_iterator(lines + chats * 8, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        model_max_length=max_positions,
    )
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    return fast


def _max_positions(shape: ModelShape) -> int:
    return 2048 if shape.name == "tiny" else 4096  # LLaVA-1.5 and Llama-3 read 4096 tokens or more


def _llama_config(tokenizer, decoder: DecoderShape = _TINY_DECODER, *, max_positions: int = 2048, **overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=decoder.hidden_size,
        intermediate_size=decoder.intermediate_size,
        num_hidden_layers=decoder.num_hidden_layers,
        num_attention_heads=decoder.num_attention_heads,
        num_key_value_heads=decoder.num_key_value_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _vlm_config(tokenizer, shape: ModelShape):  # -> LlavaConfig
    from transformers import CLIPVisionConfig, LlavaConfig

    v = shape.vision
    vision = CLIPVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
        projection_dim=v.projection_dim,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=_llama_config(tokenizer, shape.language, max_positions=_max_positions(shape)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),  # type: ignore[call-arg]
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


def _generation_config(tokenizer):  # -> GenerationConfig
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vlm_processor(tokenizer, shape: ModelShape):  # -> LlavaProcessor
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_size = shape.vision.image_size
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=shape.vision.patch_size,
        vision_feature_select_strategy="default",
        # LLaVA-1.5's "default" strategy drops the CLS token that the processor counts: add it back.
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def _reward_config(tokenizer, shape: ModelShape):  # -> LlamaConfig
    """ArmoRM's config.json at small width: a Llama config naming the gated architecture and its head's keys."""
    from eta.models.armorm import ARMORM_ARCHITECTURE, GATE_MARKER

    return _llama_config(
        tokenizer, shape.reward, max_positions=_max_positions(shape), architectures=[ARMORM_ARCHITECTURE],
        gate_token_pattern=tokenizer.encode(GATE_MARKER, add_special_tokens=False),
        num_objectives=_ARMORM_OBJECTIVES, gating_temperature=10, gating_hidden_dim=shape.gating_hidden_dim,
        gating_n_hidden=_ARMORM_GATING_HIDDEN_LAYERS,
    )


def _build_vlm(path: Path, tokenizer, shape: ModelShape, *, seed: int) -> None:
    from transformers import LlavaForConditionalGeneration

    config = _vlm_config(tokenizer, shape)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = _generation_config(tokenizer)
    processor = _vlm_processor(tokenizer, shape)
    model.save_pretrained(path)
    processor.save_pretrained(path)


def _build_reward(path: Path, tokenizer, shape: ModelShape, *, seed: int) -> None:
    """ArmoRM's layout (Llama backbone, 19-objective regression layer, gate, transform matrix) with random
    weights; `tokenizer` is the Llama-3-style one of `_reward_tokenizer`."""
    from eta.models.armorm import LlamaForRewardModelWithGating

    torch.manual_seed(seed)
    model = LlamaForRewardModelWithGating(_reward_config(tokenizer, shape)).eval()
    _spread_gate(model)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _spread_gate(model) -> None:
    """Give the random gate weights large enough to make it depend on its input: with the usual small
    initialisation, softmax(logits / 10) is uniform and a gate read at the wrong token would go unnoticed."""
    with torch.no_grad():
        for layer in model.gating.layers:
            layer.weight.normal_(0.0, 3.0 / layer.weight.shape[1] ** 0.5)
        last = model.gating.layers[-1]
        last.weight.mul_(10.0)


# OpenAI CLIP normalisation, as the production ViT-L-14-336 uses.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_CLIP_PREPROCESS = {"mean": _CLIP_MEAN, "std": _CLIP_STD, "interpolation": "bicubic", "resize_mode": "shortest"}


def _build_clip(path: Path, shape: ModelShape, *, seed: int) -> None:
    import open_clip
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    # pretrained_cfg records the activation the weights were trained with (as open_clip's tag registry does for
    # OpenAI's: QuickGELU), so the loader can refuse a config that builds the other one.
    config: dict[str, Any] = {"model_cfg": shape.clip, "preprocess_cfg": _CLIP_PREPROCESS,
                              "pretrained_cfg": {"quick_gelu": bool(shape.clip.get("quick_gelu", False))}}
    (path / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**config["model_cfg"])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))


# ------------------------------------------------------------------------------------ built in memory
def build_random_models(shape: str = "tiny", *, seed: int = 0, device: str = "auto", dtype: str = "auto",
                        roles: Iterable[str] = ("vlm", "clip", "reward")) -> Models:
    """Random-weight models of `shape` built directly on `device` in `dtype`, wrapped in the adapters.

    Nothing is written to disk: this is how a 7B-shaped model gets onto a GPU for timings without saving
    and reloading ~30 GB of noise. The configs, processor and tokenizer are the ones `build_tiny_models`
    saves, so a `tiny` or `small` model built here has the same architecture as one loaded from disk
    (not the same weights: initialisation runs on the target device, in the target precision).

    Args:
        shape: a name in `SHAPES`.
        seed: seeds the weights.
        device, dtype: as in `ModelSpec` (`auto` is cuda + bfloat16 when there is a GPU, else cpu + float32).
        roles: which of vlm, clip, reward to build.
    """
    from transformers import LlavaForConditionalGeneration

    from eta.config import ModelSpec
    from eta.models import ClipScorer, Models, RewardModel, VisionLanguageModel
    from eta.models.armorm import LlamaForRewardModelWithGating
    from eta.models.common import resolve_device, resolve_dtype

    spec = get_shape(shape)
    wanted = set(roles)
    placement = resolve_device(device)
    precision = resolve_dtype(dtype, placement)
    models = Models()

    def model_spec(role: str) -> ModelSpec:
        return ModelSpec(f"random:{spec.name}/{role}", device=str(placement), dtype=dtype)  # type: ignore[arg-type]

    if "vlm" in wanted:
        vlm_tokenizer = _build_tokenizer(spec)
        torch.manual_seed(seed)
        with torch.device(placement):
            vlm = LlavaForConditionalGeneration._from_config(_vlm_config(vlm_tokenizer, spec), dtype=precision)
        vlm.eval()
        vlm.generation_config = _generation_config(vlm_tokenizer)
        models.vlm = VisionLanguageModel(vlm, _vlm_processor(vlm_tokenizer, spec), spec=model_spec("vlm"),
                                         device=placement, dtype=precision)
    if "reward" in wanted:
        reward_tokenizer = _reward_tokenizer(spec)
        torch.manual_seed(seed + 1)
        with torch.device(placement):
            reward = LlamaForRewardModelWithGating._from_config(_reward_config(reward_tokenizer, spec),
                                                                dtype=precision)
        _spread_gate(reward)
        reward.eval()
        models.reward = RewardModel(reward, reward_tokenizer, spec=model_spec("reward"), device=placement,
                                    dtype=precision)
    if "clip" in wanted:
        import open_clip

        torch.manual_seed(seed + 2)
        with torch.device(placement):
            clip = open_clip.CLIP(**spec.clip)
        clip.to(dtype=precision).eval()
        preprocess = open_clip.image_transform(spec.clip["vision_cfg"]["image_size"], is_train=False,
                                               **_CLIP_PREPROCESS)
        clip_tokenizer = open_clip.SimpleTokenizer(context_length=spec.clip["text_cfg"]["context_length"])
        models.clip = ClipScorer(clip, preprocess, clip_tokenizer, spec=model_spec("clip"), device=placement,
                                 dtype=precision)
    logger.info("built random %s models %s on %s as %s", spec.name, sorted(wanted), placement, precision)
    return models


def parameter_counts(shape: str) -> dict[str, int]:
    """Parameters of each model of `shape`, counted on the meta device (nothing is allocated)."""
    import open_clip
    from transformers import LlavaForConditionalGeneration

    from eta.models.armorm import LlamaForRewardModelWithGating

    spec = get_shape(shape)
    tokenizer = _build_tokenizer(spec)
    with torch.device("meta"):
        vlm = LlavaForConditionalGeneration(_vlm_config(tokenizer, spec))
        reward = LlamaForRewardModelWithGating(_reward_config(_reward_tokenizer(spec), spec))
        clip = open_clip.CLIP(**spec.clip)

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    return {
        "vlm": count(vlm),
        "vlm_vision_tower": count(vlm.model.vision_tower),
        "reward": count(reward),
        "clip": count(clip),
    }
