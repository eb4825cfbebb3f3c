"""Shallow and deep alignment.

Shallow: the assistant turn is prefilled with the safety prefix. Deep: the answer is built sentence by
sentence; for each sentence N candidates are sampled as one batch over the shared prefix KV cache, scored
with one batched reward forward and one batched CLIP forward, and the best one is kept together with its
cache row.

Score of candidate c for sentence i (1-based):
    reward(prefix + answer so far + c) + (alpha / i) * cos(CLIP(image), CLIP(c))    for i >= 2
    reward(prefix + answer so far + c)                                                otherwise,
and also reward alone when the job has no image or when any candidate of the sentence ended with EOS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from eta.config import ETAConfig
from eta.models.clip import ClipScorer
from eta.models.reward import RewardModel
from eta.models.vlm import VisionLanguageModel
from eta.safety.text import ends_sentence

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One sampled continuation of the current sentence."""

    token_ids: list[int]  # sampled tokens, EOS excluded
    end: str  # "sentence" (a terminator was decoded), "eos", or "length" (token budget reached)
    text: str = ""
    reward: float = 0.0
    clip: float | None = None
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "end": self.end,
            "num_tokens": len(self.token_ids),
            "reward": self.reward,
            "clip": self.clip,
            "score": self.score,
        }


@dataclass
class Alignment:
    """The aligned answer and how it was chosen."""

    response: str  # safety prefix + chosen sentences
    token_ids: list[int]  # generated tokens after the prefix
    trace: list[dict[str, Any]] = field(default_factory=list)
    sampled_tokens: int = 0  # every candidate token sampled, chosen or not


def sample_top_k(logits: torch.Tensor, *, top_k: int, temperature: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Sample one token per row from the top-k of `logits / temperature`. Returns (B,) token ids."""
    k = min(top_k, logits.shape[-1])
    values, indices = (logits / temperature).topk(k, dim=-1)
    probs = torch.softmax(values, dim=-1)
    choice = torch.multinomial(probs, 1, generator=generator)
    return indices.gather(-1, choice).squeeze(-1)


def _sample_candidates(vlm: VisionLanguageModel, cache: Any, logits: torch.Tensor, *, context: list[int],
                       n: int, budget: int, config: ETAConfig, generator: torch.Generator) -> list[Candidate]:
    """Decode `n` candidates of one sentence together. `cache` (batch 1) is expanded to `n` rows in place."""
    cache.batch_repeat_interleave(n)
    row_logits = logits.expand(n, -1)
    tokens: list[list[int]] = [[] for _ in range(n)]
    ends: list[str | None] = [None] * n
    for step in range(budget):
        sampled = sample_top_k(row_logits, top_k=config.top_k, temperature=config.temperature, generator=generator)
        for row, token in enumerate(sampled.tolist()):
            if ends[row] is not None:
                continue
            if token in vlm.eos_token_ids:
                ends[row] = "eos"
                continue
            tokens[row].append(token)
            if ends_sentence(vlm.decode_continuation(context, tokens[row])):
                ends[row] = "sentence"
            elif step + 1 == budget:
                ends[row] = "length"
        if all(end is not None for end in ends):
            break
        # Finished rows ride along (their extra tokens are cropped away if they win): one batch, one forward.
        row_logits = vlm.step(sampled, cache)
    return [Candidate(token_ids=t, end=e or "length") for t, e in zip(tokens, ends, strict=True)]


def deep_align(vlm: VisionLanguageModel, reward: RewardModel, clip: ClipScorer | None, *, prompt: str,
               image: Image.Image | None, config: ETAConfig, seed: int) -> Alignment:
    """Generate the aligned answer to one job.

    Args:
        vlm, reward, clip: loaded models (clip may be None for text-only jobs).
        prompt: the user's question.
        image: the job's image, or None.
        config: algorithm parameters (safety prefix, N, sampling, alpha, token budgets).
        seed: seeds candidate sampling; the same seed gives the same answer.
    """
    text = vlm.chat_prompt(prompt, has_image=image is not None, assistant_prefix=config.safety_prefix)
    cache, logits, prompt_ids = vlm.prefill(text, image)
    prompt_len = len(prompt_ids)
    generator = torch.Generator(device=logits.device).manual_seed(seed)
    image_embedding = clip.embed_images([image]) if (image is not None and clip is not None) else None
    # Best-of-N scores under the short align_reward_prompt (the paper's); successive sentences share it and the
    # answer so far: the session reuses their KV cache.
    reward_session = reward.session(config.align_reward_prompt)

    response_ids: list[int] = []
    trace: list[dict[str, Any]] = []
    sampled_total = 0
    sentence = 0
    while len(response_ids) < config.max_new_tokens:
        sentence += 1
        budget = min(config.max_sentence_tokens, config.max_new_tokens - len(response_ids))
        context = prompt_ids + response_ids
        candidates = _sample_candidates(
            vlm, cache, logits, context=context, n=config.num_candidates, budget=budget, config=config,
            generator=generator,
        )
        sampled_total += sum(len(c.token_ids) + (c.end == "eos") for c in candidates)
        answers = []
        for cand in candidates:
            cand.text = vlm.decode_continuation(context, cand.token_ids)
            answers.append(config.safety_prefix + vlm.decode_continuation(prompt_ids, response_ids + cand.token_ids))
        rewards = reward_session.score(answers)
        use_clip = sentence >= 2 and not any(c.end == "eos" for c in candidates)
        clip_scores: list[float | None] = [None] * len(candidates)
        if use_clip and clip is not None and image_embedding is not None:
            sentence_embeddings = clip.embed_texts([c.text.strip() for c in candidates])
            clip_scores = (image_embedding @ sentence_embeddings.T)[0].tolist()
        weight = config.alpha / sentence
        for cand, r, c in zip(candidates, rewards, clip_scores, strict=True):
            cand.reward, cand.clip = r, c
            cand.score = r + weight * c if c is not None else r
        best = max(range(len(candidates)), key=lambda i: candidates[i].score)  # first index wins ties
        chosen = candidates[best]
        use_clip = clip_scores[0] is not None
        trace.append({
            "sentence": sentence,
            "use_clip": use_clip,
            "clip_weight": weight if use_clip else 0.0,
            "chosen": best,
            "candidates": [c.to_dict() for c in candidates],
        })
        logger.debug("sentence %d: chose %d of %d (%s) %r", sentence, best, len(candidates), chosen.end, chosen.text)
        response_ids.extend(chosen.token_ids)
        if chosen.end == "eos" or len(response_ids) >= config.max_new_tokens:
            break
        reward_session.keep(best)
        # Keep the winner's row; its cache holds at least its first len-1 tokens: crop there, feed the last.
        cache.batch_select_indices(torch.tensor([best], device=logits.device))
        vlm.crop(cache, prompt_len + len(response_ids) - 1)
        logits = vlm.extend(chosen.token_ids[-1:], cache)

    response = config.safety_prefix + vlm.decode_continuation(prompt_ids, response_ids)
    return Alignment(response=response, token_ids=response_ids, trace=trace, sampled_tokens=sampled_total)
