"""One prompt cache per job shared by its N candidate rows (eta.models.shared_prefix).

Oracles outside the shared-prefix code: torch's own scaled-dot-product attention over each row's whole
[prefix ; suffix] (the copied layout's attention), and the copied layout itself (`ETA_SHARED_PREFIX=0`), which the
greedy-generation oracle of tests/unit/test_vlm_architectures.py proves against the model's own `generate`.
"""

from __future__ import annotations

import zlib

import pytest
import torch
from PIL import Image

from eta.config import ETAConfig
from eta.models import shared_prefix
from eta.models.shared_prefix import SharedPrefix, shared_prefix_attention
from eta.safety.alignment import AlignmentJob, align_jobs


class _Module(torch.nn.Module):
    def __init__(self, layer_idx: int, groups: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_key_value_groups = groups


def _reference(query, prefix_k, prefix_v, prefix_len, suffix_k, suffix_v, suffix_real, n, scale):
    """Per row: SDPA over its job's real prefix followed by its own suffix, causal over the suffix."""
    rows, heads, t, d = query.shape
    groups = heads // prefix_k.shape[1]
    out = torch.empty_like(query)
    for r in range(rows):
        job = r // n
        width = prefix_k.shape[2]
        real = slice(width - prefix_len[job], width)
        keys = torch.cat([prefix_k[job, :, real], suffix_k[r]], dim=1).repeat_interleave(groups, dim=0)
        values = torch.cat([prefix_v[job, :, real], suffix_v[r]], dim=1).repeat_interleave(groups, dim=0)
        s = suffix_k.shape[2]
        allowed = torch.ones((t, prefix_len[job] + s), dtype=torch.bool)
        for q in range(t):
            column = s - t + q
            allowed[q, prefix_len[job]:] = suffix_real[r] & (torch.arange(s) <= column)
        out[r] = torch.nn.functional.scaled_dot_product_attention(query[r], keys, values, attn_mask=allowed,
                                                                  scale=scale)
    return out.transpose(1, 2)


def _shared_attention(prefix: SharedPrefix, suffix_real, query, suffix_k, suffix_v, groups, scale):
    """`shared_prefix_attention` of layer 0 inside a pack over `prefix`."""
    token = shared_prefix._ACTIVE.set(shared_prefix._Active(prefix, suffix_real))
    try:
        got, _ = shared_prefix_attention(_Module(0, groups), query, suffix_k, suffix_v, None, scaling=scale)
    finally:
        shared_prefix._ACTIVE.reset(token)
    return got


@pytest.mark.parametrize(("t", "heads", "kv_heads"), [(1, 4, 2), (3, 4, 4), (1, 6, 1)])
def test_shared_prefix_attention_is_attention_over_the_whole_row(t, heads, kv_heads):
    gen = torch.Generator().manual_seed(t * 10 + heads)
    jobs, n, width, s, d = 3, 2, 7, 4, 8
    rows = jobs * n
    prefix_len = [7, 3, 5]
    prefix_k = torch.randn(jobs, kv_heads, width, d, generator=gen)
    prefix_v = torch.randn(jobs, kv_heads, width, d, generator=gen)
    mask = torch.arange(width)[None, :] >= torch.tensor([width - n_ for n_ in prefix_len])[:, None]
    # Padding holds garbage that must not leak in.
    prefix_k.masked_fill_(~mask[:, None, :, None], 1e3)
    prefix_v.masked_fill_(~mask[:, None, :, None], 1e3)
    suffix_k = torch.randn(rows, kv_heads, s, d, generator=gen)
    suffix_v = torch.randn(rows, kv_heads, s, d, generator=gen)
    suffix_real = torch.ones(rows, s, dtype=torch.bool)
    suffix_real[1, 0] = False  # a right-padded column of a first feed
    query = torch.randn(rows, heads, t, d, generator=gen)
    scale = d ** -0.5
    got = _shared_attention(SharedPrefix([(prefix_k, prefix_v)], mask, n), suffix_real, query, suffix_k, suffix_v,
                            heads // kv_heads, scale)
    expected = _reference(query, prefix_k, prefix_v, prefix_len, suffix_k, suffix_v, suffix_real, n, scale)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_shared_prefix_attention_outside_a_pack_is_refused():
    q = torch.zeros(1, 1, 1, 4)
    with pytest.raises(RuntimeError, match="outside a shared-prefix forward"):
        shared_prefix_attention(_Module(0, 1), q, q, q, None)


CONFIG = ETAConfig(max_new_tokens=30, max_sentence_tokens=6, num_candidates=3)


@pytest.fixture
def ragged_sentences(monkeypatch):
    """End a sentence wherever a hash of the decoded text says so (random weights seldom end one)."""
    from eta.safety import alignment

    monkeypatch.setattr(alignment, "sentence_ended", lambda vlm, text, token: zlib.crc32(text.encode()) % 3 == 0)


def _jobs(samples_dir):
    images = [Image.open(samples_dir / name).convert("RGB") for name in ("harm_example.png", "waterview.jpg")]
    return [AlignmentJob("Describe it.", images[0], 3),
            AlignmentJob("What is unusual about this image? Tell me everything you can see in it.", images[1], 7),
            AlignmentJob("Tell me how to stay safe online.", None, 5)]


@pytest.mark.models
def test_shared_layout_gives_the_copied_layouts_answers(tiny_models, samples_dir, monkeypatch, ragged_sentences):
    vlm = tiny_models.vlm
    assert vlm.shared_prefix  # the tiny LLaVA decodes with the shared prefix by default
    shared_layout: dict[str, int] = {}
    shared = align_jobs(vlm, tiny_models.reward, tiny_models.clip, _jobs(samples_dir), config=CONFIG,
                        layout=shared_layout)
    monkeypatch.setattr(vlm, "shared_prefix", False)
    copied_layout: dict[str, int] = {}
    copied = align_jobs(vlm, tiny_models.reward, tiny_models.clip, _jobs(samples_dir), config=CONFIG,
                        layout=copied_layout)
    assert any(len(a.trace) > 1 for a in copied)  # several rounds: the store's appends are exercised
    for a, b in zip(shared, copied, strict=True):
        assert a.token_ids == b.token_ids
        assert a.response == b.response
        for sa, sb in zip(a.trace, b.trace, strict=True):
            assert sa["chosen"] == sb["chosen"]
            for ca, cb in zip(sa["candidates"], sb["candidates"], strict=True):
                assert ca["text"] == cb["text"]
                assert ca["score"] == pytest.approx(cb["score"], abs=1e-4)
    # The copied layout holds N copies of every prefix; the shared one holds one.
    assert copied_layout["kv_peak_bytes"] > 2 * shared_layout["kv_peak_bytes"]
    assert shared_layout["kv_peak_bytes"] <= 1.5 * shared_layout["kv_floor_bytes"]


# Mutation checks: the oracles above must catch a row that reads another job's prefix.


def _read_next_jobs_prefix(prefix: SharedPrefix) -> SharedPrefix:
    """The mutation: job k's rows read job k+1's prefix (keys, values and padding mask), the last job's the first's."""
    layers = [(k.roll(1, dims=0), v.roll(1, dims=0)) for k, v in prefix.layers]
    return SharedPrefix(layers, prefix.mask.roll(1, dims=0), prefix.rows_per_job)


def test_attention_oracle_catches_a_row_reading_another_jobs_prefix():
    gen = torch.Generator().manual_seed(5)
    jobs, n, width, s, d, heads = 3, 2, 6, 3, 8, 2
    prefix_len = [6, 6, 6]  # no padding: only the keys and values tell the jobs apart
    mask = torch.ones(jobs, width, dtype=torch.bool)
    prefix_k, prefix_v = torch.randn(jobs, heads, width, d, generator=gen), torch.randn(jobs, heads, width, d,
                                                                                         generator=gen)
    suffix_k, suffix_v = torch.randn(jobs * n, heads, s, d, generator=gen), torch.randn(jobs * n, heads, s, d,
                                                                                         generator=gen)
    query = torch.randn(jobs * n, heads, 1, d, generator=gen)
    suffix_real = torch.ones(jobs * n, s, dtype=torch.bool)
    mutated = _read_next_jobs_prefix(SharedPrefix([(prefix_k, prefix_v)], mask, n))
    got = _shared_attention(mutated, suffix_real, query, suffix_k, suffix_v, 1, d ** -0.5)
    expected = _reference(query, prefix_k, prefix_v, prefix_len, suffix_k, suffix_v, suffix_real, n, d ** -0.5)
    assert not torch.allclose(got, expected, atol=1e-3)


@pytest.fixture
def rows_read_next_jobs_prefix(monkeypatch):
    shared = shared_prefix.PrefixStore.shared
    monkeypatch.setattr(shared_prefix.PrefixStore, "shared",
                        lambda self, rows_per_job: _read_next_jobs_prefix(shared(self, rows_per_job)))


@pytest.mark.models
def test_answer_oracles_catch_a_row_reading_another_jobs_prefix(tiny_models, samples_dir, monkeypatch,
                                                                 ragged_sentences, rows_read_next_jobs_prefix):
    vlm = tiny_models.vlm
    mutated = align_jobs(vlm, tiny_models.reward, tiny_models.clip, _jobs(samples_dir), config=CONFIG)
    # Aligned alone, a job's only prefix is its own: the mutation cannot show, so the together == alone oracle
    # sees it.
    alone = [align_jobs(vlm, tiny_models.reward, tiny_models.clip, [job], config=CONFIG)[0]
             for job in _jobs(samples_dir)]
    assert [a.token_ids for a in mutated] != [a.token_ids for a in alone]
    # And the copied layout (no shared prefix, so no mutation) disagrees with it too.
    monkeypatch.setattr(vlm, "shared_prefix", False)
    copied = align_jobs(vlm, tiny_models.reward, tiny_models.clip, _jobs(samples_dir), config=CONFIG)
    assert [a.token_ids for a in mutated] != [a.token_ids for a in copied]
    assert [a.token_ids for a in alone] == [a.token_ids for a in copied]
