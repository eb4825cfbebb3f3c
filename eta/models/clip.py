"""CLIP adapter (open_clip): batched image and text embeddings, cosine scores."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from eta.config import ModelSpec
from eta.models.common import describe, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)


class ClipActivationError(ValueError):
    """The configured CLIP architecture does not use the activation its pretrained weights were trained with."""


def clip_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    """The paper ran CLIP in fp32 and tau_pre was calibrated there: `auto` is fp32 on every device (CLIP is small;
    the VLM and the reward model take bf16 on a GPU)."""
    return torch.float32 if spec.dtype == "auto" else resolve_dtype(spec.dtype, device)


def uses_quick_gelu(model: Any) -> bool:
    """Whether an open_clip model's blocks use QuickGELU (x * sigmoid(1.702 x)) rather than GELU."""
    return any(type(module).__name__ == "QuickGELU" for module in model.modules())


# The setting a deployer states the activation of CLIP weights that do not record theirs with (`quickgelu` or
# `gelu`; it reaches the loader as `ModelSpec.activation`), named in messages.
ACTIVATION_ENV = "ETA_CLIP_ACTIVATION"


def stated_activation(spec: ModelSpec) -> bool | None:
    """The activation stated for `spec` (`ModelSpec.activation`, from ETA_CLIP_ACTIVATION; True: QuickGELU), None
    when not stated.

    Raises:
        ClipActivationError: a value other than `quickgelu` or `gelu`.
    """
    value = (spec.activation or "").strip().lower()
    if not value:
        return None
    if value not in ("quickgelu", "gelu"):
        raise ClipActivationError(f"{ACTIVATION_ENV}={value!r} is not an activation; set it to quickgelu or gelu")
    return value == "quickgelu"


def activation_unknown(spec: ModelSpec) -> bool:
    """Whether the weights' activation is unrecorded where it must be: a checkpoint file as the pretrained value, or
    a `local-dir:` model whose `open_clip_config.json` has no `pretrained_cfg.quick_gelu` (either may hold
    OpenAI's QuickGELU weights under a GELU architecture, and nothing would say so)."""
    if spec.id.startswith("local-dir:"):
        path = Path(spec.id.removeprefix("local-dir:")) / "open_clip_config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            return False  # the load itself reports the missing or broken directory
        return (config.get("pretrained_cfg") or {}).get("quick_gelu") is None
    return bool(spec.pretrained) and Path(str(spec.pretrained)).exists()


def activation_of(spec: ModelSpec) -> tuple[bool | None, bool | None]:
    """(whether the configured architecture builds QuickGELU, whether its weights need it); None: unknown.

    A named architecture with a pretrained tag reads both from open_clip's registries; a `local-dir:` model from
    its `open_clip_config.json` (`model_cfg.quick_gelu`, and `pretrained_cfg.quick_gelu` when the directory
    records how its weights were trained). What `spec.activation` (ETA_CLIP_ACTIVATION) states stands for an
    unrecorded activation.
    """
    builds, needs = _recorded_activation(spec)
    if needs is None and activation_unknown(spec):
        needs = stated_activation(spec)
    return builds, needs


def _recorded_activation(spec: ModelSpec) -> tuple[bool | None, bool | None]:
    import open_clip
    from open_clip import pretrained as registry

    if spec.id.startswith("local-dir:"):
        path = Path(spec.id.removeprefix("local-dir:")) / "open_clip_config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            return None, None
        needs = (config.get("pretrained_cfg") or {}).get("quick_gelu")
        return bool(config.get("model_cfg", {}).get("quick_gelu", False)), needs
    if spec.id.startswith("hf-hub:"):
        return None, None
    model_cfg = open_clip.get_model_config(spec.id)
    builds = bool(model_cfg.get("quick_gelu", False)) if model_cfg else None
    needs = None
    if spec.pretrained and not Path(spec.pretrained).exists():
        tag_cfg = registry.get_pretrained_cfg(spec.id, spec.pretrained)
        if not tag_cfg and spec.id.endswith("-quickgelu"):  # the tag may be registered on the plain name only
            tag_cfg = registry.get_pretrained_cfg(spec.id.removesuffix("-quickgelu"), spec.pretrained)
        if tag_cfg:
            needs = bool(tag_cfg.get("quick_gelu", False))
    return builds, needs


