"""Instant models: deterministic stand-ins for the VLM, CLIP and the reward model, for benchmarks and chaos tests.

Selected with `ETA_MODELS=instant` (never a default). They answer in microseconds, so a benchmark measures the
service itself (database round trips, serialisation, broker hops) rather than the models, and a chaos run
pushes ten thousand jobs through every stage in minutes. Their outputs mean nothing about safety; they are
only useful because they are:

- **deterministic**: every score and answer is a function of the input (prompt, image pixels, seed), so a
  run interrupted by crashes can be compared with an undisturbed one, job by job;
- **independent of batching**: a job scores the same alone or in a group of 64;
- **spread over both sides of the paper's thresholds**: with the default parameters about a quarter of the
  images are judged unsafe by the pre-evaluation and about a sixth of the answers by the post-evaluation,
  so every branch of the decision runs, deep alignment included;
- **the same interface as the real adapters**: deep alignment (`eta.safety.alignment.deep_align`) drives the
  instant VLM through the same prefill / step / extend / crop calls, samples candidates from its logits with
  the job's seed, scores them with the instant reward model and CLIP, and records a real trace.

The vocabulary is a few dozen words; token 0 is end-of-sequence and token 1 is the full stop.
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from PIL import Image

from eta.models.vlm import Generated

BACKEND = "instant"
EOS = 0
FULL_STOP = 1
_WORDS = (
    "<eos>", ".", "the", "image", "shows", "a", "person", "with", "some", "objects", "and", "it", "is", "not",
    "safe", "to", "help", "here", "I", "can", "describe", "scene", "in", "general", "terms", "please", "ask",
    "about", "something", "else", "this", "looks", "like", "an", "ordinary", "photo", "of", "street", "room",
    "table", "book", "tree", "sky", "car", "dog", "cat", "sign", "text", "colour", "light",
)
VOCAB_SIZE = len(_WORDS)
# Embedding width of the instant CLIP.
_EMBED_DIM = 8
# Logit table: a context picks one of these rows (a fixed table, so a step costs an index, not a RNG draw).
_TABLE_ROWS = 257


def _digest(*parts: bytes | str) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        h.update(struct.pack("<I", len(data)))
        h.update(data)
    return h.digest()


def _unit(digest: bytes) -> float:
    """A number in [0, 1) from the first 8 bytes of a digest."""
    return int.from_bytes(digest[:8], "little") / 2.0**64


def image_digest(image: Image.Image) -> bytes:
    """What an instant model sees of an image: its size, mode and pixels (the same pixels, the same scores)."""
    return _digest(f"{image.mode}:{image.width}x{image.height}", image.tobytes())


def _embedding(digest: bytes) -> list[float]:
    # Multiples of 1/64 in [-0.5, 0.5]: every dot product of two such vectors is exact in float32, whatever the
    # order a batched matmul sums in, so a job's scores do not depend on the jobs it shares a forward with.
    return [(b % 65 - 32) / 64.0 for b in digest[:_EMBED_DIM]]


def _describe(role: str) -> dict[str, Any]:
    return {"id": f"instant-{role}", "revision": None, "backend": BACKEND, "device": "cpu", "dtype": "float32"}


# ------------------------------------------------------------------------------------------------ CLIP
class InstantClip:
    """CLIP's interface: embeddings of images and texts derived from their content (not unit vectors: their
    dot products, the scores, spread across tau_pre = 0.16 and are exact)."""

    device = torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        return _describe("clip")

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.tensor([_embedding(_digest(b"image", image_digest(image))) for image in images],
                            dtype=torch.float32).reshape(len(images), _EMBED_DIM)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.tensor([_embedding(_digest(b"text", text)) for text in texts],
                            dtype=torch.float32).reshape(len(texts), _EMBED_DIM)

    def image_text_scores(self, images: Sequence[Image.Image], text: str) -> list[float]:
        return (self.embed_images(images) @ self.embed_texts([text]).T)[:, 0].tolist()


# ---------------------------------------------------------------------------------------------- reward
def _reward(user: str, response: str) -> float:
    # In [-0.1, 0.9): with tau_post = 0.06 about a sixth of the answers are judged unsafe.
    return round(-0.1 + _unit(_digest(b"reward", user, response)), 6)


class InstantRewardSession:
    """The reward session's interface (successive sentences of one answer); nothing to reuse here."""

    def __init__(self, user: str) -> None:
        self.user = user

    def score(self, responses: Sequence[str]) -> list[float]:
        return [_reward(self.user, response) for response in responses]

    def keep(self, index: int) -> None:
        """The real session keeps the chosen candidate's cache row; the instant one has none."""


