"""Every architecture of the support matrix, judged by oracles outside the engine (docs/models.md).

Per architecture, on its tiny random build (eta.models.tiny_vlms), loaded through the production loader:
- forced alignment with one candidate and top-k 1 is greedy decoding: its answer equals the model's own
  `generate(do_sample=False)` continuation of the same aligned prompt, for two image jobs and one text-only job
  aligned together in one batch;
- jobs aligned together give what each aligned alone gives (tokens, choices; scores to 1e-4);
- aligning from the vanilla answer's cache gives what aligning from a fresh prompt gives;
- batched vanilla generation gives what one prompt at a time gives.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from eta.config import ETAConfig, ModelSpec
from eta.models.tiny_vlms import ARCHITECTURES, build_tiny_vlm
from eta.models.vlm import VisionLanguageModel
from eta.safety.alignment import AlignmentJob, align_jobs

pytestmark = pytest.mark.models

GREEDY = ETAConfig(max_new_tokens=14, max_sentence_tokens=5, num_candidates=1, top_k=1)
SAMPLED = ETAConfig(max_new_tokens=16, max_sentence_tokens=5, num_candidates=3)


@pytest.fixture(scope="session")
def arch_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def vlm(request, arch_dirs, tmp_path_factory) -> VisionLanguageModel:
    arch = request.param
    if arch not in arch_dirs:
        arch_dirs[arch] = build_tiny_vlm(tmp_path_factory.mktemp(arch.replace(".", "_")) / "vlm", arch)
    return VisionLanguageModel.load(ModelSpec(str(arch_dirs[arch]), device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def images(samples_dir) -> list[Image.Image]:
    names = ["harm_example.png", "waterview.jpg", "extreme_ironing.jpg"]
    return [Image.open(samples_dir / name).convert("RGB") for name in names]


@pytest.fixture
def ragged_sentences(monkeypatch):
    """Random weights seldom end a sentence: end one wherever a hash of the decoded text says so, the same rule
    for every path, so that candidates and jobs end sentences at different lengths."""
    from eta.safety import alignment

    monkeypatch.setattr(alignment, "sentence_ended", lambda vlm, text, token: zlib.crc32(text.encode()) % 3 == 0)


def _jobs(images: list[Image.Image]) -> list[AlignmentJob]:
    return [
        AlignmentJob("Describe it.", images[0], 3),
        AlignmentJob("What is unusual about this image? Tell me everything you can see.", images[1], 7),
        AlignmentJob("Tell me how to stay safe online.", None, 5),
    ]


def _own_greedy(vlm: VisionLanguageModel, text: str, image: Image.Image | None, max_new_tokens: int) -> list[int]:
    """The model's own greedy continuation of `text`: its processor, its `generate`, nothing of the engine."""
    processor, model = vlm.processor, vlm.model
    # The profile's image preparation (LLaVA-1.5: padded to a square) is part of the prompt.
    prepared = [[vlm.profile.prepare_image(image, processor)]] if image is not None else None
    batch = processor(text=[text], images=prepared, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=sorted(vlm.eos_token_ids), pad_token_id=vlm.tokenizer.pad_token_id)
    ids = out[0, batch["input_ids"].shape[1]:].tolist()
    for i, token in enumerate(ids):
        if token in vlm.eos_token_ids:
            return ids[:i]
    return ids


def test_forced_greedy_alignment_is_the_models_own_greedy_decoding(vlm, tiny_models, images):
    jobs = _jobs(images)
    aligned = align_jobs(vlm, tiny_models.reward, tiny_models.clip, jobs, config=GREEDY)
    for job, got in zip(jobs, aligned, strict=True):
        text = vlm.chat_prompt(job.prompt, has_image=job.image is not None, assistant_prefix=GREEDY.safety_prefix)
        expected = _own_greedy(vlm, text, job.image, GREEDY.max_new_tokens)
        assert got.token_ids == expected, (job.prompt, job.image is not None)
    assert aligned[0].token_ids != aligned[1].token_ids  # the oracle can tell jobs apart


def test_packed_rows_give_the_models_own_next_token_logits(vlm, images):
    """The engine's first step (prompt caches packed into one batch, the last prompt token fed) against the
    model's own forward over each whole prompt: positions, caches and masks all show up in these logits."""
    from eta.models.kv_cache import pack_rows
    from eta.safety.alignment import pack_groups

    jobs = _jobs(images)
    texts = [vlm.chat_prompt(j.prompt, has_image=j.image is not None, assistant_prefix=GREEDY.safety_prefix)
             for j in jobs]
    starts = vlm.prompt_caches(texts, [j.image for j in jobs])
    packs = pack_groups(vlm.packing, [start.prefix for start in starts], [1] * len(starts))
    if vlm.packing != "equal-pending":  # the two image jobs share a pack everywhere (Mllama: same image shapes)
        assert any({0, 1} <= set(pack) for pack in packs), packs
    for pack in packs:
        packed = pack_rows(vlm.model.config, [starts[i].prefix for i in pack], [1] * len(pack), headroom=4)
        last = torch.tensor([[starts[i].token_ids[-1]] for i in pack])
        got = vlm.forward_rows(last, packed, torch.ones_like(last, dtype=torch.bool))[:, -1]
        for row, i in enumerate(pack):
            image = jobs[i].image
            prepared = [[vlm.profile.prepare_image(image, vlm.processor)]] if image is not None else None
            batch = vlm.processor(text=[texts[i]], images=prepared, return_tensors="pt")
            with torch.inference_mode():
                expected = vlm.model(**batch).logits[0, -1].float()
            assert torch.allclose(got[row], expected, atol=1e-4, rtol=0), (i, float((got[row] - expected).abs().max()))


