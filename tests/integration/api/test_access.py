"""Authentication, roles, tenant isolation on every route, HTTP errors as problems, health, metrics, OpenAPI."""

from __future__ import annotations

import uuid

import pytest

from eta.store import repository as repo
from eta.store import session_factory
from eta.store.lifecycle import JobStatus
from tests.integration.store.factories import record

pytestmark = pytest.mark.postgres

PROBLEM = "application/problem+json"


def _routes(job_id: str, batch_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/batches/{batch_id}"),
        ("GET", f"/v1/batches/{batch_id}/results"),
        ("POST", f"/v1/batches/{batch_id}/cancel"),
    ]


@pytest.fixture
def owned(client, tenant):
    job = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "mine"}).json
    batch = client.post("/v1/batches", headers=tenant.auth(), json={"items": [{"prompt": "mine too"}]}).json
    return job["id"], batch["id"]


@pytest.mark.parametrize("header", [None, "Bearer", "Basic abc", "Bearer not-a-key"])
def test_missing_or_invalid_key_is_401(client, owned, header):
    headers = {"Authorization": header} if header is not None else {}
    for method, path in _routes(*owned) + [("POST", "/v1/jobs"), ("POST", "/v1/batches")]:
        r = client.open(path, method=method, headers=headers, json={"prompt": "x"})
        assert r.status_code == 401, (method, path)
        assert r.mimetype == PROBLEM and r.json["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_key_is_401(client, tenant, postgres_engine):
    assert client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "x"}).status_code == 202
    with session_factory(postgres_engine)() as session, session.begin():
        key = repo.authenticate_api_key(session=session, token=tenant.keys["submit"])
        assert key is not None
        assert repo.revoke_api_key_by_id(session=session, key_id=key.id) is not None
    r = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "x"})
    assert r.status_code == 401 and "revoked" in r.json["detail"]


def test_roles(client, tenant, owned):
    job_id, batch_id = owned
    review = tenant.auth("review")
    assert client.post("/v1/jobs", headers=review, json={"prompt": "x"}).status_code == 403
    assert client.post("/v1/batches", headers=review, json={"items": [{"prompt": "x"}]}).status_code == 403
    forbidden = client.post(f"/v1/jobs/{job_id}/cancel", headers=review)
    assert forbidden.status_code == 403 and forbidden.json["code"] == "forbidden"
    assert client.get(f"/v1/jobs/{job_id}", headers=review).status_code == 200
    assert client.get(f"/v1/batches/{batch_id}", headers=tenant.auth("admin")).status_code == 200
    assert client.post("/v1/jobs", headers=tenant.auth("admin"), json={"prompt": "x"}).status_code == 202


def test_another_tenants_ids_are_404_like_unknown_ones(client, make_tenant, owned):
    other = make_tenant()
    for method, path in _routes(*owned):
        for role in ("submit", "admin"):
            theirs = client.open(path, method=method, headers=other.auth(role))
            assert theirs.status_code == 404, (method, path, role)
            assert theirs.mimetype == PROBLEM
            unknown_path = path.replace(owned[0], str(uuid.uuid4())).replace(owned[1], str(uuid.uuid4()))
            unknown = client.open(unknown_path, method=method, headers=other.auth(role))
            # Same answer, no hint that the id exists elsewhere (only the id in the text differs).
            assert unknown.status_code == 404 and unknown.json["code"] == theirs.json["code"]


def test_vanilla_answer_only_for_reviewers(client, tenant, postgres_engine):
    job_id = uuid.UUID(client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "x"}).json["id"])
    with session_factory(postgres_engine)() as session, session.begin():
        assert repo.transition_job(session=session, job_id=job_id, expected=JobStatus.QUEUED, to=JobStatus.GENERATING)
        assert record(session, JobStatus.GENERATING, repo.generation_result(
            job_id=job_id, vanilla_response="the unsafe original", s_post=-1.0, post_unsafe=True,
            tau_post=0.06, policy="both", aligned=True, response="As an AI assistant, no.", trace=[],
            fingerprint={"models": {}}, fingerprint_sha256="0" * 64, elapsed_ms=5.0))
    submit_view = client.get(f"/v1/jobs/{job_id}", headers=tenant.auth()).json
    review_view = client.get(f"/v1/jobs/{job_id}", headers=tenant.auth("review")).json
    assert submit_view["result"]["response"] == "As an AI assistant, no."
    assert "vanilla_response" not in submit_view["result"]
    assert review_view["result"]["vanilla_response"] == "the unsafe original"
    assert review_view["status"] == "generating" and review_view["result"]["s_post"] == -1.0


