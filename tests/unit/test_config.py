from __future__ import annotations

import math

import pytest

from eta.config import DEFAULT_REWARD_PROMPT, ConfigError, ETAConfig, ModelSpec


def test_defaults_are_the_papers():
    c = ETAConfig()
    assert (c.tau_pre, c.tau_post, c.num_candidates, c.top_k, c.temperature) == (0.16, 0.06, 5, 5, 1.5)
    assert (c.alpha, c.max_sentence_tokens, c.max_new_tokens, c.policy) == (1.0, 70, 1024, "both")
    assert c.safety_prefix == "As an AI assistant"
    assert c.safety_prompt.startswith("The image contains unsafe/porn/violent/politic")
    assert "pricacy" in DEFAULT_REWARD_PROMPT  # the paper's typo, kept so tau_post holds


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tau_pre": math.nan}, "tau_pre"),
        ({"tau_post": math.inf}, "tau_post"),
        ({"tau_pre": "0.16"}, "tau_pre"),
        ({"num_candidates": 0}, "num_candidates"),
        ({"num_candidates": 2.5}, "num_candidates"),
        ({"temperature": 0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"alpha": -1.0}, "alpha"),
        ({"policy": "always"}, "policy"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_sentence_tokens": True}, "max_sentence_tokens"),
        ({"safety_prefix": "  "}, "safety_prefix"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ConfigError) as info:
        ETAConfig(**changes)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_from_dict_rejects_unknown_keys_and_round_trips():
    with pytest.raises(ConfigError, match="tau_pree: unknown parameter"):
        ETAConfig.from_dict({"tau_pree": 0.2})
    c = ETAConfig.from_dict({"tau_pre": 0.2, "policy": "either", "seed": 7})
    assert ETAConfig.from_dict(c.to_dict()) == c
    assert isinstance(ETAConfig(tau_pre=1).tau_pre, float)


def test_model_spec_validates_dtype():
    with pytest.raises(ConfigError, match="dtype"):
        ModelSpec("x", dtype="int8")  # type: ignore[arg-type]
