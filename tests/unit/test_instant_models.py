"""The instant models: deterministic, independent of batching, every decision branch reachable, and the real
deep-alignment loop runs on them."""

from __future__ import annotations

from collections import Counter

import pytest
from PIL import Image

from eta.config import ETAConfig
from eta.models.instant import FULL_STOP, load_instant_models
from eta.safety.pipeline import ETAInput, run_eta


def _items(n: int) -> list[ETAInput]:
    return [ETAInput(prompt=f"question {i}",
                     image=Image.new("RGB", (16, 16), (i % 256, (i * 7) % 256, (i * 13) % 256)) if i % 2 == 0 else None,
                     seed=i) for i in range(n)]


def _comparable(result: object) -> dict[str, object]:
    data = result.to_dict()  # type: ignore[attr-defined]
    data.pop("timings_ms")
    return data


def test_results_are_deterministic_and_independent_of_grouping() -> None:
    models = load_instant_models(("vlm", "clip", "reward"))
    items = _items(60)
    together = run_eta(models, items, ETAConfig())
    alone = [run_eta(load_instant_models(("vlm", "clip", "reward")), [item], ETAConfig())[0] for item in items]
    assert [_comparable(r) for r in together] == [_comparable(r) for r in alone]


def test_every_decision_branch_runs_and_alignment_records_a_trace() -> None:
    results = run_eta(load_instant_models(("vlm", "clip", "reward")), _items(300), ETAConfig())
    decisions = Counter(r.decision for r in results)
    assert len(decisions) >= 5, decisions
    assert {r.pre_unsafe for r in results if r.s_pre is not None} == {True, False}
    assert {r.post_unsafe for r in results} == {True, False}
    aligned = [r for r in results if r.aligned]
    assert aligned and len(aligned) < len(results) / 3
    for result in aligned:
        assert result.response.startswith(ETAConfig().safety_prefix)
        assert result.trace and all(len(step["candidates"]) == 5 for step in result.trace)
    assert any(step["use_clip"] for r in aligned for step in r.trace)
    assert {r.flagged for r in results} == {True, False}


def test_a_seed_changes_the_aligned_answer_only_through_sampling() -> None:
    models = load_instant_models(("vlm", "clip", "reward"))
    config = ETAConfig(policy="post_only", tau_post=1.0)  # align everything
    item = _items(1)[0]
    first = run_eta(models, [item], config)[0]
    again = run_eta(models, [item], config)[0]
    other = run_eta(models, [ETAInput(item.prompt, item.image, seed=12345)], config)[0]
    assert first.aligned and _comparable(first) == _comparable(again)
    assert other.vanilla_response == first.vanilla_response
    assert other.trace != first.trace


def test_greedy_answers_are_short_sentences() -> None:
    vlm = load_instant_models(("vlm",)).require("vlm")
    answers = vlm.generate_greedy(["a", "b"], [None, Image.new("RGB", (8, 8))], max_new_tokens=64)
    for answer in answers:
        assert answer.text.endswith(".") and answer.token_ids[-1] == FULL_STOP and len(answer.token_ids) <= 9


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model roles"):
        load_instant_models(("vlm", "judge"))


def test_workers_load_them_when_configured(tmp_path) -> None:
    from eta.models.instant import InstantClip
    from eta.settings import Settings
    from workers.context import WorkerContext

    context = WorkerContext(Settings(eta_models="instant", eta_data_dir=tmp_path))
    assert isinstance(context.models_for(("clip",)).clip, InstantClip)
    assert context.models_for(("clip",)) is context.models_for(())  # loaded once per context