def check_activation(spec: ModelSpec) -> None:
    """Refuse an architecture whose activation differs from the one its weights were trained with (open_clip
    only warns, and every s_pre then drifts off the scale tau_pre was calibrated on)."""
    builds, needs = activation_of(spec)
    if needs is None and activation_unknown(spec):
        what = ("its open_clip_config.json records no pretrained_cfg.quick_gelu" if spec.id.startswith("local-dir:")
                else f"the checkpoint file {spec.pretrained} does not record it")
        raise ClipActivationError(
            f"CLIP {spec.id} with pretrained={spec.pretrained}: the activation these weights were trained with is "
            f"unknown ({what}); state it with {ACTIVATION_ENV}=quickgelu (OpenAI's weights) or "
            f"{ACTIVATION_ENV}=gelu")
    if builds is None or needs is None or builds == needs:
        return
    if needs:
        fix = (f"use {spec.id}-quickgelu" if not spec.id.startswith("local-dir:")
               else "set model_cfg.quick_gelu to true in its open_clip_config.json")
        raise ClipActivationError(
            f"CLIP {spec.id} with pretrained={spec.pretrained}: these weights were trained with QuickGELU but the "
            f"architecture builds GELU; {fix}")
    raise ClipActivationError(
        f"CLIP {spec.id} with pretrained={spec.pretrained}: these weights were trained with GELU but the "
        f"architecture builds QuickGELU; use the architecture without -quickgelu")


class ClipScorer:
    """An open_clip model on the configured device (the same device as the VLM, never silently the CPU)."""

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, *, spec: ModelSpec, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.context_length: int = int(getattr(model, "context_length", None) or 77)

    @classmethod
    def load(cls, spec: ModelSpec) -> ClipScorer:
        import open_clip

        device = resolve_device(spec.device)
        dtype = clip_dtype(spec, device)
        check_activation(spec)
        precision = {torch.float32: "fp32", torch.bfloat16: "pure_bf16", torch.float16: "pure_fp16"}[dtype]
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.id, pretrained=spec.pretrained, precision=precision, device=device
        )
        model.eval()
        tokenizer = open_clip.get_tokenizer(spec.id)
        logger.info("loaded CLIP %s (%s) on %s as %s", spec.id, spec.pretrained, device, dtype)
        return cls(model, preprocess, tokenizer, spec=spec, device=device, dtype=dtype)

    @property
    def quick_gelu(self) -> bool:
        """Whether the network built uses QuickGELU activations."""
        return uses_quick_gelu(self.model)

    def describe(self) -> dict[str, Any]:
        return {**describe(self.spec, model=None, device=self.device, dtype=self.dtype),
                "quick_gelu": self.quick_gelu}

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings, one forward for the whole list. Returns float32 (B, D)."""
        pixels = torch.stack([self.preprocess(image.convert("RGB")) for image in images])
        pixels = pixels.to(self.device, self.dtype)
        return self.model.encode_image(pixels, normalize=True).float()

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, one forward. Texts longer than CLIP's context are truncated."""
        tokens = self.tokenizer(list(texts), context_length=self.context_length).to(self.device)
        return self.encode_tokens(tokens).float()

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """`model.encode_text(tokens, normalize=True)`, running only the positions up to the longest text's end.

        CLIP's text tower is causal and pools at the end-of-text token, so the padding after the longest text
        changes nothing: a candidate sentence of ~30 tokens need not run all 77 positions. Towers of another kind
        (no causal mask, or pooled elsewhere) run whole.
        """
        model = self.model
        mask = getattr(model, "attn_mask", None)
        pool = getattr(model, "text_pool_type", None)
        if (mask is None or pool not in ("argmax", "eos") or not hasattr(model, "token_embedding")
                or not hasattr(model, "positional_embedding") or tokens.ndim != 2):
            return model.encode_text(tokens, normalize=True)
        used = int((tokens != 0).long().cumsum(dim=1).argmax(dim=1).max()) + 1  # through the last real token
        if used >= tokens.shape[1]:
            return model.encode_text(tokens, normalize=True)
        text = tokens[:, :used]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(text).to(cast) + model.positional_embedding[:used].to(cast)
        x = model.transformer(x, attn_mask=mask[:used, :used])
        x = model.ln_final(x)
        from open_clip.transformer import text_global_pool

        x = text_global_pool(x, text, pool, eos_token_id=getattr(model, "text_eos_id", None))
        if model.text_projection is not None:
            x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else (
                x @ model.text_projection)
        return torch.nn.functional.normalize(x, dim=-1)

    def image_text_scores(self, images: Sequence[Image.Image], text: str) -> list[float]:
        """cos(image_i, text) for every image; one image forward, one text forward."""
        if not images:
            return []
        image_emb = self.embed_images(images)
        text_emb = self.embed_texts([text])
        return (image_emb @ text_emb.T).squeeze(1).tolist()