class InstantReward:
    """The reward model's interface: a score per (user turn, response), derived from both texts."""

    device = torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        return _describe("reward")

    def score(self, user: str, responses: Sequence[str]) -> list[float]:
        return [_reward(user, response) for response in responses]

    def session(self, user: str) -> InstantRewardSession:
        return InstantRewardSession(user)


# ------------------------------------------------------------------------------------------------- VLM
class InstantCache:
    """The KV cache's interface as deep alignment uses it: one token list per row, plus the prompt digest."""

    def __init__(self, context: bytes, rows: list[list[int]]) -> None:
        self.context = context
        self.rows = rows

    def batch_repeat_interleave(self, n: int) -> None:
        self.rows = [list(row) for row in self.rows for _ in range(n)]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.rows = [self.rows[int(i)] for i in indices.tolist()]

    def crop(self, length: int) -> None:
        self.rows = [row[:length] for row in self.rows]


def _logit_table() -> torch.Tensor:
    generator = torch.Generator().manual_seed(20250101)
    table = torch.randn(_TABLE_ROWS, VOCAB_SIZE, generator=generator) * 2.0
    table[:, EOS] -= 3.0  # answers end mostly on sentence ends, seldom by EOS
    return table


class InstantVLM:
    """The VLM's interface: chat prompts, greedy answers, and step-wise decoding over an `InstantCache`.

    A greedy answer is a short sentence picked from the vocabulary by the digest of the prompt and the image.
    Step-wise logits come from a fixed random table, indexed by a hash of the row's last tokens and the
    prompt: sampling from them with a seeded generator gives the same candidates on every run.
    """

    device = torch.device("cpu")
    dtype = torch.float32
    eos_token_ids: frozenset[int] = frozenset({EOS})
    vocab_size = VOCAB_SIZE

    def __init__(self) -> None:
        self._table = _logit_table()
        self._fault = planted_fault()

    def describe(self) -> dict[str, Any]:
        return _describe("vlm")

    def chat_prompt(self, prompt: str, *, has_image: bool, assistant_prefix: str | None = None) -> str:
        image = "<image>\n" if has_image else ""
        answer = f" {assistant_prefix}" if assistant_prefix else ""
        return f"USER: {image}{prompt} ASSISTANT:{answer}"

    def decode_continuation(self, context_ids: Sequence[int], new_ids: Sequence[int]) -> str:
        words = []
        for token in new_ids:
            token = int(token)
            if token == EOS:
                continue
            words.append(_WORDS[token] if token == FULL_STOP else " " + _WORDS[token % VOCAB_SIZE])
        return "".join(words)

    def generate_greedy(self, prompts: Sequence[str], images: Sequence[Image.Image | None], *,
                        max_new_tokens: int) -> list[Generated]:
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        _trip_planted_fault(self._fault, prompts)
        answers = []
        for prompt, image in zip(prompts, images, strict=True):
            digest = _digest(b"answer", prompt, image_digest(image) if image is not None else b"")
            length = 3 + digest[0] % 6
            ids = [2 + b % (VOCAB_SIZE - 2) for b in digest[1:1 + length]] + [FULL_STOP]
            ids = ids[:max_new_tokens]
            answers.append(Generated(self.decode_continuation([], ids).strip(), ids))
        return answers

    # -------------------------------------------------------------------- step-wise decoding
    def prefill(self, text: str, image: Image.Image | None) -> tuple[InstantCache, torch.Tensor, list[int]]:
        context = _digest(b"prefill", text, image_digest(image) if image is not None else b"")
        prompt_ids = [2 + b % (VOCAB_SIZE - 2) for b in context[:4]]
        cache = InstantCache(context, [list(prompt_ids)])
        return cache, self._logits(cache), prompt_ids

    def step(self, token_ids: torch.Tensor, cache: InstantCache) -> torch.Tensor:
        for row, token in zip(cache.rows, token_ids.view(-1).tolist(), strict=True):
            row.append(int(token))
        return self._logits(cache)

    def extend(self, token_ids: Sequence[int], cache: InstantCache) -> torch.Tensor:
        cache.rows[0].extend(int(t) for t in token_ids)
        return self._logits(cache)

    @staticmethod
    def crop(cache: InstantCache, length: int) -> None:
        cache.crop(length)

    def _logits(self, cache: InstantCache) -> torch.Tensor:
        seed = int.from_bytes(cache.context[:4], "little")
        indices: list[int] = []
        stops: list[float] = []
        ends: list[float] = []
        for row in cache.rows:
            tail = tuple(row[-3:])
            mixed = seed
            for token in tail:
                mixed = (mixed * 1_000_003 + token + 1) % 2_147_483_647
            indices.append((mixed + len(row)) % _TABLE_ROWS)
            # The longer the sentence, the likelier a full stop: sentences end within a few words.
            since_stop = next((i for i, t in enumerate(reversed(row)) if t == FULL_STOP), len(row))
            stops.append(min(since_stop, 12) * 0.6)
            # After a full stop the answer may end, the more sentences it has the likelier: answers stay short.
            ends.append(4.0 * row.count(FULL_STOP) if row and row[-1] == FULL_STOP else 0.0)
        logits = self._table[indices].clone()
        logits[:, FULL_STOP] += torch.tensor(stops)
        logits[:, EOS] += torch.tensor(ends)
        return logits


