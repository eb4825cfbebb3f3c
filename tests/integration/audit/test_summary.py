"""GET /v1/audit/summary: the counts an operator tunes tau_pre and tau_post with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from tests.integration.audit.seed import Scores, seed_job

pytestmark = pytest.mark.postgres

T0 = datetime(2024, 7, 1, tzinfo=UTC)


def review(client, tenant, job_id, verdict: str) -> None:
    assert client.post(f"/v1/jobs/{job_id}/review", json={"verdict": verdict},
                       headers=tenant.auth("review")).status_code == 201


def test_counts_rates_and_threshold_groups(client, tenant, make_tenant, sessions: sessionmaker[Session]) -> None:
    paper = dict(tau_pre=0.16, tau_post=0.06)
    strict = dict(tau_pre=0.10, tau_post=0.20)
    with sessions() as session, session.begin():
        # Paper thresholds: 2 flagged by the image only, 1 by both (aligned), 1 safe.
        img1 = seed_job(session, tenant.id, created_at=T0, scores=Scores(s_pre=0.2, s_post=0.5, **paper))
        img2 = seed_job(session, tenant.id, created_at=T0, scores=Scores(s_pre=0.3, s_post=0.5, **paper))
        both = seed_job(session, tenant.id, created_at=T0, scores=Scores(s_pre=0.3, s_post=0.0, **paper))
        safe = seed_job(session, tenant.id, created_at=T0, scores=Scores(s_pre=0.0, s_post=0.5, **paper))
        # Stricter thresholds: 2 flagged by the answer only.
        ans1 = seed_job(session, tenant.id, created_at=T0 + timedelta(days=1),
                        scores=Scores(s_pre=0.05, s_post=0.15, s_post_final=0.5, **strict))
        seed_job(session, tenant.id, created_at=T0 + timedelta(days=1),
                 scores=Scores(s_pre=0.05, s_post=0.18, s_post_final=0.5, **strict))
        # Not counted: still running, and another tenant's.
        seed_job(session, tenant.id, created_at=T0, finish=False)
        seed_job(session, make_tenant().id, created_at=T0)
    review(client, tenant, img1, "confirmed_unsafe")
    review(client, tenant, img1, "false_positive")  # the newest verdict counts
    review(client, tenant, img2, "false_positive")
    review(client, tenant, both, "confirmed_unsafe")
    review(client, tenant, ans1, "needs_escalation")
    review(client, tenant, safe, "confirmed_unsafe")  # a miss found by a spot check

    body = client.get("/v1/audit/summary", headers=tenant.auth("submit")).get_json()
    assert body["object"] == "audit_summary"
    total = body["total"]
    assert total["evaluated"] == 6 and total["flagged"] == 5 and total["flag_rate"] == pytest.approx(5 / 6, abs=1e-6)
    assert total["pre_unsafe"] == 3 and total["post_unsafe"] == 3 and total["aligned"] == 1
    assert total["reviewed"] == 4
    assert total["verdicts"] == {"confirmed_unsafe": 1, "false_positive": 2, "needs_escalation": 1}
    assert total["false_positive_rate"] == 0.5
    assert total["verdict_rates"]["confirmed_unsafe"] == 0.25
    # Every image-flagged review is known; 2 of 3 were false positives: tau_pre is too low.
    assert total["pre_false_positive_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert total["post_false_positive_rate"] == 0.0
    assert total["missed"] == 1

    groups = {(g["tau_pre"], g["tau_post"]): g["counts"] for g in body["by_thresholds"]}
    assert set(groups) == {(0.16, 0.06), (0.10, 0.20)}
    assert groups[(0.16, 0.06)]["evaluated"] == 4 and groups[(0.16, 0.06)]["false_positive_rate"] == pytest.approx(
        2 / 3, abs=1e-6)
    assert groups[(0.10, 0.20)]["flagged"] == 2 and groups[(0.10, 0.20)]["reviewed"] == 1

    day_two = client.get("/v1/audit/summary", headers=tenant.auth("review"),
                         query_string={"created_from": "2024-07-02T00:00:00Z"}).get_json()
    assert day_two["total"]["evaluated"] == 2 and day_two["total"]["false_positive_rate"] == 0.0
    empty = client.get("/v1/audit/summary", headers=tenant.auth("review"),
                       query_string={"created_before": "2024-01-01"}).get_json()
    assert empty["total"]["evaluated"] == 0 and empty["total"]["false_positive_rate"] is None
    assert empty["by_thresholds"] == []


def test_summary_needs_a_key_and_valid_dates(client, tenant) -> None:
    assert client.get("/v1/audit/summary").status_code == 401
    bad = client.get("/v1/audit/summary", headers=tenant.auth("review"), query_string={"created_from": "July"})
    assert bad.status_code == 422
    # A range that ends before it starts is valid, and empty.
    empty = client.get("/v1/audit/summary", headers=tenant.auth("review"),
                       query_string={"created_from": "2024-07-02", "created_before": "2024-07-01"})
    assert empty.status_code == 200 and empty.get_json()["total"]["evaluated"] == 0
