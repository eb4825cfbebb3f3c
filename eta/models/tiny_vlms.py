"""Tiny production-shaped builds of every VLM architecture of the support matrix (see docs/models.md).

Each build is made offline from the architecture's own transformers config class, with its own processor class
(image processor constructed directly at a small size), a byte-level BPE trained here carrying the model's
special tokens, and a chat template writing the model's own conversation format. It is saved with
`save_pretrained` and loaded back through `AutoProcessor` / `AutoModelForImageTextToText`, the production path.
Random init leaves Mllama's cross-attention gates and Gemma 3's image projector at zero: they are set non-zero
here, or the image would not change a single logit and an engine bug on the image path would stay invisible.

`build_tiny_vlm(path, "qwen2.5-vl")`; `eta models build-tiny --arch qwen2.5-vl DIR`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from eta.models.tiny import _CORPUS_LINES

# Bump when the files written here change, so stale caches are rebuilt.
TINY_VLM_FORMAT_VERSION = 1
_MARKER = "eta-tiny-vlm.json"

_SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


# ------------------------------------------------------------------------------------------------ tokenizers
@functools.lru_cache(maxsize=16)
def _trained(special: tuple[str, ...], vocab_size: int):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS_LINES * 4 + ["user\nassistant\nmodel\nsystem\n"] * 8, trainer=trainer)
    return tok


def _tokenizer(special: list[str], *, bos: str | None, eos: str, pad: str, template: str,
               extra: dict[str, str] | None = None, vocab_size: int = 700):  # -> PreTrainedTokenizerFast
    import copy

    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = copy.deepcopy(_trained(tuple(special), vocab_size))
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   extra_special_tokens=extra or {}, model_max_length=4096)
    fast.chat_template = template
    return fast


def _parts(open_image: str, close_image: str = "") -> str:
    """Jinja for a message's content: a string, or a list of image / text parts (image written as given)."""
    return (
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + open_image +
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}" + close_image
    )


def _turns(*, start: str, end: str, roles: dict[str, str], image: str, generation: str,
           bos: str = "") -> str:
    """A chat template of `start + role + content + end` turns (Llama-3, ChatML and Gemma all have this form);
    the assistant's last turn is left open when the caller continues it."""
    role = "{% set role = message['role'] %}" + "".join(
        f"{{% if role == '{k}' %}}{{% set role = '{v}' %}}{{% endif %}}" for k, v in roles.items())
    return (
        bos + "{% for message in messages %}" + role + start + "{{ role }}" +
        ("\n" if "header" not in start else "<|end_header_id|>\n\n") + _parts(image) +
        "{% if not (loop.last and message['role'] == 'assistant') %}" + end + "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}" + generation + "{% endif %}"
    )


def _llama3_template(image: str) -> str:
    return _turns(start="<|start_header_id|>", end="<|eot_id|>", roles={}, image=image,
                  generation="<|start_header_id|>assistant<|end_header_id|>\n\n", bos="{{ bos_token }}")


def _chatml_template(image: str) -> str:
    return _turns(start="<|im_start|>", end="<|im_end|>\n", roles={}, image=image,
                  generation="<|im_start|>assistant\n")


_LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>", "<|finetune_right_pad_id|>"]
_QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]


def _qwen_tokenizer(image: str = "<|vision_start|><|image_pad|><|vision_end|>", extra_special: list[str] | None = None,
                    extra: dict[str, str] | None = None):
    extra = extra if extra is not None else {
        "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
        "vision_end_token": "<|vision_end|>"}
    return _tokenizer(_QWEN_SPECIAL + (extra_special or []), bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                      template=_chatml_template(image), extra=extra)


def _ids(tokenizer, *names: str) -> list[int]:
    return [int(tokenizer.convert_tokens_to_ids(n)) for n in names]


def _text(tokenizer, **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(_SIZE, vocab_size=len(tokenizer), max_position_embeddings=4096,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    out.update(overrides)
    return out


def _clip_vision(**overrides: Any):
    from transformers import CLIPVisionConfig

    kwargs: dict[str, Any] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8, projection_dim=32)
    kwargs.update(overrides)
    return CLIPVisionConfig(**kwargs)


def _siglip_vision(**overrides: Any):
    from transformers import SiglipVisionConfig

    kwargs: dict[str, Any] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8)
    kwargs.update(overrides)
    return SiglipVisionConfig(**kwargs)


_GRID = [[32, 32], [32, 64], [64, 32], [64, 64]]


# ------------------------------------------------------------------------------------------------ builders
def _llava_next() -> tuple[Any, Any]:
    from transformers import (
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tok = _tokenizer(_LLAMA3_SPECIAL + ["<image>"], bos="<|begin_of_text|>", eos="<|eot_id|>",
                     pad="<|finetune_right_pad_id|>", template=_llama3_template("<image>\n"),
                     extra={"image_token": "<image>"})
    config = LlavaNextConfig(vision_config=_clip_vision(), text_config=LlamaConfig(**_text(tok)),
                             image_token_index=_ids(tok, "<image>")[0], image_grid_pinpoints=_GRID,
                             vision_feature_select_strategy="default", vision_feature_layer=-2)
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                              image_grid_pinpoints=_GRID)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=tok.chat_template)
    return LlavaNextForConditionalGeneration(config), processor


