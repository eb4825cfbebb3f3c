"""The API's cache of looked-up keys (GET requests only): entries expire, 0 keeps nothing, the size is bounded."""

from __future__ import annotations

import uuid

import pytest

from api import principal as principal_module
from api.principal import KeyCache, Principal


def _principal() -> Principal:
    return Principal(uuid.uuid4(), uuid.uuid4(), "submit", "eta_abcd")


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(principal_module.time, "monotonic", lambda: now[0])
    return now


def test_a_key_is_kept_for_its_time_then_looked_up_again(clock):
    cache = KeyCache(ttl_s=2.0)
    principal = _principal()
    cache.put("digest", principal)
    clock[0] += 1.9
    assert cache.get("digest") is principal
    clock[0] += 0.2
    assert cache.get("digest") is None


def test_zero_keeps_nothing(clock):
    cache = KeyCache(ttl_s=0)
    cache.put("digest", _principal())
    assert cache.get("digest") is None


def test_a_full_cache_drops_expired_entries_and_never_grows_past_its_size(clock):
    cache = KeyCache(ttl_s=2.0, max_entries=3)
    for name in ("a", "b", "c"):
        cache.put(name, _principal())
    cache.put("d", _principal())  # full of live entries: not kept
    assert cache.get("d") is None and cache.get("a") is not None
    clock[0] += 3
    cache.put("e", _principal())  # the expired entries make room
    assert cache.get("e") is not None and cache.get("a") is None
