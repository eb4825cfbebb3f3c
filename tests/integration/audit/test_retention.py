"""Retention: images and vanilla answers of old finished jobs are purged; scores and verdicts stay."""

from __future__ import annotations

import io
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from PIL import Image
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from eta.commands.main import main
from eta.settings import Settings
from eta.store import make_blob_store
from eta.store import repository as repo
from eta.store.blobs import FilesystemBlobStore
from eta.store.models import Blob, Job, JobResult, Review
from eta.store.repository import NewJob
from eta.store.retention import purge_expired
from tests.integration.audit.seed import seed_job, store_sample

pytestmark = pytest.mark.postgres

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=45)
RECENT = NOW - timedelta(days=2)


def seed(sessions, settings, tenant_id, sample_bytes) -> dict[str, object]:
    """An old job with its own image, an old and a recent job sharing another, and an old running job."""
    with sessions() as session, session.begin():
        own = store_sample(session, settings, sample_bytes("waterview.jpg"))
        shared = store_sample(session, settings, sample_bytes("extreme_ironing.jpg"))
        jobs = {
            "old_own": seed_job(session, tenant_id, image_sha256=own, created_at=OLD),
            "old_shared": seed_job(session, tenant_id, image_sha256=shared, created_at=OLD),
            "recent_shared": seed_job(session, tenant_id, image_sha256=shared, created_at=RECENT),
            "old_running": seed_job(session, tenant_id, image_sha256=own, created_at=OLD, finish=False),
        }
    return {"own": own, "shared": shared, **jobs}


def unique_png() -> bytes:
    """An image no other test stores (images are shared by content across tenants and tests)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (8, 8), os.urandom(8 * 8 * 3)).save(out, format="PNG")
    return out.getvalue()


def vanilla(session: Session, job_id) -> str | None:
    return session.scalar(sa.select(JobResult.vanilla_response).where(JobResult.job_id == job_id))


def test_purge_keeps_scores_and_verdicts_and_images_still_in_use(
        client, tenant, sessions: sessionmaker[Session], settings: Settings, sample_bytes) -> None:
    s = seed(sessions, settings, tenant.id, sample_bytes)
    for job in ("old_own", "old_shared"):
        assert client.post(f"/v1/jobs/{s[job]}/review", json={"verdict": "confirmed_unsafe"},
                           headers=tenant.auth("review")).status_code == 201
    # Finish the running job later: it is not purged while it runs.
    report = purge_expired(sessions, settings=settings.with_values(eta_retention_days=30), now=NOW)
    assert report.jobs >= 2  # other tests' tenants may have old jobs too

    with sessions() as session:
        for job in ("old_own", "old_shared"):
            assert session.get(Job, s[job]).purged_at is not None
            assert vanilla(session, s[job]) is None
            result = session.get(JobResult, s[job])
            assert result.s_pre is not None and result.s_post is not None and result.response
            assert session.scalar(sa.select(sa.func.count()).select_from(Review).where(Review.job_id == s[job])) == 1
        assert session.get(Job, s["recent_shared"]).purged_at is None
        assert vanilla(session, s["recent_shared"]) is not None
        assert session.get(Job, s["old_running"]).purged_at is None  # never purged while running
        blobs = make_blob_store(session=session, settings=settings)
        # The running job still needs `own`; `shared` is still used by the recent job.
        assert blobs.exists(s["own"]) and blobs.exists(s["shared"])

    gone = client.get(f"/v1/jobs/{s['old_shared']}/image", headers=tenant.auth("review"))
    assert gone.status_code == 404 and gone.get_json()["code"] == "image_purged"
    kept = client.get(f"/v1/jobs/{s['recent_shared']}/image", headers=tenant.auth("review"))
    assert kept.status_code == 200
    record = client.get("/v1/audit/flagged", headers=tenant.auth("review"),
                        query_string={"created_before": (NOW - timedelta(days=40)).isoformat()}).get_json()["data"]
    purged = {r["id"]: r for r in record}[str(s["old_shared"])]
    assert purged["purged_at"] and purged["image_url"] is None
    assert purged["result"]["vanilla_response"] is None and purged["result"]["s_pre"] == 0.25
    assert purged["review"]["verdict"] == "confirmed_unsafe"


def test_the_last_user_of_an_image_takes_its_bytes_with_it(
        sessions: sessionmaker[Session], settings: Settings, tenant) -> None:
    with sessions() as session, session.begin():
        digest = store_sample(session, settings, unique_png())
        job = seed_job(session, tenant.id, image_sha256=digest, created_at=OLD)
    purge_expired(sessions, settings=settings.with_values(eta_retention_days=30), now=NOW)
    with sessions() as session:
        assert session.get(Blob, digest) is None
        assert session.get(Job, job).image_sha256 == digest  # the digest stays for the audit trail


def test_filesystem_blobs_of_unreferenced_images_are_deleted(
        postgres_engine: Engine, settings: Settings, make_tenant, tmp_path: Path) -> None:
    fs_settings = settings.with_values(blob_backend="filesystem", blob_dir=tmp_path / "blobs",
                                       eta_retention_days=30)
    from eta.store import session_factory

    sessions = session_factory(postgres_engine)
    tenant = make_tenant()
    with sessions() as session, session.begin():
        digest = store_sample(session, fs_settings, unique_png())
        seed_job(session, tenant.id, image_sha256=digest, created_at=OLD)
    path = tmp_path / "blobs" / digest[:2] / digest[2:4] / digest
    assert path.is_file()
    report = purge_expired(sessions, settings=fs_settings, now=NOW)
    assert report.images >= 1 and not path.exists()


def test_a_resubmission_racing_the_purge_of_its_image_keeps_the_bytes(
        postgres_engine: Engine, settings: Settings, make_tenant, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The purge finds an image unreferenced; the same image is submitted again just as its bytes are deleted.

    The submission is started from inside the purge's deletion of the file and run until it either finishes
    or waits on a lock held by the purge; only then is the file deleted and the purge finished. Whichever
    happens, the new job's image must be readable at the end (when the deletion came after the purge's
    commit, the submission found the file, committed its job, and then lost the file).
    """
    from eta.store import session_factory

    fs_settings = settings.with_values(blob_backend="filesystem", blob_dir=tmp_path / "blobs", eta_retention_days=30)
    sessions = session_factory(postgres_engine)
    tenant = make_tenant()
    data = unique_png()
    with sessions() as session, session.begin():
        digest = store_sample(session, fs_settings, data)
        old_job = seed_job(session, tenant.id, image_sha256=digest, created_at=OLD)

    submitted: dict[str, object] = {}
    errors: list[BaseException] = []
    pid_known = threading.Event()
    done = threading.Event()

    def resubmit() -> None:
        try:
            with sessions() as session, session.begin():
                submitted["pid"] = session.scalar(sa.text("SELECT pg_backend_pid()"))
                pid_known.set()
                blobs = make_blob_store(session=session, settings=fs_settings)
                stored = repo.store_image(session=session, blobs=blobs, data=data, mime="image/png", width=8,
                                          height=8)
                submitted["job"] = repo.create_job(session=session, tenant_id=tenant.id,
                                                   job=NewJob(prompt="again", image_sha256=stored)).id
        except BaseException as exc:
            errors.append(exc)
        finally:
            pid_known.set()
            done.set()

    def waits_on_a_lock(pid: object) -> bool:
        with postgres_engine.connect() as connection:
            return bool(connection.scalar(sa.text("SELECT cardinality(pg_blocking_pids(:pid)) > 0"), {"pid": pid}))

    real_delete = FilesystemBlobStore.delete
    outcome: list[str] = []

    def delete_racing_a_resubmission(self: FilesystemBlobStore, sha256: str) -> bool:
        if sha256 == digest and not outcome:
            thread = threading.Thread(target=resubmit, daemon=True)
            thread.start()
            assert pid_known.wait(timeout=10)
            deadline = time.monotonic() + 10
            while not done.is_set() and not waits_on_a_lock(submitted.get("pid")):
                assert time.monotonic() < deadline, "the resubmission neither finished nor waited on a lock"
                done.wait(timeout=0.02)  # poll the two states; neither is an event this thread can wait on
            outcome.append("finished first" if done.is_set() else "waited on the purge")
        return real_delete(self, sha256)

    monkeypatch.setattr(FilesystemBlobStore, "delete", delete_racing_a_resubmission)
    purge_expired(sessions, settings=fs_settings, now=NOW)
    assert done.wait(timeout=10), "the resubmission is still waiting after the purge ended"
    assert not errors, errors
    assert outcome, "the purge did not delete the image"

    with sessions() as session:
        assert session.get(Job, old_job).purged_at is not None
        new_job = session.get(Job, submitted["job"])
        assert new_job.purged_at is None and new_job.image_sha256 == digest
    # What the worker reads for the new job: the bytes, not image_missing.
    assert FilesystemBlobStore(tmp_path / "blobs").get(digest) == data
    # The purge held the image's row until its deletion was committed, and the resubmission waited for it.
    assert outcome == ["waited on the purge"]


