"""Reward-model adapter: scores (user, assistant) chats with a sequence-classification model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from eta.config import ModelSpec
from eta.models.common import describe, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)


class RewardModel:
    """A reward model loaded with `AutoModelForSequenceClassification`.

    ArmoRM returns an output with a `.score` field (its preference score); a generic reward model's score is
    `logits[:, 0]`. Both are supported.
    """

    def __init__(self, model: Any, tokenizer: Any, *, spec: ModelSpec, device: torch.device,
                 dtype: torch.dtype, max_length: int = 4096) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.max_length = max_length
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Right padding: the classifier reads the last non-pad token, which causal attention keeps exact.
        tokenizer.padding_side = "right"

    @classmethod
    def load(cls, spec: ModelSpec) -> RewardModel:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(
            spec.id, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            spec.id, revision=spec.revision, dtype=dtype, trust_remote_code=spec.trust_remote_code
        ).to(device)
        model.eval()
        if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        logger.info("loaded reward model %s on %s as %s", spec.id, device, dtype)
        return cls(model, tokenizer, spec=spec, device=device, dtype=dtype)

    def describe(self) -> dict[str, Any]:
        return describe(self.spec, model=self.model, device=self.device, dtype=self.dtype)

    def format_chat(self, user: str, assistant: str) -> str:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    @torch.inference_mode()
    def score(self, user: str, responses: Sequence[str]) -> list[float]:
        """Reward of each (user, response) chat, all in one forward."""
        if not responses:
            return []
        chats = [self.format_chat(user, response) for response in responses]
        # The chat template already holds the special tokens it wants (e.g. Llama-3's <|begin_of_text|>).
        enc = self.tokenizer(
            chats, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
            add_special_tokens=False,
        ).to(self.device)
        out = self.model(**enc)
        score = getattr(out, "score", None)
        values = score if score is not None else out.logits[:, 0]
        return values.float().reshape(len(chats), -1)[:, 0].tolist()
