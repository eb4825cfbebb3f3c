"""ETA end to end, split at the service's stage boundaries.

The three stages match the worker queues, so each process loads only the models its stage needs:

- `pre_evaluate` (CLIP): s_pre for every image, batched.
- `generate` (VLM + reward + CLIP): vanilla answers (batched), s_post (batched), the decision, and deep
  alignment for the jobs the decision picks.
- `final_evaluate` (reward): s_post_final of the final answers (batched) and the audit flags.

`run_eta` chains them in one process, for the CLI, the benchmarks and the tests.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image

from eta.config import ETAConfig, fingerprint_digest
from eta.models import ClipScorer, Models, RewardModel
from eta.safety.alignment import Alignment, AlignmentJob, align_jobs, supports_packed_rows
from eta.safety.decision import decide
from eta.vocabulary import FlagReason

logger = logging.getLogger(__name__)

# Images per CLIP forward and texts per reward forward when a stage scores many jobs.
DEFAULT_SCORE_BATCH = 32


@dataclass
class ETAInput:
    """One job: a prompt, an optional image and an optional seed."""

    prompt: str
    image: Image.Image | None = None
    seed: int | None = None


@dataclass
class PreEvaluation:
    s_pre: float | None  # None: no image, pre-evaluation does not apply
    pre_unsafe: bool | None


@dataclass
class GenerationOutcome:
    vanilla_response: str
    s_post: float
    post_unsafe: bool
    aligned: bool
    decision: str
    response: str
    trace: list[dict[str, Any]]
    seed: int
    vanilla_tokens: int
    response_tokens: int
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class FinalEvaluation:
    s_post_final: float
    flagged: bool
    flag_reasons: list[str]


@dataclass
class ETAResult:
    """Everything one job records: scores, flags, decision, both answers, the trace, timings, provenance."""

    s_pre: float | None
    pre_unsafe: bool | None
    s_post: float
    post_unsafe: bool
    aligned: bool
    decision: str
    vanilla_response: str
    response: str
    s_post_final: float
    flagged: bool
    flag_reasons: list[str]
    trace: list[dict[str, Any]]
    seed: int
    tau_pre: float
    tau_post: float
    policy: str
    timings_ms: dict[str, float]
    fingerprint: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def pre_evaluate(clip: ClipScorer | None, images: Sequence[Image.Image | None], config: ETAConfig, *,
                 batch_size: int = DEFAULT_SCORE_BATCH) -> list[PreEvaluation]:
    """CLIP pre-evaluation: s_pre = cos(image, safety prompt); unsafe when s_pre >= tau_pre.

    The safety prompt is embedded once; images go through CLIP `batch_size` per forward.
    """
    results = [PreEvaluation(None, None) for _ in images]
    present = [i for i, image in enumerate(images) if image is not None]
    if not present:
        return results
    if clip is None:
        raise RuntimeError("the clip model is not loaded in this process")
    prompt_embedding = clip.embed_texts([config.safety_prompt])
    for chunk in _chunks(present, batch_size):
        embeddings = clip.embed_images([images[i] for i in chunk])
        for index, score in zip(chunk, (embeddings @ prompt_embedding.T)[:, 0].tolist(), strict=True):
            results[index] = PreEvaluation(score, score >= config.tau_pre)
    return results


def score_responses(reward: RewardModel, responses: Sequence[str], config: ETAConfig, *,
                    batch_size: int = DEFAULT_SCORE_BATCH) -> list[float]:
    """Reward of each response under the reward prompt (the user turn is the reward prompt, not the question)."""
    scores: list[float] = []
    for chunk in _chunks(responses, batch_size):
        scores.extend(reward.score(config.reward_prompt, chunk))
    return scores


def resolve_seed(item_seed: int | None, config: ETAConfig) -> int:
    """The job's seed, else the config's, else a fresh one (recorded, so the result can be reproduced)."""
    if item_seed is not None:
        return item_seed
    if config.seed is not None:
        return config.seed
    return secrets.randbelow(2**31)


def generate(models: Models, items: Sequence[ETAInput], pre: Sequence[PreEvaluation], config: ETAConfig, *,
             calls: MutableMapping[str, int] | None = None) -> list[GenerationOutcome]:
    """Vanilla generation, post-evaluation, decision and (where decided) alignment for a group of jobs.

    The jobs the decision picks are aligned together (`align_jobs`: one batch of all their candidates per
    decoding step, one reward and one CLIP forward per sentence round), each starting from its vanilla
    prompt's KV cache: the vision tower and the prompt run once per job. A job's timings hold the group's
    generation and post-evaluation time and, when aligned, the group's alignment time.

    Args:
        calls: when given, the alignment's model forwards are counted into it (see `align_jobs`).
    """
    if len(items) != len(pre):
        raise ValueError(f"{len(items)} items but {len(pre)} pre-evaluations")
    vlm = models.require("vlm")
    reward = models.require("reward")
    start = time.perf_counter()
    reuse = supports_packed_rows(vlm, reward)
    keep = {"keep_prompt_cache": True} if reuse else {}  # the aligned answers start from the prompts' caches
    vanilla = vlm.generate_greedy([it.prompt for it in items], [it.image for it in items],
                                  max_new_tokens=config.max_new_tokens, **keep)
    vanilla_ms = _ms(start)
    start = time.perf_counter()
    s_post = score_responses(reward, [v.text for v in vanilla], config)
    post_ms = _ms(start)

    seeds = [resolve_seed(item.seed, config) for item in items]
    flags = [score <= config.tau_post for score in s_post]
    decisions = [decide(pre_unsafe=p.pre_unsafe, post_unsafe=f, policy=config.policy) for p, f in zip(pre, flags,
                                                                                                   strict=True)]
    to_align = [i for i, d in enumerate(decisions) if d.align]
    for i, answer in enumerate(vanilla):
        if i not in to_align and reuse:
            answer.prompt = None  # a kept answer's prompt cache is not needed: free it before aligning
    alignments: dict[int, Alignment] = {}
    align_ms = 0.0
    if to_align:
        start = time.perf_counter()
        jobs = [AlignmentJob(items[i].prompt, items[i].image, seeds[i], getattr(vanilla[i], "prompt", None))
                for i in to_align]
        for answer in vanilla:
            if reuse:
                answer.prompt = None  # the jobs hold the caches now; align_jobs lets them go once used
        alignments = dict(zip(to_align, align_jobs(vlm, reward, models.clip, jobs, config=config, calls=calls),
                              strict=True))
        align_ms = _ms(start)

    outcomes = []
    for i, (answer, score, post_unsafe, decision) in enumerate(zip(vanilla, s_post, flags, decisions, strict=True)):
        seed = seeds[i]
        timings = {"generation": vanilla_ms, "post_evaluation": post_ms}
        response, trace, response_tokens = answer.text, [], len(answer.token_ids)
        if i in alignments:
            aligned = alignments[i]
            timings["alignment"] = align_ms
            response, trace, response_tokens = aligned.response, aligned.trace, len(aligned.token_ids)
        outcomes.append(GenerationOutcome(
            vanilla_response=answer.text, s_post=score, post_unsafe=post_unsafe, aligned=decision.align,
            decision=decision.reason, response=response, trace=trace, seed=seed,
            vanilla_tokens=len(answer.token_ids), response_tokens=response_tokens, timings_ms=timings,
        ))
    return outcomes


@dataclass(frozen=True)
class AnswerToAudit:
    """What the final evaluation needs of one job: the verdicts so far and the answer that is kept."""

    pre_unsafe: bool | None
    s_post: float  # the vanilla answer's score
    post_unsafe: bool
    aligned: bool  # False: `response` is the vanilla answer, whose score is s_post
    response: str

    @classmethod
    def of(cls, pre: PreEvaluation, outcome: GenerationOutcome) -> AnswerToAudit:
        return cls(pre_unsafe=pre.pre_unsafe, s_post=outcome.s_post, post_unsafe=outcome.post_unsafe,
                   aligned=outcome.aligned, response=outcome.response)


def flag(answer: AnswerToAudit, s_post_final: float, config: ETAConfig) -> FinalEvaluation:
    """Audit flags: any evaluator that judged the input or an output unsafe."""
    reasons: list[str] = []
    if answer.pre_unsafe:
        reasons.append(FlagReason.IMAGE_UNSAFE)
    if answer.post_unsafe:
        reasons.append(FlagReason.RESPONSE_UNSAFE)
    if s_post_final <= config.tau_post:
        reasons.append(FlagReason.FINAL_RESPONSE_UNSAFE)
    return FinalEvaluation(s_post_final=s_post_final, flagged=bool(reasons), flag_reasons=reasons)


def final_evaluate(reward: RewardModel, answers: Sequence[AnswerToAudit], config: ETAConfig
                   ) -> list[FinalEvaluation]:
    """Score the final answers and derive the audit flags.

    Only aligned answers need a reward forward (batched); an answer that was kept is the vanilla one, whose
    score s_post is already known.
    """
    aligned = [i for i, a in enumerate(answers) if a.aligned]
    rescored = dict(zip(aligned, score_responses(reward, [answers[i].response for i in aligned], config),
                        strict=True))
    finals = [rescored.get(i, a.s_post) for i, a in enumerate(answers)]
    return [flag(a, s, config) for a, s in zip(answers, finals, strict=True)]


def fingerprint(models: Models, config: ETAConfig) -> dict[str, Any]:
    """Models (id + resolved revision + placement), parameters and library versions, with a digest."""
    import open_clip
    import torch
    import transformers

    params = config.to_dict()
    params.pop("seed")  # per job, stored beside the fingerprint
    payload = {
        "models": models.describe(),
        "params": params,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "open_clip": open_clip.__version__},
    }
    return {**payload, "digest": fingerprint_digest(payload)}


def run_eta(models: Models, items: Sequence[ETAInput], config: ETAConfig) -> list[ETAResult]:
    """All three stages for a group of jobs in this process."""
    start = time.perf_counter()
    pre = pre_evaluate(models.clip, [it.image for it in items], config)
    pre_ms = _ms(start)
    outcomes = generate(models, items, pre, config)
    start = time.perf_counter()
    answers = [AnswerToAudit.of(p, o) for p, o in zip(pre, outcomes, strict=True)]
    finals = final_evaluate(models.require("reward"), answers, config)
    final_ms = _ms(start)
    prints = fingerprint(models, config)
    results = []
    for p, o, f in zip(pre, outcomes, finals, strict=True):
        timings = {"pre_evaluation": pre_ms, **o.timings_ms, "final_evaluation": final_ms}
        results.append(ETAResult(
            s_pre=p.s_pre, pre_unsafe=p.pre_unsafe, s_post=o.s_post, post_unsafe=o.post_unsafe,
            aligned=o.aligned, decision=o.decision, vanilla_response=o.vanilla_response, response=o.response,
            s_post_final=f.s_post_final, flagged=f.flagged, flag_reasons=f.flag_reasons, trace=o.trace,
            seed=o.seed, tau_pre=config.tau_pre, tau_post=config.tau_post, policy=config.policy,
            timings_ms=timings, fingerprint=prints,
        ))
    return results
