"""The CPU linear routing (oneDNN with packed weights, MKL's few-row layout as its fallback) computes what
nn.Linear computes, and deep alignment over it still reproduces greedy decoding."""

from __future__ import annotations

import pytest
import torch

from eta.models import cpu_linear
from eta.models.cpu_linear import MAX_ROWS, onednn_available, route_cpu_linears

SHAPES = [(1, 512), (3, 512), (5, 1, 512), (2, 4, 512), (MAX_ROWS + 1, 512), (40, 512), (600, 512), (0, 512)]


def _model(bias: bool) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(512, 640, bias=bias), torch.nn.Linear(16, 16))


def _check(layer: torch.nn.Linear) -> None:
    with torch.inference_mode():
        for shape in SHAPES:
            x = torch.randn(*shape)
            got = layer(x)
            expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
            assert got.shape == expected.shape and got.is_contiguous()
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_same_products_for_every_row_count_and_shape(bias):
    model = _model(bias)
    assert route_cpu_linears(model) == 1  # the small layer stays as it is
    assert "forward" in vars(model[0]) and "forward" not in vars(model[1])
    _check(model[0])


@pytest.mark.parametrize("bias", [True, False])
def test_without_budget_or_onednn_the_mkl_layout_gives_the_same_products(bias, monkeypatch):
    over_budget = _model(bias)
    route_cpu_linears(over_budget, budget_bytes=0)
    _check(over_budget[0])
    monkeypatch.setattr(cpu_linear, "onednn_available", lambda: False)
    without = _model(bias)
    route_cpu_linears(without)
    _check(without[0])


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")
def test_a_weight_written_after_packing_is_packed_again():
    layer = _model(True)[0]
    route_cpu_linears(layer)
    x = torch.randn(5, 512)
    with torch.inference_mode():
        before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(2.0)  # in place: the packed copy is stale
        layer.bias.zero_()
    with torch.inference_mode():
        after = layer(x)
    torch.testing.assert_close(after, torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(after, before)


def test_training_keeps_autograd():
    layer = _model(True)[0]
    route_cpu_linears(layer)
    x = torch.randn(5, 512, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


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