def _llava_onevision() -> tuple[Any, Any]:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
    )

    tok = _qwen_tokenizer("<image>\n", extra_special=["<image>", "<video>"],
                          extra={"image_token": "<image>", "video_token": "<video>"})
    config = LlavaOnevisionConfig(vision_config=_siglip_vision(), text_config=Qwen2Config(**_text(tok)),
                                  image_token_index=_ids(tok, "<image>")[0], video_token_index=_ids(tok, "<video>")[0],
                                  image_grid_pinpoints=_GRID, vision_feature_select_strategy="full",
                                  vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9")
    image_processor = LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}, image_grid_pinpoints=_GRID)
    processor = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tok,
                                        video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=16,
                                        vision_feature_select_strategy="full", chat_template=tok.chat_template)
    return LlavaOnevisionForConditionalGeneration(config), processor


def _qwen_vision() -> dict[str, Any]:
    return dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                temporal_patch_size=2)


def _qwen_image_processor(cls: Any, patch: int = 14) -> Any:
    # 56-112 px: 2x2 to 4x4 merged tokens, the grid following the image's aspect ratio.
    side = patch * 2
    return cls(min_pixels=(2 * side) ** 2, max_pixels=(4 * side) ** 2, patch_size=patch, merge_size=2,
               size={"shortest_edge": (2 * side) ** 2, "longest_edge": (4 * side) ** 2})


def _qwen_ids(tok) -> dict[str, Any]:
    image, video, start, end = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return dict(image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end)


def _mrope(sections: list[int]) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections}


def _qwen2_5_vl() -> tuple[Any, Any]:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = _qwen_tokenizer()
    vision = dict(_qwen_vision(), out_hidden_size=64, window_size=56, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=_text(tok, rope_parameters=_mrope([2, 3, 3])), vision_config=vision,
                              **_qwen_ids(tok))
    processor = Qwen2_5_VLProcessor(image_processor=_qwen_image_processor(Qwen2VLImageProcessor), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=tok.chat_template)
    return Qwen2_5_VLForConditionalGeneration(config), processor


def _qwen2_vl() -> tuple[Any, Any]:
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = _qwen_tokenizer()
    vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=_text(tok, rope_parameters=_mrope([2, 3, 3])), vision_config=vision,
                           **_qwen_ids(tok))
    processor = Qwen2VLProcessor(image_processor=_qwen_image_processor(Qwen2VLImageProcessor), tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor(), chat_template=tok.chat_template)
    return Qwen2VLForConditionalGeneration(config), processor


def _qwen3_vl() -> tuple[Any, Any]:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    tok = _qwen_tokenizer()
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    text = _text(tok, head_dim=16, rope_parameters={**_mrope([2, 3, 3]), "mrope_interleaved": True})
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_ids(tok))
    processor = Qwen3VLProcessor(image_processor=_qwen_image_processor(Qwen2VLImageProcessor, patch=16),
                                 tokenizer=tok, video_processor=Qwen3VLVideoProcessor(),
                                 chat_template=tok.chat_template)
    return Qwen3VLForConditionalGeneration(config), processor


def _mllama() -> tuple[Any, Any]:
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessor,
        MllamaProcessor,
        MllamaTextConfig,
        MllamaVisionConfig,
    )

    tok = _tokenizer(_LLAMA3_SPECIAL + ["<|image|>", "<|python_tag|>"], bos="<|begin_of_text|>", eos="<|eot_id|>",
                     pad="<|finetune_right_pad_id|>", template=_llama3_template("<|image|>"),
                     extra={"image_token": "<|image|>"})
    vision = MllamaVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                                attention_heads=2, image_size=32, patch_size=8, max_num_tiles=2,
                                intermediate_layers_indices=[0], vision_output_dim=64,
                                supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]])
    # Layer 1 of three is a cross-attention layer (Llama-3.2-Vision: every fifth).
    text = MllamaTextConfig(**_text(tok, num_hidden_layers=3, cross_attention_layers=[1]))
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=_ids(tok, "<|image|>")[0])
    image_processor = MllamaImageProcessor(size={"height": 32, "width": 32}, max_image_tiles=2)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=tok.chat_template)
    model = MllamaForConditionalGeneration(config)
    with torch.no_grad():  # zero-initialised gates: tanh(0) = 0 would cut the image off entirely
        for name, parameter in model.named_parameters():
            if "cross_attn_attn_gate" in name or "cross_attn_mlp_gate" in name:
                parameter.fill_(1.0)
    return model, processor