def test_the_image_changes_the_answer(vlm, images):
    """Without this, an engine that dropped the image would pass the oracles above."""
    text = vlm.chat_prompt("Describe it.", has_image=True, assistant_prefix=GREEDY.safety_prefix)
    answers = {tuple(_own_greedy(vlm, text, image, 8)) for image in images}
    assert len(answers) > 1


def _assert_same(together, alone):
    assert together.token_ids == alone.token_ids
    assert together.response == alone.response
    assert len(together.trace) == len(alone.trace)
    for a, b in zip(together.trace, alone.trace, strict=True):
        assert (a["sentence"], a["chosen"], a["use_clip"]) == (b["sentence"], b["chosen"], b["use_clip"])
        for ca, cb in zip(a["candidates"], b["candidates"], strict=True):
            assert (ca["text"], ca["end"], ca["num_tokens"]) == (cb["text"], cb["end"], cb["num_tokens"])
            assert ca["reward"] == pytest.approx(cb["reward"], abs=1e-4)
            assert ca["score"] == pytest.approx(cb["score"], abs=1e-4)


def test_jobs_aligned_together_equal_jobs_aligned_alone(vlm, tiny_models, images, ragged_sentences):
    jobs = _jobs(images) + [AlignmentJob("Hi", images[2], 11)]
    together = align_jobs(vlm, tiny_models.reward, tiny_models.clip, jobs, config=SAMPLED)
    for job, got in zip(jobs, together, strict=True):
        alone = align_jobs(vlm, tiny_models.reward, tiny_models.clip, [AlignmentJob(job.prompt, job.image, job.seed)],
                           config=SAMPLED)[0]
        _assert_same(got, alone)


def test_aligning_from_the_vanilla_cache_equals_aligning_afresh(vlm, tiny_models, images, ragged_sentences):
    jobs = _jobs(images)
    vanilla = vlm.generate_greedy([j.prompt for j in jobs], [j.image for j in jobs], max_new_tokens=4,
                                  keep_prompt_cache=True)
    # The last job starts afresh: in the first round it feeds one pending token where the others feed the safety
    # prefix, so one batch holds rows of different pending lengths.
    from_vanilla = [AlignmentJob(j.prompt, j.image, j.seed, vanilla=v.prompt if i < 2 else None)
                    for i, (j, v) in enumerate(zip(jobs, vanilla, strict=True))]
    reused = align_jobs(vlm, tiny_models.reward, tiny_models.clip, from_vanilla, config=SAMPLED)
    fresh = align_jobs(vlm, tiny_models.reward, tiny_models.clip, jobs, config=SAMPLED)
    for got, expected in zip(reused, fresh, strict=True):
        _assert_same(got, expected)


def test_batched_vanilla_generation_equals_one_at_a_time(vlm, images):
    jobs = _jobs(images) + [AlignmentJob("Hi", images[2], 0)]
    together = vlm.generate_greedy([j.prompt for j in jobs], [j.image for j in jobs], max_new_tokens=8)
    for job, got in zip(jobs, together, strict=True):
        alone = vlm.generate_greedy([job.prompt], [job.image], max_new_tokens=8)[0]
        assert got.token_ids == alone.token_ids
        # and the engine's vanilla answer is the model's own greedy decoding
        text = vlm.chat_prompt(job.prompt, has_image=job.image is not None)
        assert got.token_ids == _own_greedy(vlm, text, job.image, 8)


def test_models_check_engine_and_image_pass(vlm):
    """`eta models check`'s engine oracles and its image check (tiled pixel values: LLaVA-NeXT/OneVision 5-D,
    Mllama 6-D, Qwen's patch rows) on every architecture of the matrix."""
    from eta.models import conformance

    engine = conformance.check_vlm_engine(vlm)
    assert engine.ok, engine.detail
    image = conformance.check_vlm_image(vlm)
    assert image.ok, image.detail


def test_candidate_rows_share_one_prompt_cache_where_every_layer_is_plain_self_attention(vlm):
    """docs/models.md's matrix: Mllama (cross-attention) and Gemma 3 (sliding windows) copy the prompt cache into
    every row; every other architecture holds it once per job."""
    copied = {"mllama", "gemma3"}
    assert vlm.shared_prefix == (vlm.architecture["name"] not in copied), vlm.architecture
