"""ETA end to end on the tiny models: every decision branch, the alignment trace, KV-cache correctness,
reproducibility and text-only jobs."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from eta.config import ETAConfig
from eta.safety.alignment import deep_align
from eta.safety.pipeline import ETAInput, run_eta

pytestmark = pytest.mark.models

# Small budgets keep the tiny runs fast while still crossing several sentence boundaries.
FAST = {"max_new_tokens": 24, "max_sentence_tokens": 6, "seed": 11}
FORCE_ALIGN = {"tau_pre": -1.0, "tau_post": 1e9}


@pytest.fixture(scope="module")
def image(samples_dir):
    return Image.open(samples_dir / "harm_example.png").convert("RGB")


def _run(models, config, image, prompt="What is shown here?"):
    return run_eta(models, [ETAInput(prompt, image)], config)[0]


def test_forced_alignment_trace_and_argmax(tiny_models, image):
    config = ETAConfig(**FAST, **FORCE_ALIGN)
    r = _run(tiny_models, config, image)
    assert (r.pre_unsafe, r.post_unsafe, r.aligned) == (True, True, True)
    assert r.response.startswith(config.safety_prefix)
    assert r.vanilla_response != r.response
    assert r.flagged and r.flag_reasons == ["image_unsafe", "response_unsafe", "final_response_unsafe"]
    assert len(r.trace) >= 2
    for step in r.trace:
        cands = step["candidates"]
        assert len(cands) == config.num_candidates
        i = step["sentence"]
        any_eos = any(c["end"] == "eos" for c in cands)
        assert step["use_clip"] == (i >= 2 and not any_eos)
        for c in cands:
            expected = c["reward"] + (config.alpha / i) * c["clip"] if step["use_clip"] else c["reward"]
            assert c["score"] == pytest.approx(expected)
            assert (c["clip"] is None) == (not step["use_clip"])
        scores = [c["score"] for c in cands]
        assert step["chosen"] == scores.index(max(scores))
    # The final answer is prefix + the chosen sentences. Best-of-N scored the winner under the short
    # align_reward_prompt; the final post-evaluation scores the same answer under the long reward_prompt.
    last = r.trace[-1]
    winner = last["candidates"][last["chosen"]]["reward"]
    assert winner == pytest.approx(tiny_models.reward.score(config.align_reward_prompt, [r.response])[0], abs=1e-5)
    assert r.s_post_final == pytest.approx(tiny_models.reward.score(config.reward_prompt, [r.response])[0], abs=1e-5)
    assert config.align_reward_prompt != config.reward_prompt


@pytest.mark.parametrize(
    ("thresholds", "policy", "aligned"),
    [
        ({"tau_pre": 2.0, "tau_post": 1e9}, "both", False),  # image safe, answer flagged: the paper lets it pass
        ({"tau_pre": 2.0, "tau_post": 1e9}, "either", True),
        ({"tau_pre": 2.0, "tau_post": 1e9}, "post_only", True),
        ({"tau_pre": -1.0, "tau_post": -1e9}, "both", False),  # image flagged, answer safe
        ({"tau_pre": -1.0, "tau_post": -1e9}, "either", True),
        ({"tau_pre": -1.0, "tau_post": -1e9}, "post_only", False),
    ],
)
def test_decision_branches_forced_by_thresholds(tiny_models, image, thresholds, policy, aligned):
    r = _run(tiny_models, ETAConfig(**FAST, **thresholds, policy=policy), image)
    assert r.aligned is aligned
    if aligned:
        assert r.response.startswith("As an AI assistant") and r.trace
    else:
        assert r.response == r.vanilla_response and r.trace == []
        assert r.s_post_final == r.s_post


def test_text_only_job(tiny_models):
    config = ETAConfig(**FAST, **FORCE_ALIGN)
    r = run_eta(tiny_models, [ETAInput("Tell me how to stay safe online.")], config)[0]
    assert r.s_pre is None and r.pre_unsafe is None
    assert r.aligned and r.decision.startswith("post-evaluation")
    assert all(not step["use_clip"] for step in r.trace)  # no image: reward only
    assert r.flag_reasons == ["response_unsafe", "final_response_unsafe"]


def test_same_seed_same_output_and_seed_recorded(tiny_models, image):
    config = ETAConfig(**{**FAST, "seed": None}, **FORCE_ALIGN)
    a = run_eta(tiny_models, [ETAInput("q", image, seed=5)], config)[0]
    b = run_eta(tiny_models, [ETAInput("q", image, seed=5)], config)[0]
    c = run_eta(tiny_models, [ETAInput("q", image, seed=6)], config)[0]
    assert a.seed == 5 and a.response == b.response and a.trace == b.trace
    assert c.trace != a.trace
    drawn = run_eta(tiny_models, [ETAInput("q", image)], config)[0]
    again = run_eta(tiny_models, [ETAInput("q", image, seed=drawn.seed)], config)[0]
    assert again.response == drawn.response  # a drawn seed is recorded and reproduces the answer


def test_batch_of_mixed_jobs_matches_single_runs(tiny_models, image):
    config = ETAConfig(**FAST, **FORCE_ALIGN)
    items = [ETAInput("first?", image), ETAInput("text only"), ETAInput("second question, longer?", image)]
    batch = run_eta(tiny_models, items, config)
    for item, got in zip(items, batch, strict=True):
        alone = run_eta(tiny_models, [item], config)[0]
        assert got.response == alone.response
        assert got.s_post == pytest.approx(alone.s_post, abs=1e-4)
        if item.image is not None:
            assert got.s_pre == pytest.approx(alone.s_pre, abs=1e-5)


def test_top1_alignment_equals_greedy_decoding(tiny_models, image):
    """With top_k=1 every candidate is the greedy token stream: the sentence-by-sentence cache handling
    (expand, select the winner's row, crop, feed its last token) must reproduce plain greedy generation."""
    vlm = tiny_models.vlm
    config = ETAConfig(top_k=1, num_candidates=3, max_new_tokens=30, max_sentence_tokens=4, seed=0)
    aligned = deep_align(vlm, tiny_models.reward, tiny_models.clip, prompt="Describe it.", image=image,
                         config=config, seed=0)
    assert len(aligned.trace) >= 3
    text = vlm.chat_prompt("Describe it.", has_image=True, assistant_prefix=config.safety_prefix)
    batch = vlm.encode([text], [image])
    out = vlm.model.generate(**batch, do_sample=False, max_new_tokens=config.max_new_tokens,
                             pad_token_id=vlm.tokenizer.pad_token_id, eos_token_id=sorted(vlm.eos_token_ids))
    greedy = vlm._trim(out[0, batch["input_ids"].shape[1]:].tolist())
    assert aligned.token_ids == greedy


def test_sampled_tokens_come_from_the_right_context(tiny_models, image):
    """Every chosen token is in the top-k of a fresh full forward over prompt + answer so far: a wrong cache
    row or a bad crop would put tokens outside it."""
    vlm = tiny_models.vlm
    config = ETAConfig(max_new_tokens=30, max_sentence_tokens=5, num_candidates=5, top_k=5)
    aligned = deep_align(vlm, tiny_models.reward, tiny_models.clip, prompt="Describe it.", image=image,
                         config=config, seed=3)
    assert any(step["chosen"] != 0 for step in aligned.trace)  # the winner was not always row 0
    text = vlm.chat_prompt("Describe it.", has_image=True, assistant_prefix=config.safety_prefix)
    batch = vlm.encode([text], [image])
    ids = torch.cat([batch["input_ids"], torch.tensor([aligned.token_ids])], dim=1)
    with torch.no_grad():
        logits = vlm.model(input_ids=ids, pixel_values=batch["pixel_values"]).logits[0]
    start = batch["input_ids"].shape[1]
    for t, token in enumerate(aligned.token_ids):
        top = logits[start - 1 + t].topk(config.top_k).indices.tolist()
        assert token in top, f"token {t} ({token}) is not in the top-{config.top_k} of its context"


def test_fingerprint_and_timings(tiny_models, image):
    r = _run(tiny_models, ETAConfig(**FAST, **FORCE_ALIGN), image)
    fp = r.fingerprint
    assert set(fp["models"]) == {"vlm", "clip", "reward"}
    assert fp["models"]["vlm"]["resolved_revision"].startswith("local:")
    assert fp["params"]["tau_pre"] == -1.0 and "seed" not in fp["params"]
    assert len(fp["digest"]) == 64
    assert _run(tiny_models, ETAConfig(**FAST, **FORCE_ALIGN), image).fingerprint["digest"] == fp["digest"]
    other = _run(tiny_models, ETAConfig(**{**FAST, "max_new_tokens": 20}, **FORCE_ALIGN), image)
    assert other.fingerprint["digest"] != fp["digest"]
    assert set(r.timings_ms) == {"pre_evaluation", "generation", "post_evaluation", "alignment", "final_evaluation"}