def _gemma3() -> tuple[Any, Any]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
    )

    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
               "<end_of_image>", "<image_soft_token>"]
    template = _turns(start="<start_of_turn>", end="<end_of_turn>\n", roles={"assistant": "model"},
                      image="<start_of_image>", generation="<start_of_turn>model\n", bos="{{ bos_token }}")
    tok = _tokenizer(special, bos="<bos>", eos="<end_of_turn>", pad="<pad>", template=template,
                     extra={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                            "eoi_token": "<end_of_image>"})
    # Sliding window of 6 positions over layers 0 and 2, full attention at layer 1 (Gemma 3: five sliding to
    # one full): a prompt of a few dozen tokens is far longer than the window, so the window matters.
    text = Gemma3TextConfig(**_text(tok, num_hidden_layers=3, head_dim=16, query_pre_attn_scalar=16,
                                    sliding_window=6,
                                    layer_types=["sliding_attention", "full_attention", "sliding_attention"]))
    boi, eoi, image = _ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    config = Gemma3Config(text_config=text, vision_config=_siglip_vision(), mm_tokens_per_image=4,
                          boi_token_index=boi, eoi_token_index=eoi, image_token_index=image)
    image_processor = Gemma3ImageProcessor(size={"height": 32, "width": 32})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=4,
                                chat_template=tok.chat_template)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # the projector's RMSNorm starts at zero scale (1 + 0): random, so images differ
        projector = model.model.multi_modal_projector
        projector.mm_input_projection_weight.normal_(0.0, 0.5)
        projector.mm_soft_emb_norm.weight.normal_(0.0, 0.5)
    return model, processor


def _llava_15() -> tuple[Any, Any]:
    from transformers import LlavaForConditionalGeneration

    from eta.models.tiny import SHAPES, _build_tokenizer, _vlm_config, _vlm_processor

    tok = _build_tokenizer(SHAPES["tiny"])
    model = LlavaForConditionalGeneration(_vlm_config(tok, SHAPES["tiny"]))
    return model, _vlm_processor(tok, SHAPES["tiny"])


def _internvl() -> tuple[Any, Any]:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    tok = _qwen_tokenizer("<IMG_CONTEXT>\n", extra_special=["<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
                          extra={"start_image_token": "<img>", "end_image_token": "</img>",
                                 "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    vision = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=[32, 32], patch_size=[8, 8])
    config = InternVLConfig(vision_config=vision, text_config=Qwen2Config(**_text(tok, initializer_range=0.1)),
                            image_token_id=_ids(tok, "<IMG_CONTEXT>")[0], downsample_ratio=0.5,
                            vision_feature_layer=-1, vision_feature_select_strategy="default")
    # InternVL3 tiles an image (up to 12 tiles and a thumbnail, as its processor does by default).
    image_processor = GotOcr2ImageProcessor(size={"height": 32, "width": 32})
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tok,
                                  video_processor=InternVLVideoProcessor(), image_seq_length=4,
                                  chat_template=tok.chat_template)
    return InternVLForConditionalGeneration(config), processor


BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "llava-1.5": _llava_15,  # the project's own tiny LLaVA (eta.models.tiny)
    "llava-next": _llava_next,
    "llava-onevision": _llava_onevision,
    "qwen2-vl": _qwen2_vl,
    "qwen2.5-vl": _qwen2_5_vl,
    "qwen3-vl": _qwen3_vl,
    "mllama": _mllama,
    "gemma3": _gemma3,
    "internvl": _internvl,
}
ARCHITECTURES = tuple(BUILDERS)


def is_built(path: str | os.PathLike[str], arch: str) -> bool:
    marker = Path(path) / _MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("version") == TINY_VLM_FORMAT_VERSION and info.get("arch") == arch


def build_tiny_vlm(path: str | os.PathLike[str], arch: str, *, seed: int = 0) -> Path:
    """Write the tiny random-weight `arch` VLM (model, processor, generation config) into `path`, atomically.

    Raises:
        ValueError: an unknown architecture (the message lists the known ones).
    """
    try:
        builder = BUILDERS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})") from None
    from transformers import GenerationConfig

    root = Path(path)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-vlm-", dir=root.parent))
    try:
        torch.manual_seed(seed)
        model, processor = builder()
        model.eval()
        tok = processor.tokenizer
        model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                                   pad_token_id=tok.pad_token_id)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / _MARKER).write_text(json.dumps({"version": TINY_VLM_FORMAT_VERSION, "arch": arch,
                                                   "seed": seed}))
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def build_tiny_set(root: str | os.PathLike[str], arch: str, *, seed: int = 0) -> Path:
    """The tiny model set (`eta.models.tiny.build_tiny_models`: VLM, CLIP, reward) with `arch` as its VLM, so
    that `--tiny-dir ROOT` runs the whole pipeline on that architecture."""
    from eta.models.tiny import _MARKER as SET_MARKER
    from eta.models.tiny import build_tiny_models

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    paths = build_tiny_models(root, seed=seed)
    if arch != "llava-1.5":
        build_tiny_vlm(paths.vlm, arch, seed=seed)
        marker = paths.root / SET_MARKER
        marker.write_text(json.dumps({**json.loads(marker.read_text()), "arch": arch}))
    return paths.root


def ensure_tiny_vlm(path: str | os.PathLike[str], arch: str, *, seed: int = 0) -> Path:
    if not is_built(path, arch):
        build_tiny_vlm(path, arch, seed=seed)
    return Path(path)
