"""Reward-model adapter: scores (user, assistant) chats with a sequence-classification model."""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch

from eta.config import ModelSpec
from eta.models.armorm import GATE_MARKER, find_gate_position, is_armorm
from eta.models.common import describe, resolve_device, resolve_dtype
from eta.models.cpu_linear import route_cpu_linears
from eta.models.kv_cache import crop_cache

logger = logging.getLogger(__name__)


class LoadingMismatch(RuntimeError):
    """A checkpoint's tensors do not match the architecture built for it (missing, unexpected or mis-shaped)."""


def check_loading_info(model_id: str, info: dict[str, Any]) -> None:
    """Strict loading: every parameter of the architecture comes from the checkpoint and every tensor of the
    checkpoint is used. A reward head initialised at random would score noise under calibrated thresholds."""
    problems = []
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        names = sorted(str(item[0] if isinstance(item, tuple) else item) for item in (info.get(key) or []))
        if names:
            shown = ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")
            problems.append(f"{key.replace('_', ' ')}: {shown}")
    if problems:
        raise LoadingMismatch(f"{model_id}: the checkpoint does not match the architecture ({'; '.join(problems)})")


def reward_model_class(config: Any) -> Any:
    """ArmoRM's published architecture loads into the native class; any other reward model through
    `AutoModelForSequenceClassification`."""
    if is_armorm(config):
        from eta.models.armorm import ArmoRMForRewardModel

        return ArmoRMForRewardModel
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification


class RewardModel:
    """A reward model: ArmoRM (native, `eta.models.armorm`) or any `AutoModelForSequenceClassification`.

    ArmoRM's score is its gated preference score; a generic reward model's score is `logits[:, 0]`.
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
        # Right padding: the classifier reads the last real token, which causal attention keeps exact.
        tokenizer.padding_side = "right"
        self.is_armorm = is_armorm(getattr(model, "config", None))
        self._turn_ends: dict[str, int] = {}
        self.gate_pattern: tuple[int, ...] = ()
        if self.is_armorm:  # the gate token sequence in this tokenizer's vocabulary
            self.gate_pattern = tuple(tokenizer.encode(GATE_MARKER, add_special_tokens=False))
            model.gate_token_pattern = self.gate_pattern
        # KV cache of the chat header that sessions for one user turn share (the reward prompt is a constant):
        # (user, token ids, cache with one row, ArmoRM's gate or None). One entry: a process scores with one
        # reward prompt at a time.
        self._header: tuple[str, list[int], Any, torch.Tensor | None] | None = None
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        # A prefix KV cache is sound for transformers' own sequence classifiers (their score depends on the last
        # non-pad token alone) and for the native ArmoRM (told its scored position, and its gate when the gate
        # token lies in the cache). Other (remote-code) heads always get the whole chat.
        self.reuses_prefix_cache = self.is_armorm or (
            type(model).__module__.startswith("transformers.")
            and type(model).__name__.endswith("ForSequenceClassification")
            and getattr(getattr(model, "config", None), "pad_token_id", None) is not None
        )
        if device.type == "cpu":  # oneDNN with packed weights: see eta.models.cpu_linear
            route_cpu_linears(model)

    @classmethod
    def load(cls, spec: ModelSpec) -> RewardModel:
        from transformers import AutoConfig, AutoTokenizer

        device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        # ArmoRM's config.json is a Llama config: read without remote code, it names the architecture.
        config = AutoConfig.from_pretrained(spec.id, revision=spec.revision)
        native = is_armorm(config)
        remote = spec.trust_remote_code and not native
        tokenizer = AutoTokenizer.from_pretrained(spec.id, revision=spec.revision, trust_remote_code=remote)
        loader = reward_model_class(config)
        kwargs: dict[str, Any] = {"trust_remote_code": remote} if not native else {}
        # Mis-shaped tensors come back in the loading report (transformers' own error does not name them) and
        # are refused below with the missing and unexpected ones.
        model, info = loader.from_pretrained(spec.id, revision=spec.revision, dtype=dtype, output_loading_info=True,
                                             ignore_mismatched_sizes=True, **kwargs)
        check_loading_info(spec.id, info)
        model.to(device)
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
        extra: dict[str, Any] = {}
        if self.is_armorm:
            gates = self.gate_positions(enc["input_ids"].tolist(), user=user)
            if min(gates) >= 0:  # else the model's own search raises its clear error
                extra["gate_positions"] = torch.tensor(gates, device=self.device)
        out = self.model(**enc, **extra)
        return _scores(out, len(chats))

    def gate_positions(self, rows: Sequence[Sequence[int]], user: str | None = None) -> list[int]:
        """ArmoRM: where each tokenized chat's user turn ends (-1 when it does not).

        With `user`, the position is where the chat template ends that user turn (an answer that contains the
        marker text cannot move the gate into itself); without, the last occurrence of the marker.
        """
        end = self._user_turn_end(user) if user is not None else -1
        pattern = list(self.gate_pattern)
        return [end if end >= 0 and list(row[end:end + len(pattern)]) == pattern
                else find_gate_position(row, pattern) for row in rows]

    def _user_turn_end(self, user: str) -> int:
        """Index of the token that closes the user turn `user` in this tokenizer's chat template (cached)."""
        cached = self._turn_ends.get(user)
        if cached is None:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False)
            cached = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) - 1
            self._turn_ends = {user: cached}  # one reward prompt at a time, as the header cache
        return cached

    def session(self, user: str) -> RewardSession:
        """Scores for successive groups of answers to `user` that grow from a common text (see RewardSession)."""
        return RewardSession(self, user)


def _scores(out: Any, rows: int) -> list[float]:
    """The score of each row: ArmoRM's gated preference score, else the classifier's first logit."""
    score = getattr(out, "score", None)
    values = score if score is not None else out.logits[:, 0]
    return values.float().reshape(rows, -1)[:, 0].tolist()


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
        self._gate: torch.Tensor | None = None  # ArmoRM: the gate of this user turn, once computed
        header = reward._header
        if header is not None and header[0] == user:
            self._cached_ids, self._cache, self._gate = list(header[1]), copy.deepcopy(header[2]), header[3]

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
        extra: dict[str, Any] = {}
        if reward.is_armorm:
            gates = reward.gate_positions(rows, user=self.user)
            if min(gates) < 0:  # not a chat ArmoRM can gate: the whole-chat path raises the clear error
                self._forget()
                return reward.score(self.user, responses)
            if self._gate is None:
                shared = min(shared, min(gates))  # the gate token must be fed to read its hidden state
            if min(gates) >= shared:
                extra["gate_positions"] = torch.tensor([g - shared for g in gates], device=reward.device)
            else:
                extra["gating_output"] = self._gate
            extra["score_positions"] = torch.tensor([len(row) - shared - 1 for row in rows], device=reward.device)
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
        out = reward.model(input_ids=ids.to(reward.device), use_cache=True, **{reward.cache_arg: cache}, **extra)
        if reward.is_armorm and "gate_positions" in extra:  # one user turn: every row has the same gate
            self._gate = out.gating_output[:1].detach()
        self._cache = getattr(out, "cache", None)
        if self._cache is None:
            self._cache = getattr(out, "past_key_values", None)
        self._rows, self._shared = [list(row) for row in rows], shared
        if self._cache is None:
            self._forget()
        return _scores(out, len(rows))

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
            self.reward._header = (self.user, self._cached_ids[:length], header, self._gate)