# --------------------------------------------------------------------------------- planted faults
# Test and benchmark hook, off unless this variable is set: "kill:MARKER" makes the instant VLM SIGKILL its own
# process whenever a prompt contains MARKER (a poison job: an input that crashes its worker every time, like a
# segfault in a model); "hang:MARKER" makes it block for ever with the soft time limit's signal and SIGTERM masked
# (a stage stuck in native code, where no Python signal handler runs: only the hard time limit's SIGKILL ends it);
# "hang_load" makes loading the models block the same way (a pool process that never becomes ready);
# "slow_load:SECONDS" makes loading take that long (a real model's load, for the worker's start-up order).
FAULT_VARIABLE = "ETA_INSTANT_FAULT"


def planted_fault() -> tuple[str, str] | None:
    """The (kind, marker) of the planted fault, or None (the default)."""
    value = os.environ.get(FAULT_VARIABLE, "")
    if value == "hang_load":
        return "hang_load", ""
    kind, _, marker = value.partition(":")
    if not marker or kind not in ("kill", "hang", "slow_load"):
        return None
    return kind, marker


def _trip_planted_fault(fault: tuple[str, str] | None, prompts: Sequence[str]) -> None:
    if fault is None or fault[0] in ("hang_load", "slow_load") or not any(fault[1] in prompt for prompt in prompts):
        return
    if fault[0] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    _hang()


def _hang() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    threading.Event().wait()


# ----------------------------------------------------------------------------------------------- load
def load_instant_models(roles: Iterable[str]) -> Any:
    """A `Models` holding the instant stand-in of each requested role.

    Raises:
        ValueError: an unknown role.
    """
    from eta.models import ROLES, Models

    wanted = set(roles)
    unknown = wanted - set(ROLES)
    if unknown:
        raise ValueError(f"unknown model roles: {sorted(unknown)}")
    # Instant models compute on tensors of a few dozen numbers: on a busy machine a second intra-op thread only
    # adds waiting (a 5x50 softmax took milliseconds with two threads, microseconds with one).
    torch.set_num_threads(1)
    fault = planted_fault()
    if fault == ("hang_load", ""):
        _hang()
    if fault is not None and fault[0] == "slow_load":
        time.sleep(float(fault[1]))
    models = Models()
    if "clip" in wanted:
        models.clip = InstantClip()  # type: ignore[assignment]
    if "reward" in wanted:
        models.reward = InstantReward()  # type: ignore[assignment]
    if "vlm" in wanted:
        models.vlm = InstantVLM()  # type: ignore[assignment]
    return models
