"""Production refuses secrets that are short, placeholders, or low in entropy."""

from __future__ import annotations

import secrets

import pytest

from eta.settings import Settings, secret_bits


@pytest.mark.parametrize("secret", ["aaaaaaaaaaaaaaaa", "abababababababab", "changeme", "short", "1111222211112222"])
def test_weak_secrets_are_refused_in_production(secret):
    with pytest.raises(ValueError, match="SECRET_KEY"):
        Settings(eta_env="production", secret_key=secret)


def test_random_secrets_pass_and_development_needs_none():
    assert Settings(eta_env="production", secret_key=secrets.token_hex(32)).env == "production"
    assert Settings(eta_env="production", secret_key=secrets.token_urlsafe(24)).env == "production"
    assert Settings(eta_env="development").secret_key is None
    assert secret_bits("aaaaaaaaaaaaaaaa") == 0 and secret_bits(secrets.token_hex(32)) > 200
