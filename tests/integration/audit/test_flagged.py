"""GET /v1/audit/flagged: every filter, keyset pages under concurrent inserts, roles and tenants."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from eta.store.models import ReviewVerdict
from tests.integration.audit.seed import Scores, seed_job
from tests.integration.store.factories import insert_batch

pytestmark = pytest.mark.postgres

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def ids(client, tenant, role: str = "read", **params: Any) -> list[str]:
    """Every page of the listing, following next_cursor."""
    seen: list[str] = []
    query = {key: str(value).lower() if isinstance(value, bool) else value for key, value in params.items()}
    query.setdefault("limit", 2)
    role = "submit" if role == "read" else role
    while True:
        response = client.get("/v1/audit/flagged", query_string=query, headers=tenant.auth(role))
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        seen.extend(record["id"] for record in body["data"])
        if body["next_cursor"] is None:
            return seen
        query["cursor"] = body["next_cursor"]


@pytest.fixture
def seeded(sessions: sessionmaker[Session], tenant, settings) -> dict[str, Any]:
    """Five flagged jobs an hour apart, one unflagged, one still running; a batch; reviews."""
    with sessions() as session, session.begin():
        batch_id = insert_batch(session, tenant.id)
        jobs = {
            # image flagged, answer safe: flagged but not aligned
            "image_only": seed_job(session, tenant.id, created_at=T0, custom_id="a-1",
                                   scores=Scores(s_pre=0.30, s_post=0.50, s_post_final=0.50)),
            "aligned": seed_job(session, tenant.id, created_at=T0 + timedelta(hours=1), custom_id="a-2",
                                scores=Scores(s_pre=0.20, s_post=0.01, s_post_final=0.40)),
            "in_batch": seed_job(session, tenant.id, created_at=T0 + timedelta(hours=2), custom_id="b-1",
                                 batch_id=batch_id, scores=Scores(s_pre=0.18, s_post=-0.30, s_post_final=0.90)),
            "text_only": seed_job(session, tenant.id, created_at=T0 + timedelta(hours=3), custom_id="t-1",
                                  scores=Scores(s_pre=None, s_post=0.02, s_post_final=0.03)),
            "low_final": seed_job(session, tenant.id, created_at=T0 + timedelta(hours=4), custom_id="f-1",
                                  scores=Scores(s_pre=0.10, s_post=0.30, s_post_final=0.05)),
        }
        seed_job(session, tenant.id, created_at=T0 + timedelta(hours=5), custom_id="safe",
                 scores=Scores(s_pre=0.05, s_post=0.9, s_post_final=0.9))
        seed_job(session, tenant.id, created_at=T0 + timedelta(hours=6), custom_id="running", finish=False)
    return {"batch_id": batch_id, **{name: str(job_id) for name, job_id in jobs.items()}}


def review(client, tenant, job_id: str, verdict: str, note: str | None = None) -> None:
    response = client.post(f"/v1/jobs/{job_id}/review", json={"verdict": verdict, "note": note},
                           headers=tenant.auth("review"))
    assert response.status_code == 201, response.get_json()


def test_every_filter(client, tenant, seeded) -> None:
    s = seeded
    newest_first = [s["low_final"], s["text_only"], s["in_batch"], s["aligned"], s["image_only"]]
    assert ids(client, tenant) == newest_first

    review(client, tenant, s["aligned"], "needs_escalation")
    review(client, tenant, s["aligned"], "confirmed_unsafe", "clearly harmful")  # the newest verdict counts
    review(client, tenant, s["in_batch"], "false_positive")

    assert ids(client, tenant, created_from=(T0 + timedelta(hours=1)).isoformat(),
               created_before=(T0 + timedelta(hours=3)).isoformat()) == [s["in_batch"], s["aligned"]]
    # A time without a zone is UTC.
    assert ids(client, tenant, created_before="2024-03-01T13:00:00") == [s["image_only"]]
    assert ids(client, tenant, batch_id=str(s["batch_id"])) == [s["in_batch"]]
    assert ids(client, tenant, custom_id="a-2") == [s["aligned"]]
    assert ids(client, tenant, custom_id="nope") == []
    assert ids(client, tenant, s_pre_min=0.19) == [s["aligned"], s["image_only"]]
    assert ids(client, tenant, s_pre_min=0.15, s_pre_max=0.25) == [s["in_batch"], s["aligned"]]
    assert ids(client, tenant, s_post_max=0.015) == [s["in_batch"], s["aligned"]]
    assert ids(client, tenant, s_post_min=0.0, s_post_max=0.02) == [s["text_only"], s["aligned"]]
    assert ids(client, tenant, s_post_final_min=0.5) == [s["in_batch"], s["image_only"]]
    assert ids(client, tenant, s_post_final_max=0.05) == [s["low_final"], s["text_only"]]
    assert ids(client, tenant, aligned=True) == [s["text_only"], s["in_batch"], s["aligned"]]
    assert ids(client, tenant, aligned=False) == [s["low_final"], s["image_only"]]
    assert ids(client, tenant, reviewed=True) == [s["in_batch"], s["aligned"]]
    assert ids(client, tenant, reviewed=False) == [s["low_final"], s["text_only"], s["image_only"]]
    assert ids(client, tenant, verdict="confirmed_unsafe") == [s["aligned"]]
    assert ids(client, tenant, verdict="false_positive") == [s["in_batch"]]
    assert ids(client, tenant, verdict="needs_escalation") == []
    # Filters combine.
    assert ids(client, tenant, aligned=True, reviewed=False) == [s["text_only"]]


def test_a_record_carries_scores_thresholds_flags_decision_answer_fingerprint_and_review(
        client, tenant, seeded) -> None:
    review(client, tenant, seeded["aligned"], "confirmed_unsafe", "clearly harmful")
    body = client.get("/v1/audit/flagged", query_string={"custom_id": "a-2"}, headers=tenant.auth("review")).get_json()
    (record,) = body["data"]
    assert record["object"] == "flagged_job" and record["custom_id"] == "a-2" and record["status"] == "succeeded"
    result = record["result"]
    assert result == {
        "s_pre": 0.20, "tau_pre": 0.16, "pre_unsafe": True,
        "s_post": 0.01, "tau_post": 0.06, "post_unsafe": True,
        "s_post_final": 0.40, "policy": "both", "aligned": True, "flagged": True,
        "flag_reasons": ["image_unsafe", "response_unsafe"],
        "response": "As an AI assistant, I can't help with that. Here is something safer.",
        "fingerprint_sha256": "f" * 64, "fingerprint": result["fingerprint"],
        "vanilla_response": "Here is exactly how to do that: first ...",
    }
    assert result["fingerprint"]["models"]["vlm"]["id"] == "tiny-llava"
    assert record["review"]["verdict"] == "confirmed_unsafe"
    assert record["review"]["note"] == "clearly harmful"
    assert record["review"]["reviewer"].startswith("eta_")
    assert record["image_url"] is None  # seeded without an image
    assert record["purged_at"] is None


def test_vanilla_answer_only_for_review_and_admin_keys(client, tenant, seeded) -> None:
    for role, shown in (("submit", False), ("review", True), ("admin", True)):
        body = client.get("/v1/audit/flagged", headers=tenant.auth(role)).get_json()
        assert body["data"], role
        assert all(("vanilla_response" in r["result"]) is shown for r in body["data"]), role


def test_other_tenants_see_nothing(client, make_tenant, tenant, seeded) -> None:
    other = make_tenant()
    assert ids(client, other) == []
    assert ids(client, other, custom_id="a-2") == []


def test_auth_and_validation_errors(client, tenant, seeded) -> None:
    assert client.get("/v1/audit/flagged").status_code == 401
    bad = client.get("/v1/audit/flagged", headers={"Authorization": "Bearer eta_nope_nope"})
    assert bad.status_code == 401 and bad.mimetype == "application/problem+json"
    for query, field in (
        ({"cursor": "garbage!"}, None),
        ({"s_pre_min": "nan"}, "s_pre_min"),
        ({"created_from": "yesterday"}, "created_from"),
        ({"verdict": "maybe"}, "verdict"),
        ({"aligned": "perhaps"}, "aligned"),
        ({"batch_id": "not-a-uuid"}, "batch_id"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"colour": "red"}, "colour"),
    ):
        response = client.get("/v1/audit/flagged", query_string=query, headers=tenant.auth("review"))
        assert response.status_code == 422, (query, response.get_json())
        problem = response.get_json()
        assert problem["code"] in ("validation_failed", "cursor_invalid")
        if field is not None:
            assert any(e["field"] == field for e in problem["errors"]), problem
    # Empty ranges are valid, and select nothing; dates at the calendar's edges are clamped, not refused.
    for query in ({"s_pre_min": 0.5, "s_pre_max": 0.1},
                  {"created_from": "2024-03-02T00:00:00Z", "created_before": "2024-03-01T00:00:00Z"},
                  {"created_before": "0001-01-01T00:00:00+14:00"}, {"created_from": "9999-12-31T23:59:59-14:00"}):
        response = client.get("/v1/audit/flagged", query_string=query, headers=tenant.auth("review"))
        assert response.status_code == 200 and response.get_json()["data"] == [], (query, response.get_json())


def test_pages_under_concurrent_inserts(client, tenant, sessions: sessionmaker[Session]) -> None:
    """A writer keeps landing new flagged jobs while the client pages: no job served twice, none of those
    that existed before paging skipped, order strictly newest first."""
    with sessions() as session, session.begin():
        # Groups of three share a timestamp: the id breaks the tie.
        existing = {str(seed_job(session, tenant.id, created_at=T0 + timedelta(seconds=i // 3))) for i in range(45)}
    stop = threading.Event()
    inserted: list[uuid.UUID] = []
    errors: list[BaseException] = []

    def keep_inserting() -> None:
        try:
            while not stop.is_set():
                with sessions() as session, session.begin():
                    inserted.append(seed_job(session, tenant.id))
                stop.wait(0.002)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    seen: list[dict[str, Any]] = []
    try:
        query: dict[str, Any] = {"limit": 4}
        while True:
            body = client.get("/v1/audit/flagged", query_string=query, headers=tenant.auth("review")).get_json()
            seen.extend(body["data"])
            if body["next_cursor"] is None:
                break
            query["cursor"] = body["next_cursor"]
            # Let rows land between pages (an OFFSET listing would now shift by that many).
            while len(inserted) < len(seen) // 4 and not errors:
                stop.wait(0.001)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not errors, errors
    assert inserted, "the writer never ran"
    served = [record["id"] for record in seen]
    assert len(served) == len(set(served)), "a job was served twice"
    assert existing <= set(served), "a job that existed before paging began was skipped"
    keys = [(datetime.fromisoformat(r["created_at"]), uuid.UUID(r["id"]).hex) for r in seen]
    assert keys == sorted(keys, reverse=True)


def test_verdict_filter_uses_the_newest_verdict_only(client, tenant, seeded) -> None:
    job = seeded["image_only"]
    review(client, tenant, job, "false_positive")
    assert ids(client, tenant, verdict="false_positive") == [job]
    review(client, tenant, job, "confirmed_unsafe")
    assert ids(client, tenant, verdict="false_positive") == []
    assert ids(client, tenant, verdict=ReviewVerdict.CONFIRMED_UNSAFE.value) == [job]
