"""GET /v1/audit/export: the same filters as the listing, JSONL and CSV, streamed in constant memory."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from eta.store import repository as repo
from eta.store import session_factory
from eta.store.models import ApiKeyRole
from tests.integration.api.conftest import Tenant
from tests.integration.audit.seed import Scores, seed_job

pytestmark = pytest.mark.postgres

T0 = datetime(2024, 5, 1, tzinfo=UTC)
BULK_ROWS = 100_000


def export(client, tenant, role: str = "review", **params: Any):
    query = {key: str(value).lower() if isinstance(value, bool) else value for key, value in params.items()}
    return client.get("/v1/audit/export", query_string=query, headers=tenant.auth(role))


def jsonl(response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/x-ndjson"
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def csv_rows(response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "text/csv"
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


@pytest.fixture
def seeded(client, tenant, sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as session, session.begin():
        jobs = {
            "old": seed_job(session, tenant.id, created_at=T0, custom_id="old",
                            prompt="=HYPERLINK(\"http://evil.example\")",
                            scores=Scores(s_pre=0.30, s_post=0.50, s_post_final=0.50)),
            "mid": seed_job(session, tenant.id, created_at=T0 + timedelta(hours=1), custom_id="mid",
                            prompt='She said "hi", then\nleft; ok?',
                            scores=Scores(s_pre=0.20, s_post=-0.25, s_post_final=0.40)),
            "new": seed_job(session, tenant.id, created_at=T0 + timedelta(hours=2), custom_id="new",
                            scores=Scores(s_pre=None, s_post=0.02, s_post_final=0.03)),
        }
        seed_job(session, tenant.id, created_at=T0 + timedelta(hours=3), custom_id="safe",
                 scores=Scores(s_pre=0.01, s_post=0.9, s_post_final=0.9))
    response = client.post(f"/v1/jobs/{jobs['mid']}/review", json={"verdict": "false_positive", "note": "benign"},
                           headers=tenant.auth("review"))
    assert response.status_code == 201
    return {name: str(job_id) for name, job_id in jobs.items()}


def test_jsonl_lines_are_the_listing_records(client, tenant, seeded) -> None:
    lines = jsonl(export(client, tenant))
    assert [line["custom_id"] for line in lines] == ["new", "mid", "old"]
    listed = client.get("/v1/audit/flagged", headers=tenant.auth("review")).get_json()["data"]
    assert lines == listed
    assert lines[1]["review"]["verdict"] == "false_positive"
    assert lines[1]["result"]["vanilla_response"].startswith("Here is")


def test_csv_has_a_header_flat_columns_and_defuses_formulas(client, tenant, seeded) -> None:
    response = export(client, tenant, format="csv")
    assert response.headers["Content-Disposition"].startswith('attachment; filename="eta-flagged-')
    rows = csv_rows(response)
    assert [row["custom_id"] for row in rows] == ["new", "mid", "old"]
    new, mid, old = rows
    assert mid["prompt"] == 'She said "hi", then\nleft; ok?'  # quoting round-trips
    assert float(mid["s_post"]) == -0.25 and float(mid["tau_post"]) == 0.06 and mid["post_unsafe"] == "true"
    assert mid["review_verdict"] == "false_positive" and mid["review_note"] == "benign"
    assert mid["flag_reasons"] == "image_unsafe;response_unsafe"
    assert mid["vanilla_response"].startswith("Here is")
    assert new["s_pre"] == "" and new["aligned"] == "true"
    assert old["prompt"] == "'=HYPERLINK(\"http://evil.example\")"  # text, not a formula
    assert "fingerprint" not in old and old["fingerprint_sha256"] == "f" * 64


def test_filters_roles_and_tenants(client, tenant, make_tenant, seeded) -> None:
    assert [r["custom_id"] for r in jsonl(export(client, tenant, s_pre_min=0.25))] == ["old"]
    assert [r["custom_id"] for r in jsonl(export(client, tenant, reviewed=True))] == ["mid"]
    assert [r["custom_id"] for r in csv_rows(export(client, tenant, verdict="false_positive", format="csv"))] == [
        "mid"]
    assert [r["custom_id"] for r in jsonl(export(client, tenant, custom_id="new"))] == ["new"]
    assert [r["custom_id"] for r in jsonl(export(client, tenant, aligned=False))] == ["old"]
    assert [r["custom_id"] for r in jsonl(export(client, tenant, created_before="2024-05-01T00:30:00Z"))] == ["old"]

    submit_lines = jsonl(export(client, tenant, role="submit"))
    assert len(submit_lines) == 3 and all("vanilla_response" not in r["result"] for r in submit_lines)
    assert "vanilla_response" not in csv_rows(export(client, tenant, role="submit", format="csv"))[0]

    assert jsonl(export(client, make_tenant())) == []
    assert client.get("/v1/audit/export").status_code == 401
    bad = export(client, tenant, format="xml")
    assert bad.status_code == 422 and bad.get_json()["errors"][0]["field"] == "format"


def _bulk_insert(sessions: sessionmaker[Session], tenant_id, rows: int) -> None:
    """`rows` flagged jobs with results, generated by the server (fast, and no list of rows in the test)."""
    params = {"tenant": tenant_id, "n": rows, "t0": T0}
    with sessions() as session, session.begin():
        session.execute(sa.text("""
            INSERT INTO jobs (id, tenant_id, custom_id, prompt, params, seed, status, flagged, attempts,
                              created_at, updated_at, status_changed_at, finished_at)
            SELECT gen_random_uuid(), :tenant, 'bulk-' || i,
                   'Bulk prompt ' || i || ': ' || repeat('describe the picture in detail, ', 4),
                   '{}'::jsonb, i, 'succeeded', true, 1,
                   :t0 - i * interval '1 second', :t0, :t0, :t0
            FROM generate_series(1, :n) AS i
        """), params)
        session.execute(sa.text("""
            INSERT INTO job_results (job_id, s_pre, pre_unsafe, tau_pre, vanilla_response, s_post, post_unsafe,
                                     tau_post, policy, aligned, response, trace, fingerprint, fingerprint_sha256,
                                     s_post_final, flag_reasons, timings, created_at, updated_at)
            SELECT id, 0.2, true, 0.16, repeat('a vanilla answer that was replaced. ', 5), 0.01, true, 0.06, 'both',
                   true, repeat('As an AI assistant I would rather not. ', 4), '[]'::jsonb,
                   '{"models": {"vlm": "tiny"}}'::jsonb, repeat('f', 64), 0.3,
                   '["image_unsafe", "response_unsafe"]'::jsonb, '{}'::jsonb, :t0, :t0
            FROM jobs WHERE tenant_id = :tenant
        """), params)


@pytest.fixture(scope="module")
def bulk_tenant(postgres_engine: Engine) -> Tenant:
    """A tenant with BULK_ROWS flagged jobs (built once for the module) and a review key."""
    sessions = session_factory(postgres_engine)
    with sessions() as session, session.begin():
        owner = repo.create_tenant(session=session, name=f"bulk-{uuid.uuid4().hex[:10]}")
        _, key = repo.create_api_key(session=session, tenant_id=owner.id, role=ApiKeyRole.REVIEW)
    _bulk_insert(sessions, owner.id, BULK_ROWS)
    return Tenant(owner.id, {"review": key})


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_100k_rows_stream_in_constant_memory(client, bulk_tenant: Tenant, fmt: str) -> None:
    """Resident memory is sampled while the export streams. Fetching the rows at once would grow it by the
    size of the result set (libpq's buffers, invisible to tracemalloc, count here); buffering the body by
    the size of the export. Both are several times the bound."""
    peak_rss = baseline_rss = _rss_bytes()
    streaming = threading.Event()

    def sample() -> None:
        nonlocal peak_rss
        while streaming.is_set():
            peak_rss = max(peak_rss, _rss_bytes())
            time.sleep(0.005)

    started = time.perf_counter()
    response = client.get("/v1/audit/export", query_string={"format": fmt}, headers=bulk_tenant.auth("review"),
                          buffered=False)
    assert response.status_code == 200
    streaming.set()
    sampler = threading.Thread(target=sample)
    sampler.start()
    total_bytes = lines = chunks = largest_chunk = 0
    try:
        for chunk in response.response:
            total_bytes += len(chunk)
            lines += chunk.count(b"\n")
            chunks += 1
            largest_chunk = max(largest_chunk, len(chunk))
    finally:
        streaming.clear()
        sampler.join()
        response.close()
    elapsed = time.perf_counter() - started

    rss_growth = peak_rss - baseline_rss
    print(f"\nexport {fmt}: {BULK_ROWS} rows, {total_bytes / 2**20:.1f} MiB in {chunks} chunks, {elapsed:.1f} s; "
          f"peak RSS growth {rss_growth / 2**20:.1f} MiB; largest chunk {largest_chunk / 1024:.0f} KiB")
    assert lines == BULK_ROWS + (1 if fmt == "csv" else 0)
    assert total_bytes > 60 * 2**20  # several times the bound below
    assert largest_chunk < 256 * 1024  # the body really went out piece by piece
    assert rss_growth < 24 * 2**20
