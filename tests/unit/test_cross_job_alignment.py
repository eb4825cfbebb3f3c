"""Cross-job deep alignment: many jobs in one batch give each job what aligning it alone gives, and the aligned
answer can start from the vanilla generation's prompt cache."""

from __future__ import annotations

import zlib

import pytest
from PIL import Image

from eta.config import ETAConfig
from eta.safety.alignment import AlignmentJob, align_jobs
from eta.safety.pipeline import ETAInput, PreEvaluation, generate

pytestmark = pytest.mark.models

CONFIG = ETAConfig(max_new_tokens=36, max_sentence_tokens=7, num_candidates=3)


@pytest.fixture
def ragged_sentences(monkeypatch):
    """Random weights seldom end a sentence: end one wherever a hash of the decoded text says so (about one token
    in three), the same rule for every path, so that candidates and jobs end sentences at different lengths and
    jobs need different numbers of sentences (they leave the batch at different rounds)."""
    from eta.safety import alignment

    monkeypatch.setattr(alignment, "sentence_ended", lambda vlm, text, token: zlib.crc32(text.encode()) % 3 == 0)


@pytest.fixture(scope="module")
def images(samples_dir):
    names = ["harm_example.png", "waterview.jpg", "extreme_ironing.jpg"]
    return [Image.open(samples_dir / name).convert("RGB") for name in names]


def _jobs(images):
    # Different prompt lengths, one text-only job (no image tokens: a much shorter prefix), different seeds.
    return [
        AlignmentJob("Describe it.", images[0], 3),
        AlignmentJob("What is unusual about this image? Tell me everything you can see in it, please.", images[1], 7),
        AlignmentJob("Tell me how to stay safe online.", None, 5),
        AlignmentJob("Hi", images[2], 11),
        AlignmentJob("Describe it.", images[0], 4),  # same input as the first, another seed
    ]


def _assert_same(together, alone):
    assert together.token_ids == alone.token_ids
    assert together.response == alone.response
    assert together.sampled_tokens == alone.sampled_tokens
    assert len(together.trace) == len(alone.trace)
    for a, b in zip(together.trace, alone.trace, strict=True):
        assert (a["sentence"], a["chosen"], a["use_clip"]) == (b["sentence"], b["chosen"], b["use_clip"])
        assert a["clip_weight"] == pytest.approx(b["clip_weight"])
        for ca, cb in zip(a["candidates"], b["candidates"], strict=True):
            assert (ca["text"], ca["end"], ca["num_tokens"]) == (cb["text"], cb["end"], cb["num_tokens"])
            assert ca["reward"] == pytest.approx(cb["reward"], abs=1e-4)
            assert ca["score"] == pytest.approx(cb["score"], abs=1e-4)
            assert (ca["clip"] is None) == (cb["clip"] is None)
            if ca["clip"] is not None:
                assert ca["clip"] == pytest.approx(cb["clip"], abs=1e-4)


@pytest.mark.parametrize("n", [2, 3])
def test_jobs_aligned_together_equal_jobs_aligned_alone(tiny_models, images, n, ragged_sentences):
    config = CONFIG.replace(num_candidates=n)
    jobs = _jobs(images)
    calls: dict[str, int] = {}
    together = align_jobs(tiny_models.vlm, tiny_models.reward, tiny_models.clip, jobs, config=config, calls=calls)
    alone = [align_jobs(tiny_models.vlm, tiny_models.reward, tiny_models.clip, [job], config=config)[0]
             for job in jobs]
    for got, expected in zip(together, alone, strict=True):
        _assert_same(got, expected)
    sentences = [len(a.trace) for a in alone]
    # The jobs really differ in sentence count, so some leave the batch while others go on, and the chosen
    # candidates are not always the first row of their job.
    assert len(set(sentences)) > 1, sentences
    assert any(step["chosen"] != 0 for a in alone for step in a.trace)
    assert len({len(c["text"]) for a in alone for step in a.trace for c in step["candidates"]}) > 3
    assert calls["aligned_sentences"] == sum(sentences)
    # One reward forward per round (plus the shared header), not one per job and sentence.
    assert calls["align_reward_forward"] <= max(sentences) + 1 < sum(sentences)
    assert calls["align_clip_text_forward"] <= max(sentences)
    assert calls["align_clip_image_forward"] == 1


def test_batch_order_does_not_change_a_job(tiny_models, images, ragged_sentences):
    jobs = _jobs(images)
    forward = align_jobs(tiny_models.vlm, tiny_models.reward, tiny_models.clip, jobs, config=CONFIG)
    backward = align_jobs(tiny_models.vlm, tiny_models.reward, tiny_models.clip, jobs[::-1], config=CONFIG)[::-1]
    for a, b in zip(forward, backward, strict=True):
        _assert_same(a, b)


