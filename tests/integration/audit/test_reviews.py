"""POST /v1/jobs/{id}/review and GET /v1/jobs/{id}/reviews: roles, tenants, validation, kept history."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.integration.audit.seed import seed_job

pytestmark = pytest.mark.postgres


@pytest.fixture
def job_id(sessions: sessionmaker[Session], tenant) -> str:
    with sessions() as session, session.begin():
        return str(seed_job(session, tenant.id))


def post(client, tenant, job_id: str, role: str = "review", **body):
    return client.post(f"/v1/jobs/{job_id}/review", json=body, headers=tenant.auth(role))


def test_verdicts_are_kept_as_a_history(client, tenant, job_id) -> None:
    first = post(client, tenant, job_id, verdict="needs_escalation", note="  not sure  ")
    assert first.status_code == 201
    assert first.headers["Location"] == f"/v1/jobs/{job_id}/reviews"
    doc = first.get_json()
    assert doc["object"] == "review" and doc["job_id"] == job_id and doc["verdict"] == "needs_escalation"
    assert doc["note"] == "not sure" and doc["reviewer"].startswith("eta_")
    second = post(client, tenant, job_id, role="admin", verdict="confirmed_unsafe")
    assert second.status_code == 201 and second.get_json()["note"] is None

    history = client.get(f"/v1/jobs/{job_id}/reviews", headers=tenant.auth("submit")).get_json()
    assert [r["verdict"] for r in history["data"]] == ["needs_escalation", "confirmed_unsafe"]
    assert history["data"][0]["reviewer"] != history["data"][1]["reviewer"]  # review key, then admin key
    record = client.get("/v1/audit/flagged", headers=tenant.auth("review")).get_json()["data"][0]
    assert record["review"]["verdict"] == "confirmed_unsafe"


def test_only_review_and_admin_keys_record_verdicts(client, tenant, job_id) -> None:
    refused = post(client, tenant, job_id, role="submit", verdict="false_positive")
    assert refused.status_code == 403 and refused.get_json()["code"] == "forbidden"
    assert client.post(f"/v1/jobs/{job_id}/review", json={"verdict": "false_positive"}).status_code == 401
    assert client.get(f"/v1/jobs/{job_id}/reviews", headers=tenant.auth("review")).get_json()["data"] == []


def test_another_tenants_job_is_not_found_like_an_unknown_one(client, make_tenant, job_id) -> None:
    other = make_tenant()
    foreign = post(client, other, job_id, verdict="false_positive")
    unknown = post(client, other, "00000000-0000-4000-8000-000000000000", verdict="false_positive")
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.get_json()["code"] == unknown.get_json()["code"] == "job_not_found"
    assert client.get(f"/v1/jobs/{job_id}/reviews", headers=other.auth("review")).status_code == 404


def test_a_job_without_an_answer_cannot_be_reviewed(client, tenant, sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        queued = str(seed_job(session, tenant.id, finish=False))
    response = post(client, tenant, queued, verdict="false_positive")
    assert response.status_code == 409 and response.get_json()["code"] == "job_not_reviewable"


@pytest.mark.parametrize("body, field", [
    ({"verdict": "unsafe"}, "verdict"),
    ({}, "verdict"),
    ({"verdict": "false_positive", "note": "x" * 4001}, "note"),
    ({"verdict": "false_positive", "reviewer": "me"}, "reviewer"),
])
def test_invalid_bodies_name_the_field(client, tenant, job_id, body, field) -> None:
    response = post(client, tenant, job_id, **body)
    assert response.status_code == 422
    assert any(error["field"] == field for error in response.get_json()["errors"])
