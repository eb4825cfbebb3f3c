"""Model shapes for the benchmarks, and models built in memory on the device (the 7B benchmark's path)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from eta.config import ETAConfig
from eta.models.tiny import SHAPES, build_random_models, build_tiny_models, get_shape, is_built, parameter_counts
from eta.safety.alignment import deep_align

pytestmark = pytest.mark.models


def test_llava_7b_shape_matches_the_real_models():
    import open_clip

    counts = parameter_counts("llava-7b")  # counted on the meta device: nothing is allocated
    # LLaVA-1.5-7B has 7,063,427,072 parameters with its 32,064-token vocabulary; ours has 32,000 tokens.
    assert counts["vlm"] == 7_063_427_072 - 64 * 4096 * 2
    assert counts["vlm_vision_tower"] == 303_507_456  # CLIP ViT-L/14-336 vision tower
    assert 7.0e9 < counts["reward"] < 7.2e9  # Llama-3-8B trunk with a 32k (not 128k) embedding
    assert SHAPES["llava-7b"].clip == open_clip.get_model_config("ViT-L-14-336-quickgelu")
    assert 10e6 < parameter_counts("small")["vlm"] < 100e6


def test_unknown_and_unsaveable_shapes(tmp_path):
    with pytest.raises(ValueError, match="unknown model shape 'huge'"):
        get_shape("huge")
    with pytest.raises(ValueError, match="too large to write"):
        build_tiny_models(tmp_path / "big", shape="llava-7b")
    assert not (tmp_path / "big").exists()


def test_built_marker_records_the_shape(tiny_models_dir):
    assert is_built(tiny_models_dir) and is_built(tiny_models_dir, shape="tiny")
    assert not is_built(tiny_models_dir, shape="small")


def test_models_built_in_memory_run_deep_alignment(tiny_models, samples_dir):
    """The code path of the 7B benchmark (built on the device, never saved), at tiny scale."""
    models = build_random_models("tiny", seed=0, device="cpu", dtype="float32")
    assert models.vlm.model.config.text_config.hidden_size == tiny_models.vlm.model.config.text_config.hidden_size
    assert models.vlm.vocab_size == tiny_models.vlm.vocab_size
    assert models.describe()["vlm"]["id"] == "random:tiny/vlm"
    image = Image.open(samples_dir / "waterview.jpg")
    config = ETAConfig(max_new_tokens=12, max_sentence_tokens=4, num_candidates=3)
    aligned = deep_align(models.vlm, models.reward, models.clip, prompt="What is it?", image=image, config=config,
                         seed=1)
    assert aligned.response.startswith(config.safety_prefix) and len(aligned.trace) >= 2
    bf16 = build_random_models("tiny", device="cpu", dtype="bfloat16", roles=("reward",))
    assert bf16.vlm is None and next(bf16.reward.model.parameters()).dtype == torch.bfloat16
