"""The preset a flagged job ran with and the URL its image came from, in every audit view: the listing, both
exports and the review page; and a reviewer's verdict as an administrative event."""

from __future__ import annotations

import csv
import io
import json

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from eta.store.models import Job

from .seed import Scores, seed_job, store_sample
from .test_review_page import sign_in

pytestmark = pytest.mark.postgres

SOURCE = "https://bucket.example/a.jpg?X-Amz-Signature=abc"


@pytest.fixture
def job(sessions: sessionmaker[Session], tenant, settings, sample_bytes) -> str:
    with sessions() as session, session.begin():
        digest = store_sample(session, settings, sample_bytes("waterview.jpg"))
        job_id = seed_job(session, tenant.id, image_sha256=digest, custom_id="by-ref",
                          scores=Scores(s_pre=0.21, s_post=0.01, s_post_final=0.4))
        session.execute(sa.update(Job).where(Job.id == job_id)
                        .values(preset_name="nightly", preset_version=2, image_url=SOURCE))
        return str(job_id)


def test_listing_and_exports_carry_the_preset_and_the_source(client, tenant, job) -> None:
    [record] = client.get("/v1/audit/flagged", headers=tenant.auth()).json["data"]
    assert record["preset"] == {"name": "nightly", "version": 2} and record["image_source_url"] == SOURCE
    assert record["image_url"] == f"/v1/jobs/{job}/image"  # the stored bytes, as before
    line = client.get("/v1/audit/export?format=jsonl", headers=tenant.auth()).get_data(as_text=True).splitlines()[0]
    assert json.loads(line)["preset"] == {"name": "nightly", "version": 2}
    rows = list(csv.DictReader(io.StringIO(client.get("/v1/audit/export?format=csv",
                                                      headers=tenant.auth()).get_data(as_text=True))))
    assert (rows[0]["preset_name"], rows[0]["preset_version"], rows[0]["image_source_url"]) == ("nightly", "2", SOURCE)


def test_the_review_page_shows_them_and_a_verdict_is_an_admin_event(client, tenant, job) -> None:
    sign_in(client, tenant.keys["review"])
    page = client.get(f"/review/jobs/{job}").get_data(as_text=True)
    assert "nightly@2" in page and "bucket.example/a.jpg" in page
    verdict = client.post(f"/v1/jobs/{job}/review", json={"verdict": "false_positive", "note": "fine"},
                          headers=tenant.auth("review"))
    assert verdict.status_code == 201, verdict.json
    [event] = client.get("/v1/admin/events", headers=tenant.auth("admin")).json["data"]
    assert (event["action"], event["subject"], event["details"]["verdict"]) == ("review_verdict", job,
                                                                                   "false_positive")
    assert event["actor"] == "_".join(tenant.keys["review"].split("_")[:2])  # the visible prefix