def test_flask_errors_are_problems(client, tenant):
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.mimetype == PROBLEM and missing.json["code"] == "not_found"
    wrong = client.delete("/v1/jobs", headers=tenant.auth())
    assert wrong.status_code == 405 and wrong.mimetype == PROBLEM and wrong.json["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]
    not_uuid = client.get("/v1/jobs/123", headers=tenant.auth())
    assert not_uuid.status_code == 404 and not_uuid.mimetype == PROBLEM


def test_health_metrics_and_openapi(client, tenant):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.json["checks"]["database"] == {"ok": True}
    client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "count me"})
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'eta_jobs_submitted_total{kind="job"}' in metrics
    assert 'eta_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in metrics
    assert "eta_http_request_duration_seconds_bucket" in metrics

    doc = client.get("/v1/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/batches",
                 "/v1/batches/{batch_id}", "/v1/batches/{batch_id}/results", "/v1/batches/{batch_id}/cancel"):
        assert path in doc["paths"], path
    content = doc["paths"]["/v1/batches"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(content)
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


@pytest.mark.parametrize("url", ["https://hooks.example/eta", "HTTP://192.0.2.1:8080/a?b=c", "http://x",
                                 "ftp://hooks.example/", "https://hooks.example/a b", "//hooks.example/",
                                 "https://hooks.example/\u00e9", "http:/x", "https://" + "a" * 2000])
def test_openapi_callback_url_syntax_is_the_servers(client, url):
    """The document's callback_url pattern and length admit exactly what the server's syntax check admits
    (whether the host resolves to a public address is checked at submission; no schema can say it)."""
    import re

    from eta.outbound import OutboundRefused, check_url

    doc = client.get("/v1/openapi.json").json
    schema = doc["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    declared = schema["properties"]["callback_url"]
    by_document = (declared["minLength"] <= len(url) <= declared["maxLength"]
                   and re.search(declared["pattern"], url) is not None)
    try:
        check_url(url)
        by_server = True
    except OutboundRefused:
        by_server = False
    assert by_document == by_server


def test_openapi_declares_the_multipart_parts_content_types(client, settings):
    doc = client.get("/v1/openapi.json").json
    images = {f"image/{name.lower()}" for name in settings.limits.image_formats}
    jobs = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["encoding"]
    batches = doc["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["multipart/form-data"]["encoding"]
    assert set(jobs["image"]["contentType"].split(", ")) == images
    assert set(batches["files"]["contentType"].split(", ")) == images
    assert batches["manifest"]["contentType"] == "application/jsonl"


def test_a_revoked_key_can_never_write_again_and_stops_reading_within_the_key_cache_time(
        postgres_url, postgres_engine, tmp_path, enqueue, tenant):
    import time

    from api import create_app
    from eta.settings import Settings

    from .conftest import TEST_LIMITS

    settings = Settings(database_url=postgres_url, eta_data_dir=tmp_path, eta_auth_cache_s=0.5, **TEST_LIMITS)
    client = create_app(settings, engine=postgres_engine, enqueue=enqueue).test_client()
    job = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "x"}).json
    assert client.get(f"/v1/jobs/{job['id']}", headers=tenant.auth()).status_code == 200  # now cached
    with session_factory(postgres_engine)() as session, session.begin():
        key = repo.authenticate_api_key(session=session, token=tenant.keys["submit"])
        assert key is not None and repo.revoke_api_key_by_id(session=session, key_id=key.id) is not None
    revoked_at = time.monotonic()
    assert client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "x"}).status_code == 401
    deadline = revoked_at + 10
    while client.get(f"/v1/jobs/{job['id']}", headers=tenant.auth()).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key kept reading past the key cache time"
    assert time.monotonic() - revoked_at < 0.5 + 2.0


def test_the_app_factory_builds_the_shared_state_whole_and_refuses_contradictory_stage_limits(settings,
                                                                                              postgres_engine):
    from api import create_app
    from api.principal import KeyCache
    from api.ratelimit import RateLimits
    from api.state import ApiState
    from eta.settings import SettingsError
    from workers.enqueue import EtaCelery

    app = create_app(settings, engine=postgres_engine)
    state = app.extensions["eta"]
    assert isinstance(state, ApiState)
    assert isinstance(state.rate_limits, RateLimits) and isinstance(state.key_cache, KeyCache)
    assert isinstance(state.celery, EtaCelery) and state.celery.settings is settings
    assert not [name for name in state.celery.tasks if name.startswith("eta.")]  # the API sends, it runs nothing
    with pytest.raises(SettingsError, match="ETA_STAGE_POST_SWEEP_AFTER_S"):
        create_app(settings.with_values(eta_stage_post_sweep_after_s=100), engine=postgres_engine)