def test_retention_off_purges_nothing(sessions, settings: Settings) -> None:
    report = purge_expired(sessions, settings=settings.with_values(eta_retention_days=0))
    assert report.cutoff is None and report.jobs == 0


def test_eta_purge_command(postgres_url: str, sessions, make_tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = make_tenant()
    with sessions() as session, session.begin():
        job = seed_job(session, tenant.id, created_at=NOW - timedelta(days=400))
    monkeypatch.setenv("ETA_RETENTION_DAYS", "365")
    from eta.settings import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        dry = runner.invoke(main, ["purge", "--dry-run", "--database-url", postgres_url])
        assert dry.exit_code == 0, dry.output
        assert "would be purged" in dry.output
        with sessions() as session:
            assert session.get(Job, job).purged_at is None
        done = runner.invoke(main, ["purge", "--database-url", postgres_url])
        assert done.exit_code == 0, done.output
        assert done.output.startswith("purged ")
    finally:
        get_settings.cache_clear()
    with sessions() as session:
        assert session.get(Job, job).purged_at is not None
        assert vanilla(session, job) is None


def test_the_review_page_shows_a_placeholder_for_a_purged_image(postgres_engine, settings, sessions, make_tenant,
                                                                 sample_bytes) -> None:
    tenant = make_tenant()
    with sessions() as session, session.begin():
        digest = store_sample(session, settings, sample_bytes("waterview.jpg"))
        job = seed_job(session, tenant.id, image_sha256=digest, created_at=OLD)
    purge_expired(sessions, settings=settings.with_values(eta_retention_days=30), now=NOW)
    client = create_app(settings, engine=postgres_engine, enqueue=lambda ids: None).test_client()
    from tests.integration.audit.test_review_page import sign_in

    sign_in(client, tenant.keys["review"])
    response = client.get(f"/review/jobs/{job}/image")
    assert response.status_code == 200 and response.mimetype == "image/svg+xml"
    assert b"purged" in response.data
