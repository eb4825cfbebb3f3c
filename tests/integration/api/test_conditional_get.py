"""Conditional GETs: job and batch documents carry an ETag; If-None-Match answers 304 until they change."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from eta.store import repository as repo
from eta.store import session_factory
from eta.store.lifecycle import JobStatus

pytestmark = pytest.mark.postgres


def test_a_job_answers_304_until_it_changes(client, tenant, postgres_engine):
    job_id = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "hi"}).json["id"]
    first = client.get(f"/v1/jobs/{job_id}", headers=tenant.auth())
    etag = first.headers["ETag"]
    assert first.status_code == 200 and etag.startswith('"')

    again = client.get(f"/v1/jobs/{job_id}", headers={**tenant.auth(), "If-None-Match": etag})
    assert again.status_code == 304 and again.data == b"" and again.headers["ETag"] == etag

    with session_factory(postgres_engine)() as session, session.begin():
        assert repo.transition_job(session=session, job_id=uuid.UUID(job_id), expected=JobStatus.QUEUED,
                                   to=JobStatus.PRE_EVALUATING)
    changed = client.get(f"/v1/jobs/{job_id}", headers={**tenant.auth(), "If-None-Match": etag})
    assert changed.status_code == 200 and changed.json["status"] == "pre_evaluating"
    assert changed.headers["ETag"] != etag


def test_the_tag_depends_on_what_the_caller_may_see(client, tenant):
    job_id = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "hi"}).json["id"]
    as_submitter = client.get(f"/v1/jobs/{job_id}", headers=tenant.auth()).headers["ETag"]
    as_reviewer = client.get(f"/v1/jobs/{job_id}", headers=tenant.auth("review"))
    assert as_reviewer.status_code == 200 and as_reviewer.headers["ETag"] != as_submitter
    stale = client.get(f"/v1/jobs/{job_id}", headers={**tenant.auth("review"), "If-None-Match": as_submitter})
    assert stale.status_code == 200


def test_another_tenants_job_is_404_with_or_without_a_tag(client, tenant, make_tenant):
    job_id = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "hi"}).json["id"]
    etag = client.get(f"/v1/jobs/{job_id}", headers=tenant.auth()).headers["ETag"]
    other = make_tenant()
    assert client.get(f"/v1/jobs/{job_id}", headers={**other.auth(), "If-None-Match": etag}).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}", headers={**other.auth(), "If-None-Match": "*"}).status_code == 404


def test_a_batch_answers_304_until_its_counts_change(client, tenant, postgres_engine):
    batch = client.post("/v1/batches", headers=tenant.auth(),
                        json={"items": [{"prompt": "a"}, {"prompt": "b"}]}).json
    first = client.get(f"/v1/batches/{batch['id']}", headers=tenant.auth())
    etag = first.headers["ETag"]
    assert client.get(f"/v1/batches/{batch['id']}",
                      headers={**tenant.auth(), "If-None-Match": etag}).status_code == 304
    with postgres_engine.begin() as connection:
        connection.execute(sa.text("UPDATE jobs SET status = 'cancelled' WHERE batch_id = :b AND position = 0"),
                           {"b": batch["id"]})
    changed = client.get(f"/v1/batches/{batch['id']}", headers={**tenant.auth(), "If-None-Match": etag})
    assert changed.status_code == 200 and changed.json["counts"]["cancelled"] == 1
