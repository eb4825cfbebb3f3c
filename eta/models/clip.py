"""CLIP adapter (open_clip): batched image and text embeddings, cosine scores."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from eta.config import ModelSpec
from eta.models.common import describe, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)


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
        dtype = resolve_dtype(spec.dtype, device)
        precision = {torch.float32: "fp32", torch.bfloat16: "pure_bf16", torch.float16: "pure_fp16"}[dtype]
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.id, pretrained=spec.pretrained, precision=precision, device=device
        )
        model.eval()
        tokenizer = open_clip.get_tokenizer(spec.id)
        logger.info("loaded CLIP %s (%s) on %s as %s", spec.id, spec.pretrained, device, dtype)
        return cls(model, preprocess, tokenizer, spec=spec, device=device, dtype=dtype)

    def describe(self) -> dict[str, Any]:
        return describe(self.spec, model=None, device=self.device, dtype=self.dtype)

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
        return self.model.encode_text(tokens, normalize=True).float()

    def image_text_scores(self, images: Sequence[Image.Image], text: str) -> list[float]:
        """cos(image_i, text) for every image; one image forward, one text forward."""
        if not images:
            return []
        image_emb = self.embed_images(images)
        text_emb = self.embed_texts([text])
        return (image_emb @ text_emb.T).squeeze(1).tolist()
