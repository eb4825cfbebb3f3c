"""The few-row linear layout computes what nn.Linear computes, and deep alignment over it still reproduces
greedy decoding."""

from __future__ import annotations

import pytest
import torch

from eta.models import cpu_linear
from eta.models.cpu_linear import MAX_ROWS, route_few_row_linears


@pytest.mark.parametrize("bias", [True, False])
def test_same_products_for_every_row_count_and_shape(bias):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 640, bias=bias), torch.nn.Linear(16, 16))
    assert route_few_row_linears(model) == 1  # the small layer stays as it is
    assert "forward" in vars(model[0]) and "forward" not in vars(model[1])
    for shape in [(1, 512), (3, 512), (5, 1, 512), (2, 4, 512), (MAX_ROWS + 1, 512), (600, 512), (0, 512)]:
        x = torch.randn(*shape)
        got = model[0](x)
        expected = torch.nn.functional.linear(x, model[0].weight, model[0].bias)
        assert got.shape == expected.shape and got.is_contiguous()
        assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.models
def test_top1_alignment_over_routed_linears_equals_greedy(monkeypatch, samples_dir):
    from PIL import Image

    from eta.config import ETAConfig
    from eta.models.tiny import build_random_models
    from eta.safety.alignment import deep_align

    monkeypatch.setattr(cpu_linear, "MIN_WEIGHT_ELEMENTS", 0)  # route even the tiny model's layers
    models = build_random_models("tiny", device="cpu", dtype="float32")
    vlm = models.vlm
    assert any("forward" in vars(m) for m in vlm.model.modules() if type(m) is torch.nn.Linear)
    image = Image.open(samples_dir / "extreme_ironing.jpg")
    config = ETAConfig(top_k=1, num_candidates=3, max_new_tokens=24, max_sentence_tokens=4)
    aligned = deep_align(vlm, models.reward, models.clip, prompt="Describe it.", image=image, config=config, seed=0)
    batch = vlm.encode([vlm.chat_prompt("Describe it.", has_image=True, assistant_prefix=config.safety_prefix)],
                       [image])
    out = vlm.model.generate(**batch, do_sample=False, max_new_tokens=config.max_new_tokens,
                             pad_token_id=vlm.tokenizer.pad_token_id, eos_token_id=sorted(vlm.eos_token_ids))
    assert aligned.token_ids == vlm._trim(out[0, batch["input_ids"].shape[1]:].tolist())
