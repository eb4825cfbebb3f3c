"""Cache reuse in deep alignment: the growing KV cache behaves as transformers' DynamicCache, and the reward
session scores as whole chats are scored."""

from __future__ import annotations

import copy

import pytest
import torch

from eta.models.kv_cache import GrowingLayer, growing_cache

pytestmark = pytest.mark.models


def test_growing_cache_gives_the_dynamic_cache_results(tiny_models):
    vlm = tiny_models.vlm
    batch = vlm.encode([vlm.chat_prompt("Describe it.", has_image=False)], None)
    with torch.inference_mode():
        plain = vlm.model(**batch, use_cache=True).cache
        grown = vlm.model(**batch, use_cache=True, **{vlm._cache_arg: growing_cache(vlm.model.config)}).cache
    assert all(isinstance(layer, GrowingLayer) for layer in grown.layers)
    for cache in (plain, grown):
        cache.batch_repeat_interleave(3)
    outputs = []
    for cache in (plain, grown):
        logits = []
        for step in range(200):  # past the first buffer's headroom: the buffer must grow
            logits.append(vlm.step(torch.tensor([5 + step % 7, 9, 11 + step % 3]), cache))
        cache.batch_select_indices(torch.tensor([1]))
        vlm.crop(cache, cache.get_seq_length() - 17)
        logits.append(vlm.extend([4, 5, 6], cache))
        copied = copy.deepcopy(cache)
        logits.append(vlm.step(torch.tensor([7]), copied))
        assert copied.get_seq_length() == cache.get_seq_length() + 1
        outputs.append(torch.cat([t.reshape(-1) for t in logits]))
    assert plain.get_seq_length() == grown.get_seq_length()
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)


def test_reward_session_scores_equal_whole_chat_scores(tiny_models):
    reward = tiny_models.reward
    answer = "As an AI assistant"
    pieces = [" I cannot help.", " Here is", " safe advice!", "\nStay well.", " ok", " a longer piece of text."]
    for job in range(2):  # the second job starts from the remembered header of the first
        session = reward.session("Rate this answer.")
        for sentence in range(4):
            candidates = [answer + pieces[(sentence + k + job) % len(pieces)] * (k + 1) for k in range(4)]
            got = session.score(candidates)
            assert got == pytest.approx(reward.score("Rate this answer.", candidates), abs=1e-5)
            best = max(range(len(got)), key=got.__getitem__)
            if sentence != 1:  # once without keep(): the session must recover on its own
                session.keep(best)
            answer = candidates[best]
    assert reward._header is not None and reward._header[0] == "Rate this answer."


def test_reward_session_falls_back_for_remote_code_heads(tiny_models, monkeypatch):
    reward = tiny_models.reward
    monkeypatch.setattr(reward, "reuses_prefix_cache", False)
    session = reward.session("q")
    texts = ["As an AI assistant, no.", "As an AI assistant, yes."]
    assert session.score(texts) == pytest.approx(reward.score("q", texts), abs=1e-6)
    session.keep(0)
    assert session._cache is None
