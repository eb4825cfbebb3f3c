"""Reward scores of many jobs' candidates in one forward, each job reusing the KV cache of its answer so far.

Cross-job deep alignment scores, per round, N candidate answers of each of J jobs. Every chat begins with the
same header (the chat template and the reward prompt); a job's chats also share that job's answer so far. The
header runs once; each job keeps the cache of its chosen answer (`keep`); a round packs every job's cache, left-
padded, repeated once per candidate (`eta.models.kv_cache.pack_rows`) and feeds only the tokens after it, right-
padded, in one forward with an attention mask and per-row positions. Scores equal `RewardModel.score` of the whole
chats up to float rounding. A reward model for which a prefix cache is not sound (`reuses_prefix_cache` false)
gets the whole chats of all jobs in one forward.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch

from eta.models.kv_cache import PackedRows, RowPrefix, pack_rows
from eta.models.reward import RewardModel

logger = logging.getLogger(__name__)


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    limit = min(limit, len(a), len(b))
    common = 0
    while common < limit and a[common] == b[common]:
        common += 1
    return common


class RewardRows:
    """Scores successive rounds of candidate answers of many jobs to one user turn (see the module)."""

    def __init__(self, reward: RewardModel, user: str) -> None:
        self.reward = reward
        self.user = user
        self._gate: torch.Tensor | None = None  # ArmoRM: the gate of the user turn (the same for every chat)
        # Per job: (token ids the cache holds, their cache). Absent: the job starts from the header.
        self._kept: dict[Hashable, tuple[list[int], RowPrefix]] = {}
        self._header: tuple[list[int], RowPrefix] | None = None
        self._no_header = False
        self._last: dict[Hashable, tuple[list[list[int]], int, int, int]] = {}  # job: (rows, first row, shared, pad)
        self._packed: PackedRows | None = None
        self.forwards = 0

    def _content_end(self, row: Sequence[int]) -> int:
        end = len(row)
        pad = self.reward.tokenizer.pad_token_id
        # A classifier reads the last non-pad token: it must be fed, not cached. ArmoRM is told its position.
        if not getattr(self.reward, "is_armorm", False):
            while end > 0 and row[end - 1] == pad:
                end -= 1
        return end

    def _score_whole(self, answers: Mapping[Hashable, Sequence[str]], jobs: list[Hashable]
                     ) -> dict[Hashable, list[float]]:
        flat = [text for job in jobs for text in answers[job]]
        scores = self.reward.score(self.user, flat)
        self.forwards += 1
        out: dict[Hashable, list[float]] = {job: [] for job in answers}
        start = 0
        for job in jobs:
            out[job] = scores[start:start + len(answers[job])]
            start += len(answers[job])
        return out

    def _ensure_header(self, all_rows: list[list[int]]) -> tuple[list[int], RowPrefix] | None:
        """Run the tokens every chat of the first round shares once (batch 1) and keep their cache. None when
        they cannot be cached."""
        if self._header is not None or self._no_header:
            return self._header
        first = all_rows[0]
        length = min(self._content_end(row) - 1 for row in all_rows)
        for row in all_rows[1:]:
            length = _common_prefix(first, row, length)
        reward = self.reward
        extra: dict[str, Any] = {}
        if getattr(reward, "is_armorm", False):
            gates = reward.gate_positions(all_rows)
            gate = gates[0]
            if gate < 0 or any(g != gate for g in gates) or gate >= length:
                self._no_header = True
                return None
            extra = {"gate_positions": torch.tensor([gate], device=reward.device),
                     "score_positions": torch.tensor([length - 1], device=reward.device)}
        ids = torch.tensor([first[:length]], dtype=torch.long, device=reward.device)
        out = reward.model(input_ids=ids, use_cache=True, **extra)
        self.forwards += 1
        if getattr(reward, "is_armorm", False):
            self._gate = out.gating_output[:1].detach()
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        self._header = (list(first[:length]), RowPrefix.from_cache(cache, 0, [(0, length)]))
        return self._header

    @torch.inference_mode()
    def score(self, answers: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[float]]:
        """Reward of each job's candidate answers, all jobs in one forward. Returns scores per job, in order."""
        reward = self.reward
        jobs = [job for job, texts in answers.items() if texts]
        if not jobs:
            return {job: [] for job in answers}
        if not reward.reuses_prefix_cache:
            return self._score_whole(answers, jobs)
        chats = {job: [reward.format_chat(self.user, text) for text in answers[job]] for job in jobs}
        rows = {job: reward.tokenizer(chats[job], add_special_tokens=False)["input_ids"] for job in jobs}
        header = self._ensure_header([row for job in jobs for row in rows[job]])
        if header is None:  # no shared user turn to cache (ArmoRM's gate lies in the answers): whole chats
            return self._score_whole(answers, jobs)
        prefixes, shared_by_job = [], {}
        for job in jobs:
            cached_ids, prefix = self._kept.get(job, header)
            shared = len(cached_ids)
            for row in rows[job]:
                shared = _common_prefix(cached_ids, row, min(shared, self._content_end(row) - 1))
            if shared < 1:
                cached_ids, prefix = header
                shared = min(_common_prefix(cached_ids, row, self._content_end(row) - 1) for row in rows[job])
            shared_by_job[job] = shared
            prefixes.append(prefix.crop(shared))
        width = max(len(row) - shared_by_job[job] for job in jobs for row in rows[job])
        repeats = [len(rows[job]) for job in jobs]
        packed = pack_rows(reward.model.config, prefixes, repeats, headroom=width)
        total = sum(repeats)
        pad = reward.tokenizer.pad_token_id
        ids = torch.full((total, width), pad, dtype=torch.long)
        real = torch.zeros((total, width), dtype=torch.bool)
        score_at = []
        self._last = {}
        r = 0
        for job in jobs:
            shared = shared_by_job[job]
            self._last[job] = ([list(row) for row in rows[job]], r, shared, packed.width - shared)
            for row in rows[job]:
                tail = row[shared:]
                ids[r, : len(tail)] = torch.tensor(tail, dtype=torch.long)
                real[r, : len(tail)] = True
                score_at.append(len(tail) - 1)
                r += 1
        mask, positions = packed.feed(real)
        extra: dict[str, Any] = {}
        if getattr(reward, "is_armorm", False):
            extra = {"score_positions": torch.tensor(score_at, device=reward.device), "gating_output": self._gate}
        result = reward.model(input_ids=ids.to(reward.device), attention_mask=mask, position_ids=positions,
                              use_cache=True, **{reward.cache_arg: packed.cache}, **extra)
        self.forwards += 1
        self._packed = packed
        values = result.score if getattr(result, "score", None) is not None else result.logits[:, 0]
        flat = values.float().reshape(total, -1)[:, 0].tolist()
        out: dict[Hashable, list[float]] = {job: [] for job in answers}
        for job in jobs:
            _, first, _, _ = self._last[job]
            out[job] = flat[first:first + len(rows[job])]
        return out

    def keep(self, job: Hashable, index: int) -> None:
        """Answer `index` of `job` in the last `score` is the job's answer so far: its cache is kept."""
        if self._packed is None or job not in self._last:
            return
        rows, first, shared, pad = self._last[job]
        row = rows[index]
        width = self._packed.width
        self._kept[job] = (row, RowPrefix.from_cache(self._packed.cache, first + index,
                                                     [(pad, width + len(row) - shared)]))

    def forget(self, job: Hashable) -> None:
        """The job is done: drop its cache."""
        self._kept.pop(job, None)
        self._last.pop(job, None)
