"""Rate limits per key and role, failed authentications per address, and the tenant's unfinished-job cap:
each a 429 problem with a code and Retry-After, and never another tenant's business."""

from __future__ import annotations

import re

import pytest

from api import create_app
from eta.settings import Settings

from .conftest import TEST_LIMITS

pytestmark = pytest.mark.postgres


@pytest.fixture
def settings(postgres_url, tmp_path) -> Settings:
    return Settings(database_url=postgres_url, eta_data_dir=tmp_path, eta_rate_limit_submit="5/minute",
                    eta_rate_limit_review="50/minute", eta_rate_limit_auth_failures="4/minute",
                    eta_max_unfinished_jobs=3, **TEST_LIMITS)


@pytest.fixture
def app(settings, postgres_engine, enqueue):
    return create_app(settings, engine=postgres_engine, enqueue=enqueue)


def _is_429(response, code: str) -> None:
    assert response.status_code == 429, response.get_json()
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["code"] == code
    assert int(response.headers["Retry-After"]) >= 1


def test_a_key_over_its_roles_rate_gets_429_and_other_keys_do_not(client, make_tenant):
    noisy, quiet = make_tenant(), make_tenant()
    for _ in range(5):
        assert client.get("/v1/audit/summary", headers=noisy.auth("submit")).status_code == 200
    _is_429(client.get("/v1/audit/summary", headers=noisy.auth("submit")), "rate_limited")
    # The same tenant's review key has its own (larger) allowance, and another tenant is untouched.
    assert client.get("/v1/audit/summary", headers=noisy.auth("review")).status_code == 200
    assert client.get("/v1/audit/summary", headers=quiet.auth("submit")).status_code == 200


def test_failed_authentications_from_one_address_end_in_429(client, tenant):
    for _ in range(4):
        assert client.get("/v1/audit/summary", headers={"Authorization": "Bearer eta_wrong_key"}).status_code == 401
    _is_429(client.get("/v1/audit/summary", headers={"Authorization": "Bearer eta_wrong_key"}), "auth_rate_limited")
    # The address is held back before any key is looked at; another address is not.
    _is_429(client.get("/v1/audit/summary", headers=tenant.auth("review")), "auth_rate_limited")
    other = client.get("/v1/audit/summary", headers=tenant.auth("review"), environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert other.status_code == 200


def _sign_in(client, key: str, **kwargs):
    page = client.get("/review/login", **kwargs).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    return client.post("/review/login", data={"csrf_token": token.group(1), "api_key": key}, **kwargs)


def test_wrong_keys_on_the_review_sign_in_form_count_like_wrong_keys_on_the_api(client, tenant):
    for _ in range(4):
        assert _sign_in(client, "eta_wrong_key").status_code == 401
    held = _sign_in(client, tenant.keys["review"])
    assert held.status_code == 429 and int(held.headers["Retry-After"]) >= 1
    assert b"failed authentications" in held.data
    # The API refuses the same address too; a reviewer elsewhere signs in.
    _is_429(client.get("/v1/audit/summary", headers=tenant.auth("review")), "auth_rate_limited")
    elsewhere = _sign_in(client, tenant.keys["review"], environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert elsewhere.status_code == 302


def test_a_tenant_cannot_queue_beyond_its_unfinished_job_cap(client, make_tenant, enqueue):
    busy, other = make_tenant(), make_tenant()
    for i in range(3):
        assert client.post("/v1/jobs", headers=busy.auth("admin"), json={"prompt": f"Q{i}?"}).status_code == 202
    _is_429(client.post("/v1/jobs", headers=busy.auth("admin"), json={"prompt": "One more?"}), "quota_exceeded")
    _is_429(client.post("/v1/batches", headers=busy.auth("admin"), json={"items": [{"prompt": "A"}]}),
            "quota_exceeded")
    assert len(enqueue.job_ids) == 3  # nothing more was stored or sent
    assert client.post("/v1/jobs", headers=other.auth("admin"), json={"prompt": "Mine?"}).status_code == 202
    # A finished (here: cancelled) job frees its place.
    job_id = str(enqueue.job_ids[0])
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=busy.auth("admin")).status_code == 200
    assert client.post("/v1/jobs", headers=busy.auth("admin"), json={"prompt": "Now?"}).status_code == 202


def test_an_address_blocked_in_one_api_process_is_held_back_by_every_other(postgres_url, postgres_engine, tmp_path,
                                                                            enqueue, tenant):
    """Two API processes sharing the Redis counters: a process that never saw the address fail reads the shared
    counter from its first failure on (at most one guess past the limit), and a good key from it passes."""
    import os
    import uuid

    import redis

    url = os.environ.get("ETA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"eta-test-{uuid.uuid4().hex[:8]}:"
    shared = Settings(database_url=postgres_url, eta_data_dir=tmp_path, redis_url=url, eta_broker_key_prefix=prefix,
                      eta_rate_limit_auth_failures="4/minute", **TEST_LIMITS)
    first = create_app(shared, engine=postgres_engine, enqueue=enqueue).test_client()
    second = create_app(shared, engine=postgres_engine, enqueue=enqueue).test_client()
    wrong = {"Authorization": "Bearer eta_wrong_key"}
    try:
        for _ in range(4):
            assert first.get("/v1/audit/summary", headers=wrong).status_code == 401
        _is_429(first.get("/v1/audit/summary", headers=tenant.auth("review")), "auth_rate_limited")
        # The second process has seen no failure from this address: a good key passes without a counter read.
        assert second.get("/v1/audit/summary", headers=tenant.auth("review")).status_code == 200
        # Its first wrong key is looked up and counted; from then on it reads the shared counter too.
        assert second.get("/v1/audit/summary", headers=wrong).status_code == 401
        _is_429(second.get("/v1/audit/summary", headers=wrong), "auth_rate_limited")
        _is_429(second.get("/v1/audit/summary", headers=tenant.auth("review")), "auth_rate_limited")
    finally:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
