"""Shallow and deep alignment, for one job or many jobs in one batch.

Shallow: the assistant turn is prefilled with the safety prefix. Deep: the answer is built sentence by
sentence; for each sentence N candidates are sampled as one batch over the shared prefix KV cache, scored
with one batched reward forward and one batched CLIP forward, and the best one is kept together with its
cache row.

Many jobs align together (`align_jobs`): a round samples one sentence of every job still aligning, J jobs x N
candidates as the rows of one batch per decoding step (each job's prefix cache left-padded to the longest, an
attention mask over the padding, each row's own positions), then scores all of them with one reward forward
and one CLIP forward; a job that ends leaves the batch and the others go on. Each job samples from its own
random stream (a generator seeded with its seed, drawn on its own rows only), so its answer and trace do not
depend on which jobs share the batch: they are what aligning it alone gives, up to float rounding of scores.

Score of candidate c for sentence i (1-based):
    reward(prefix + answer so far + c) + (alpha / i) * cos(CLIP(image), CLIP(c))    for i >= 2
    reward(prefix + answer so far + c)                                                otherwise,
and also reward alone when the job has no image or when any candidate of the sentence ended with EOS.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from eta.config import ETAConfig
from eta.models.clip import ClipScorer
from eta.models.kv_cache import RowPrefix, pack_rows
from eta.models.reward import RewardModel
from eta.models.reward_rows import RewardRows
from eta.models.shared_prefix import PrefixStore, pack_suffix, suffix_nbytes
from eta.models.vlm import PromptCache, VisionLanguageModel
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
    probs, indices = top_k_distribution(logits, top_k=top_k, temperature=temperature)
    return draw(probs, indices, generator)


def top_k_distribution(logits: torch.Tensor, *, top_k: int, temperature: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the probabilities of the top-k tokens of `logits / temperature` and their ids."""
    k = min(top_k, logits.shape[-1])
    values, indices = (logits / temperature).topk(k, dim=-1)
    return torch.softmax(values, dim=-1), indices