def test_aligned_answer_reuses_the_vanilla_prompt_cache(tiny_models, images):
    vlm = tiny_models.vlm
    prompts = ["Describe it.", "What is unusual about this image? Tell me more.", "Stay safe online?"]
    pics = [images[0], images[1], None]
    vanilla = vlm.generate_greedy(prompts, pics, max_new_tokens=4, keep_prompt_cache=True)
    for prompt, image, answer in zip(prompts, pics, vanilla, strict=True):
        assert answer.prompt is not None
        text = vlm.chat_prompt(prompt, has_image=image is not None, assistant_prefix=CONFIG.safety_prefix)
        reused, was_reused = vlm.aligned_prompt(text, image, answer.prompt,
                                                vanilla_text=vlm.chat_prompt(prompt, has_image=image is not None))
        fresh, fresh_reused = vlm.aligned_prompt(text, image, None)
        assert was_reused and not fresh_reused
        assert reused.token_ids == fresh.token_ids == vlm.encode([text], [image] if image else None)[
            "input_ids"][0].tolist()
        assert reused.prefix.length >= len(answer.prompt.token_ids) - 1  # the whole vanilla prompt is reused
        shared = min(reused.prefix.length, fresh.prefix.length)
        for (k1, v1), (k2, v2) in zip(reused.prefix.layers, fresh.prefix.layers, strict=True):
            assert (k1[:, :, :shared] - k2[:, :, :shared]).abs().max() < 1e-4
            assert (v1[:, :, :shared] - v2[:, :, :shared]).abs().max() < 1e-4
    # Aligning from the vanilla cache gives the answer aligning from a fresh prompt gives.
    jobs = [AlignmentJob(p, im, 9, a.prompt) for p, im, a in zip(prompts, pics, vanilla, strict=True)]
    calls: dict[str, int] = {}
    from_vanilla = align_jobs(vlm, tiny_models.reward, tiny_models.clip, jobs, config=CONFIG, calls=calls)
    assert "align_prompt_forward" not in calls  # no vision tower, no prompt prefill for any job
    fresh_jobs = [AlignmentJob(p, im, 9) for p, im in zip(prompts, pics, strict=True)]
    for a, b in zip(from_vanilla, align_jobs(vlm, tiny_models.reward, tiny_models.clip, fresh_jobs, config=CONFIG),
                    strict=True):
        _assert_same(a, b)


def test_generate_aligns_a_group_together_and_counts_forwards(tiny_models, images):
    config = CONFIG.replace(tau_pre=-1.0, tau_post=1e9, max_new_tokens=20)
    items = [ETAInput("Describe it.", images[0], 1), ETAInput("Tell me more about this.", images[1], 2),
             ETAInput("A text-only question?", None, 3)]
    pre = [PreEvaluation(0.5, True), PreEvaluation(0.5, True), PreEvaluation(None, None)]
    calls: dict[str, int] = {}
    outcomes = generate(tiny_models, items, pre, config, calls=calls)
    assert all(o.aligned for o in outcomes)
    assert calls["aligned_sentences"] == sum(len(o.trace) for o in outcomes)
    assert calls["align_vlm_forward"] < sum(o.response_tokens for o in outcomes)
    for item, pre_eval, outcome in zip(items, pre, outcomes, strict=True):
        alone = generate(tiny_models, [item], [pre_eval], config)[0]
        assert outcome.response == alone.response
        assert [s["chosen"] for s in outcome.trace] == [s["chosen"] for s in alone.trace]


def test_reward_rows_score_equal_whole_chat_scores(tiny_models):
    """Many jobs' candidates in one forward, each job from its own kept answer, score as whole chats do."""
    from eta.models.reward_rows import RewardRows

    reward = tiny_models.reward
    user = "Rate this answer."
    pieces = [" I cannot help.", " Here is", " safe advice!", "\nStay well.", " ok", " a longer piece of text."]
    answers = {job: "As an AI assistant" + " really" * job for job in range(3)}
    rows = RewardRows(reward, user)
    for sentence in range(4):
        candidates = {job: [answers[job] + pieces[(sentence + k + job) % len(pieces)] * (k + 1)
                            for k in range(3 + job % 2)]
                      for job in answers if not (job == 2 and sentence == 3)}  # job 2 has left the batch
        got = rows.score(candidates)
        for job, texts in candidates.items():
            assert got[job] == pytest.approx(reward.score(user, texts), abs=1e-4)
            best = max(range(len(texts)), key=got[job].__getitem__)
            rows.keep(job, best)
            answers[job] = texts[best]
    assert rows.forwards == 4 + 1  # one per round, plus the shared header once


def test_reward_rows_fall_back_to_whole_chats(tiny_models, monkeypatch):
    from eta.models.reward_rows import RewardRows

    reward = tiny_models.reward
    monkeypatch.setattr(reward, "reuses_prefix_cache", False)
    rows = RewardRows(reward, "q")
    texts = {"a": ["As an AI assistant, no.", "As an AI assistant, yes."], "b": ["As an AI assistant."]}
    got = rows.score(texts)
    assert got["a"] == pytest.approx(reward.score("q", texts["a"]), abs=1e-5)
    assert got["b"] == pytest.approx(reward.score("q", texts["b"]), abs=1e-5)
    assert rows.forwards == 1


def test_reward_rows_with_a_plain_sequence_classifier(tiny_models):
    """A generic reward model (score = logits[:, 0] at the last non-pad token) takes the same cached path."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from eta.config import ModelSpec
    from eta.models import RewardModel
    from eta.models.reward_rows import RewardRows

    tokenizer = tiny_models.reward.tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(config).eval()
    reward = RewardModel(model, tokenizer, spec=ModelSpec("plain-classifier"), device=torch.device("cpu"),
                         dtype=torch.float32)
    assert reward.reuses_prefix_cache and not reward.is_armorm
    rows = RewardRows(reward, "Rate this answer.")
    answers = {0: "As an AI assistant", 1: "As an AI assistant, well"}
    for sentence in range(3):
        candidates = {job: [answers[job] + f" part {sentence} of {k}." * (k + 1) for k in range(3)] for job in answers}
        got = rows.score(candidates)
        for job, texts in candidates.items():
            assert got[job] == pytest.approx(reward.score("Rate this answer.", texts), abs=1e-4)
            rows.keep(job, sentence % 3)
            answers[job] = texts[sentence % 3]
