"""Reward-model adapter: scores (user, assistant) chats with a sequence-classification model."""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch

from eta.config import ModelSpec
from eta.models.common import describe, resolve_device, resolve_dtype
from eta.models.kv_cache import crop_cache

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
        # A prefix KV cache is only sound for transformers' own sequence classifiers, whose score depends on the
        # last non-pad token alone. Remote-code heads (ArmoRM's gating reads the prompt's tokens from
        # input_ids) always get the whole chat.
        # KV cache of the chat header that sessions for one user turn share (the reward prompt is a constant):
        # (user, token ids, cache with one row). One entry: a process scores with one reward prompt.
        self._header: tuple[str, list[int], Any] | None = None
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.reuses_prefix_cache = (
            type(model).__module__.startswith("transformers.")
            and type(model).__name__.endswith("ForSequenceClassification")
            and getattr(getattr(model, "config", None), "pad_token_id", None) is not None
        )

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

    def session(self, user: str) -> RewardSession:
        """Scores for successive groups of answers to `user` that grow from a common text (see RewardSession)."""
        return RewardSession(self, user)


class RewardSession:
    """Scores successive groups of responses to one user turn, reusing the reward model's KV cache of the text
    they share.

    Deep alignment scores N continuations of the same answer, sentence after sentence: every chat starts with
    the template, the reward prompt and the answer chosen so far. After `keep(i)` names the chosen response,
    the next `score` feeds only the tokens after the longest token prefix that the cache holds and every new
    chat shares (checked on token ids, so a BPE merge across the boundary only shortens the reuse), still as
    one batched forward. Scores equal `RewardModel.score` up to float rounding. Models for which a prefix cache
    is not sound (`reuses_prefix_cache` false) and over-long chats fall back to `RewardModel.score`.
    """

    def __init__(self, reward: RewardModel, user: str) -> None:
        self.reward = reward
        self.user = user
        self._cache: Any = None
        self._cached_ids: list[int] = []  # the tokens the cache holds (when it has one row)
        self._rows: list[list[int]] | None = None  # token ids of the last scored chats
        self._shared = 0  # positions the last scored chats had in common in the cache
        header = reward._header
        if header is not None and header[0] == user:
            self._cached_ids, self._cache = list(header[1]), copy.deepcopy(header[2])

    def _forget(self) -> None:
        self._cache, self._cached_ids, self._rows, self._shared = None, [], None, 0

    def _reusable(self, rows: list[list[int]]) -> int:
        """How many leading cached positions every row can reuse; at least the last real token is left to feed."""
        if self._cache is None:
            return 0
        if self._rows is not None:  # scored without keep(): the rows agree up to the shared part only
            self._cache.batch_select_indices(torch.tensor([0], device=self.reward.device))
            crop_cache(self._cache, self._shared)
            self._cached_ids, self._rows = self._rows[0][: self._shared], None
        pad = self.reward.tokenizer.pad_token_id
        length = len(self._cached_ids)
        for row in rows:
            common = 0
            limit = min(length, len(row))
            while common < limit and row[common] == self._cached_ids[common]:
                common += 1
            content_end = len(row)
            while content_end > 0 and row[content_end - 1] == pad:
                content_end -= 1  # the classifier reads the last non-pad token: it must be fed, not cached
            length = min(length, common, max(content_end - 1, 0))
        return length

    @torch.inference_mode()
    def score(self, responses: Sequence[str]) -> list[float]:
        """Reward of each (user, response) chat, in one forward."""
        reward = self.reward
        if not responses:
            return []
        if not reward.reuses_prefix_cache:
            return reward.score(self.user, responses)
        chats = [reward.format_chat(self.user, response) for response in responses]
        rows = reward.tokenizer(chats, add_special_tokens=False)["input_ids"]
        if any(len(row) > reward.max_length for row in rows):
            self._forget()
            return reward.score(self.user, responses)
        shared = self._reusable(rows)
        cache = None
        if shared > 0:
            cache = self._cache
            crop_cache(cache, shared)
            if len(rows) > 1:
                cache.batch_repeat_interleave(len(rows))
        pad = reward.tokenizer.pad_token_id
        width = max(len(row) for row in rows) - shared
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row) - shared] = torch.tensor(row[shared:], dtype=torch.long)
        # Right padding and causal attention: real tokens never attend to the pads after them, so no mask is
        # needed, and positions continue from the cache for every row.
        out = reward.model(input_ids=ids.to(reward.device), use_cache=True, **{reward.cache_arg: cache})
        self._cache = getattr(out, "cache", None)
        if self._cache is None:
            self._cache = getattr(out, "past_key_values", None)
        self._rows, self._shared = [list(row) for row in rows], shared
        if self._cache is None:
            self._forget()
        values = out.logits[:, 0]
        return values.float().tolist()

    def keep(self, index: int) -> None:
        """Response `index` of the last `score` is the answer so far: keep its cached tokens for the next call."""
        if self._cache is None or self._rows is None:
            return
        rows, row = self._rows, self._rows[index]
        self._cache.batch_select_indices(torch.tensor([index], device=self.reward.device))
        crop_cache(self._cache, len(row))  # drops the right padding of this row
        self._cached_ids, self._rows = row, None
        if self.reward._header is None or self.reward._header[0] != self.user:
            self._remember_header(rows)

    def _remember_header(self, rows: list[list[int]]) -> None:
        """Keep the cache of the tokens every chat of this turn began with, for the sessions that follow."""
        length = len(self._cached_ids)
        for other in rows:
            common = 0
            while common < min(length, len(other)) and other[common] == self._cached_ids[common]:
                common += 1
            length = common
        if length:
            header = copy.deepcopy(self._cache)
            crop_cache(header, length)
            self.reward._header = (self.user, self._cached_ids[:length], header)