def draw(probs: torch.Tensor, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row from `top_k_distribution`'s output, with `generator`'s random stream."""
    choice = torch.multinomial(probs, 1, generator=generator)
    return indices.gather(-1, choice).squeeze(-1)


@dataclass
class AlignmentJob:
    """One job to align: its question, image and seed, and optionally its vanilla prompt's cache to start from."""

    prompt: str
    image: Image.Image | None
    seed: int
    # The vanilla generation's prompt cache (`generate_greedy(keep_prompt_cache=True)`); `align_jobs` sets it to
    # None once it has taken what it needs.
    vanilla: PromptCache | None = None


@dataclass
class _Aligning:
    """A job's state between rounds: its cached positions, the tokens still to feed, and the answer so far."""

    prompt_ids: list[int]
    prefix: RowPrefix  # cache of prompt_ids + response_ids minus `pending`
    pending: list[int]  # tokens to feed before the next sentence is sampled (at least one)
    generator: torch.Generator
    image_embedding: torch.Tensor | None
    response_ids: list[int] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    sampled: int = 0
    done: bool = False


def supports_packed_rows(vlm: Any, reward: Any) -> bool:
    """Whether the adapters can align many jobs in one batch (the real ones can; stand-ins may not)."""
    return isinstance(vlm, VisionLanguageModel) and (reward is None or isinstance(reward, RewardModel))


class _Unscored:
    """Best-of-one needs no scores: `align_jobs` without a reward model (the engine oracle of `eta models check`
    runs the VLM alone). Every candidate scores 0."""

    forwards = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def score(self, answers: dict[Hashable, list[str]]) -> dict[Hashable, list[float]]:
        return {key: [0.0] * len(texts) for key, texts in answers.items()}

    def keep(self, job: Hashable, index: int) -> None:
        pass

    def forget(self, job: Hashable) -> None:
        pass


def sentence_ended(vlm: Any, text: str, last_token: int) -> bool:
    """Whether a candidate ends its sentence, by the VLM profile's rule: `period` (the paper's, for LLaVA-1.5: the
    last token is "." alone, LLaVA's 29889) or `punctuation` (".", "!", "?" or a newline, judged on the decoded
    text, for every other model)."""
    if getattr(getattr(vlm, "profile", None), "sentence_end", "punctuation") == "period":
        return last_token == getattr(vlm, "period_token_id", None)
    return ends_sentence(text)


def _count(calls: MutableMapping[str, int] | None, kind: str, n: int = 1) -> None:
    if calls is not None:
        calls[kind] = calls.get(kind, 0) + n


def align_jobs(vlm: VisionLanguageModel, reward: RewardModel | None, clip: ClipScorer | None,
               jobs: Sequence[AlignmentJob], *, config: ETAConfig, calls: MutableMapping[str, int] | None = None,
               layout: MutableMapping[str, int] | None = None) -> list[Alignment]:
    """Deep alignment of several jobs in one batch (see the module). Returns one `Alignment` per job, in order.

    Args:
        vlm, reward, clip: loaded models (clip may be None: reward-only scoring; reward may be None only with one
            candidate per sentence, which needs no scores).
        jobs: the jobs; each job's answer depends only on itself, its seed and `config`.
        config: algorithm parameters (safety prefix, N, sampling, alpha, token budgets).
        calls: when given, model forwards are counted into it (`align_vlm_forward`, `align_reward_forward`,
            `align_clip_text_forward`, `align_clip_image_forward`, `align_prompt_forward`, `aligned_sentences`).
        layout: when given, what the padded layout costs is counted into it: prefix positions of all rows per
            round (`row_positions`) and how many of them are padding (`padding_positions`).
    """
    if not jobs:
        return []
    if reward is None and config.num_candidates != 1:
        raise ValueError("best-of-N with more than one candidate needs a reward model")
    if not supports_packed_rows(vlm, reward):
        alignments = [_align_stepwise(vlm, reward, clip, prompt=j.prompt, image=j.image, config=config, seed=j.seed)
                      for j in jobs]
        _count(calls, "aligned_sentences", sum(len(a.trace) for a in alignments))
        return alignments
    n = config.num_candidates
    states: list[_Aligning] = []
    with_image = [j.image is not None and clip is not None for j in jobs]
    embeddings = clip.embed_images([j.image for j in jobs if j.image is not None]) if clip is not None and any(
        with_image) else None
    if embeddings is not None:
        _count(calls, "align_clip_image_forward")
    image_row = 0
    texts = [vlm.chat_prompt(j.prompt, has_image=j.image is not None, assistant_prefix=config.safety_prefix)
             for j in jobs]
    starts: list[PromptCache | None] = [
        vlm.reuse_prompt(text, j.vanilla, vanilla_text=vlm.chat_prompt(j.prompt, has_image=j.image is not None))
        if j.vanilla is not None else None for j, text in zip(jobs, texts, strict=True)]
    fresh = [i for i, start in enumerate(starts) if start is None]
    if fresh:  # no vanilla cache to start from: the prompts (vision tower included) run here, batched
        for i, computed in zip(fresh, vlm.prompt_caches([texts[i] for i in fresh], [jobs[i].image for i in fresh]),
                               strict=True):
            starts[i] = computed
        _count(calls, "align_prompt_forward", len({jobs[i].image is None for i in fresh}))
    for job in jobs:
        # The vanilla cache is a view into the vanilla batch's cache: letting go of it lets that batch's cache be
        # freed once the first round has copied every job's prefix into its own batch.
        job.vanilla = None
    for job, has_embedding, start in zip(jobs, with_image, starts, strict=True):
        if start is None:
            raise RuntimeError("no prompt cache for a job")  # unreachable: every job got one above
        embedding = None
        if has_embedding and embeddings is not None:
            embedding = embeddings[image_row:image_row + 1]
            image_row += 1
        states.append(_Aligning(
            prompt_ids=start.token_ids, prefix=start.prefix,
            pending=start.token_ids[start.prefix.length:],
            generator=torch.Generator(device=vlm.device).manual_seed(job.seed), image_embedding=embedding,
        ))
    starts.clear()  # the states hold the prefixes now (see above)
    del start
    store: PrefixStore | None = None
    if vlm.shared_prefix:
        # One copy of every job's prefix for all its candidate rows (eta.models.shared_prefix), room for the
        # answer: the prompt caches computed above (views into their batch) are let go once copied in.
        store = PrefixStore.create([id(s) for s in states], [s.prefix for s in states],
                                   extra=config.max_new_tokens + 8)
        for s in states:
            s.prefix = RowPrefix([], cross=s.prefix.cross, offset=s.prefix.offset, extras=s.prefix.extras)
    # Successive sentences share the reward prompt and each job's answer so far: their KV caches are reused.
    # Best-of-N scores under the short align_reward_prompt (the paper's).
    scorer: RewardRows | _Unscored = (RewardRows(reward, config.align_reward_prompt) if reward is not None
                                      else _Unscored(n))
    while True:
        active = [s for s in states if not s.done]
        if not active:
            break
        for pack in _packs(vlm, active):
            _align_round(vlm, clip, scorer, pack, config=config, n=n, calls=calls, layout=layout, store=store)
    _count(calls, "align_reward_forward", scorer.forwards)
    _count(calls, "aligned_sentences", sum(len(s.trace) for s in states))
    return [Alignment(response=config.safety_prefix + vlm.decode_continuation(s.prompt_ids, s.response_ids),
                      token_ids=s.response_ids, trace=s.trace, sampled_tokens=s.sampled) for s in states]


def _packs(vlm: VisionLanguageModel, active: list[_Aligning]) -> list[list[_Aligning]]:
    """The jobs of a round grouped into packs that can share one batch (see `pack_groups`)."""
    groups = pack_groups(vlm.packing, [s.prefix for s in active], [len(s.pending) for s in active])
    return [[active[i] for i in group] for group in groups]


def pack_groups(packing: str, prefixes: Sequence[RowPrefix], pending: Sequence[int]) -> list[list[int]]:
    """Indices of the sequences that can share one packed batch, by the model's `packing`:

    - `all`: one pack.
    - `equal-pending`: sliding-window layers mask by cache column, so a row's tokens must sit in consecutive
      columns: sequences feeding the same number of pending tokens share a pack (after the first round, all do).
    - `equal-cross`: Mllama's cross-attention layers hold each job's image keys and values (as many as its prompt
      batch padded its tiles to) and each new token repeats its prompt's cross-attention mask row: sequences whose
      cross-attention tensors have the same shapes share a pack (text-only jobs, image jobs prompted together).
    """
    if packing == "all":
        return [list(range(len(prefixes)))]

    def key(index: int) -> Hashable:
        prefix = prefixes[index]
        if packing == "equal-pending":
            return pending[index]
        layers = tuple(None if pair is None else tuple(pair[0].shape)
                       for i, pair in enumerate(prefix.layers) if i in prefix.cross)
        return layers, tuple((name, tuple(value.shape)) for name, value in sorted(prefix.extras.items()))

    groups: dict[Hashable, list[int]] = {}
    for index in range(len(prefixes)):
        groups.setdefault(key(index), []).append(index)
    return list(groups.values())


def _align_round(vlm: VisionLanguageModel, clip: ClipScorer | None, scorer: RewardRows | _Unscored,
                 active: list[_Aligning], *, config: ETAConfig, n: int, calls: MutableMapping[str, int] | None,
                 layout: MutableMapping[str, int] | None, store: PrefixStore | None = None) -> None:
    """One sentence of every active job: sample N candidates each in one batch, score, keep the best. With a
    `store`, the jobs' prefixes are held there once and the batch cache holds only the rows' own columns."""
    budgets = [min(config.max_sentence_tokens, config.max_new_tokens - len(s.response_ids)) for s in active]
    contexts = [s.prompt_ids + s.response_ids for s in active]
    feed_width = max(len(s.pending) for s in active)
    rows = n * len(active)
    if store is not None:
        store.keep_only([id(s) for s in active])
        packed = pack_suffix(vlm.model.config, store, n, [s.prefix.offset for s in active],
                             headroom=feed_width + max(budgets))
        prefix_lengths = [store.length(id(s)) for s in active]
        # What the layout costs: prefix positions held (once per job), and how many of them are padding.
        width = max(store.end)
        _count(layout, "row_positions", len(active) * width)
        _count(layout, "padding_positions", sum(width - length for length in prefix_lengths))
    else:
        packed = pack_rows(vlm.model.config, [s.prefix for s in active], [n] * len(active),
                           headroom=feed_width + max(budgets))
        prefix_lengths = [s.prefix.length for s in active]
        # What the padded layout costs: prefix positions of all rows, and how many of them are padding.
        _count(layout, "row_positions", rows * packed.width)
        _count(layout, "padding_positions", n * sum(packed.width - s.prefix.length for s in active))
    # Rows of job k are k*n .. k*n+n-1. Its pending tokens go first, right-padded to the longest pending.
    ids = torch.zeros((rows, feed_width), dtype=torch.long)
    real = torch.zeros((rows, feed_width), dtype=torch.bool)
    for k, s in enumerate(active):
        ids[k * n:(k + 1) * n, : len(s.pending)] = torch.tensor(s.pending, dtype=torch.long)
        real[k * n:(k + 1) * n, : len(s.pending)] = True
    last = torch.tensor([len(active[r // n].pending) - 1 for r in range(rows)])
    row_logits = vlm.forward_rows(ids, packed, real, last=last)
    _count(calls, "align_vlm_forward")

    tokens: list[list[list[int]]] = [[[] for _ in range(n)] for _ in active]
    ends: list[list[str | None]] = [[None] * n for _ in active]
    live = [True] * len(active)
    for step in range(max(budgets)):
        feed = torch.zeros(rows, dtype=torch.long)
        growing: list[tuple[int, int]] = []
        # Top-k of every row at once; each job then draws from its own random stream, on its own rows only.
        probs, indices = top_k_distribution(row_logits, top_k=config.top_k, temperature=config.temperature)
        for k, s in enumerate(active):
            if not live[k]:
                continue
            rows_k = slice(k * n, (k + 1) * n)
            sampled = draw(probs[rows_k], indices[rows_k], s.generator)
            feed[rows_k] = sampled.cpu()
            fresh = []
            for row, token in enumerate(sampled.tolist()):
                if ends[k][row] is not None:
                    continue
                if token in vlm.eos_token_ids:
                    ends[k][row] = "eos"
                    continue
                tokens[k][row].append(token)
                fresh.append(row)
            growing.extend((k, row) for row in fresh)
        # Every new token of every row decoded in one tokenizer call; the sentence end is judged on text.
        texts = vlm.decode_continuations([contexts[k] for k, _ in growing], [tokens[k][row] for k, row in growing])
        for (k, row), text in zip(growing, texts, strict=True):
            if sentence_ended(vlm, text, tokens[k][row][-1]):
                ends[k][row] = "sentence"
            elif step + 1 == budgets[k]:
                ends[k][row] = "length"
        for k in range(len(active)):
            if live[k] and all(end is not None for end in ends[k]):
                live[k] = False
        if not any(live):
            break
        # Finished rows (and jobs) ride along: their extra tokens are never read. One batch, one forward.
        row_logits = vlm.forward_rows(feed.view(rows, 1), packed, torch.ones((rows, 1), dtype=torch.bool))[:, -1]
        _count(calls, "align_vlm_forward")

    candidates = [[Candidate(token_ids=t, end=e or "length") for t, e in zip(tokens[k], ends[k], strict=True)]
                  for k in range(len(active))]
    if layout is not None:
        _count_kv(layout, packed, store, prefix_lengths, rows,
                  feed_width + max(len(t) for job in tokens for t in job), vlm.cross_layers)
    answers: dict[Hashable, list[str]] = {}
    for k, s in enumerate(active):
        s.sampled += sum(len(c.token_ids) + (c.end == "eos") for c in candidates[k])
        answers[id(s)] = []
        sentence_texts = vlm.decode_continuations([contexts[k]] * n, [c.token_ids for c in candidates[k]])
        answer_texts = vlm.decode_continuations([s.prompt_ids] * n,
                                                [s.response_ids + c.token_ids for c in candidates[k]])
        for cand, text, answer in zip(candidates[k], sentence_texts, answer_texts, strict=True):
            cand.text = text
            answers[id(s)].append(config.safety_prefix + answer)
    rewards = scorer.score(answers)

    sentence_of = [len(s.trace) + 1 for s in active]
    use_clip = [clip is not None and s.image_embedding is not None and sentence_of[k] >= 2
                and not any(c.end == "eos" for c in candidates[k]) for k, s in enumerate(active)]
    clip_scores: list[list[float | None]] = [[None] * n for _ in active]
    clipped = [k for k in range(len(active)) if use_clip[k]]
    if clipped and clip is not None:
        texts = [c.text.strip() for k in clipped for c in candidates[k]]
        embedded = clip.embed_texts(texts)
        _count(calls, "align_clip_text_forward")
        for i, k in enumerate(clipped):
            image_embedding = active[k].image_embedding
            assert image_embedding is not None  # noqa: S101 - use_clip requires it
            clip_scores[k] = (image_embedding @ embedded[i * n:(i + 1) * n].T)[0].tolist()

    for k, s in enumerate(active):
        sentence = sentence_of[k]
        weight = config.alpha / sentence
        first_of: dict[tuple[int, ...], int] = {}
        for i, (cand, r, c) in enumerate(zip(candidates[k], rewards[id(s)], clip_scores[k], strict=True)):
            # Identical candidates get the first one's scores: an exact tie stays exact whatever float rounding
            # the batch composition brings, and the first index wins it.
            twin = candidates[k][first_of.setdefault(tuple(cand.token_ids) + (cand.end == "eos",), i)]
            cand.reward, cand.clip = (twin.reward, twin.clip) if twin is not cand else (r, c)
            cand.score = cand.reward + weight * cand.clip if cand.clip is not None else cand.reward
        scores = [c.score for c in candidates[k]]
        best = scores.index(max(scores))  # first index wins ties
        chosen = candidates[k][best]
        s.trace.append({
            "sentence": sentence,
            "use_clip": use_clip[k],
            "clip_weight": weight if use_clip[k] else 0.0,
            "chosen": best,
            "candidates": [c.to_dict() for c in candidates[k]],
        })
        logger.debug("sentence %d: chose %d of %d (%s) %r", sentence, best, n, chosen.end, chosen.text)
        s.response_ids.extend(chosen.token_ids)
        if chosen.end == "eos" or len(s.response_ids) >= config.max_new_tokens:
            s.done = True
            scorer.forget(id(s))
            continue
        scorer.keep(id(s), best)
        # The winner's row holds its pending tokens, then every sampled token but its last (the last was never
        # fed): keep those positions, feed the last token at the start of the next round.
        row = k * n + best
        fed = len(chosen.token_ids) - 1
        if store is not None:  # the winner's own columns go after its job's prefix in the store
            own = [(0, len(s.pending))] + ([(feed_width, feed_width + fed)] if fed else [])
            store.append(id(s), packed.cache, row, own)
            s.pending = chosen.token_ids[-1:]
            continue
        pad = packed.width - s.prefix.length
        spans = [(pad, packed.width + len(s.pending))]
        if fed:
            spans.append((packed.width + feed_width, packed.width + feed_width + fed))
        if len(spans) == 2 and spans[0][1] == spans[1][0]:
            spans = [(spans[0][0], spans[1][1])]
        s.prefix = RowPrefix.from_cache(packed.cache, row, spans, cross=s.prefix.cross, offset=s.prefix.offset,
                                        extras=s.prefix.extras)
        s.pending = chosen.token_ids[-1:]


def _count_kv(layout: MutableMapping[str, int], packed: Any, store: PrefixStore | None, prefix_lengths: list[int],
              rows: int, sentence_columns: int, cross: frozenset[int]) -> None:
    """Record the KV bytes a round holds (`kv_peak_bytes`: the prefix store and the batch cache as allocated, the
    largest round) against its floor (`kv_floor_bytes`: each job's prefix once plus every row's columns of the
    round's longest sentence, pending tokens included; the largest round)."""
    per_position = 0  # one position of one row, every self-attention layer, keys and values
    for index, layer in enumerate(packed.cache.layers):
        k, v = getattr(layer, "_key_buffer", None), getattr(layer, "_value_buffer", None)
        if index not in cross and k is not None and v is not None:
            per_position += k[0, :, 0].numel() * k.element_size() + v[0, :, 0].numel() * v.element_size()
    held = suffix_nbytes(packed) + (store.nbytes() if store is not None else 0)
    floor = per_position * (sum(prefix_lengths) + rows * sentence_columns)
    layout["kv_peak_bytes"] = max(layout.get("kv_peak_bytes", 0), held)
    layout["kv_floor_bytes"] = max(layout.get("kv_floor_bytes", 0), floor)


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
            if sentence_ended(vlm, vlm.decode_continuation(context, tokens[row]), token):
                ends[row] = "sentence"
            elif step + 1 == budget:
                ends[row] = "length"
        if all(end is not None for end in ends):
            break
        # Finished rows ride along (their extra tokens are cropped away if they win): one batch, one forward.
        row_logits = vlm.step(sampled, cache)
    return [Candidate(token_ids=t, end=e or "length") for t, e in zip(tokens, ends, strict=True)]


def _align_stepwise(vlm: Any, reward: Any, clip: ClipScorer | None, *, prompt: str, image: Image.Image | None,
                    config: ETAConfig, seed: int) -> Alignment:
    """One job through the adapters' step-wise interface (prefill / step / extend / crop and a reward session):
    the path of model adapters without packed rows (`forward_rows`), such as the instant stand-ins. Gives what
    `align_jobs` gives for the job alone."""
    text = vlm.chat_prompt(prompt, has_image=image is not None, assistant_prefix=config.safety_prefix)
    cache, logits, prompt_ids = vlm.prefill(text, image)
    prompt_len = len(prompt_ids)
    generator = torch.Generator(device=logits.device).manual_seed(seed)
    image_embedding = clip.embed_images([image]) if (image is not None and clip is not None) else None
    # Successive sentences share the reward prompt and the answer so far: the session reuses their KV cache.
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


def deep_align(vlm: VisionLanguageModel, reward: RewardModel, clip: ClipScorer | None, *, prompt: str,
               image: Image.Image | None, config: ETAConfig, seed: int) -> Alignment:
    """Generate the aligned answer to one job (its prompt run afresh; see `align_jobs` for many jobs).

    Args:
        vlm, reward, clip: loaded models (clip may be None for text-only jobs).
        prompt: the user's question.
        image: the job's image, or None.
        config: algorithm parameters (safety prefix, N, sampling, alpha, token budgets).
        seed: seeds candidate sampling; the same seed gives the same answer.
    """
    return align_jobs(vlm, reward, clip, [AlignmentJob(prompt, image, seed)], config=config)[0]
