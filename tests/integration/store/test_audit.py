"""Flagged-jobs listing: filters, tenant scoping, keyset pagination stable under concurrent inserts."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from eta.store import repository as repo
from eta.store.errors import InvalidCursorError
from eta.store.models import ReviewVerdict
from eta.store.repository import AuditFilter
from tests.integration.store.factories import insert_batch, insert_finished_job

# In the past, so rows inserted during a test (stamped now) are the newest.
T0 = datetime(2020, 1, 1, tzinfo=UTC)


def _all_pages(
    session: Session, tenant_id: uuid.UUID, filters: AuditFilter | None = None, limit: int = 50
) -> list[uuid.UUID]:
    seen: list[uuid.UUID] = []
    cursor = None
    while True:
        page = repo.list_flagged_jobs(session=session, tenant_id=tenant_id, filters=filters, limit=limit, cursor=cursor)
        seen.extend(item.job.id for item in page.items)
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


def test_only_flagged_jobs_of_the_tenant_newest_first(
    sessions: sessionmaker[Session], make_tenant: Callable[[], uuid.UUID]
) -> None:
    tenant, other = make_tenant(), make_tenant()
    with sessions() as session, session.begin():
        flagged = [insert_finished_job(session, tenant, created_at=T0 + timedelta(minutes=i)) for i in range(5)]
        insert_finished_job(session, tenant, created_at=T0 + timedelta(minutes=9), flagged=False)
        insert_finished_job(session, other, created_at=T0 + timedelta(minutes=9))
    with sessions() as session:
        assert _all_pages(session, tenant, limit=2) == flagged[::-1]
        page = repo.list_flagged_jobs(session=session, tenant_id=tenant, limit=10)
        assert page.next_cursor is None and len(page.items) == 5


def test_filters(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        batch_id = insert_batch(session, tenant_id)
        old = insert_finished_job(session, tenant_id, created_at=T0, aligned=False, s_pre=0.10, s_post=0.5)
        aligned = insert_finished_job(
            session, tenant_id, created_at=T0 + timedelta(hours=1), aligned=True, s_pre=0.30, s_post=0.01
        )
        in_batch = insert_finished_job(
            session,
            tenant_id,
            created_at=T0 + timedelta(hours=2),
            batch_id=batch_id,
            aligned=True,
            s_pre=0.20,
            s_post=0.02,
            s_post_final=0.7,
        )
        repo.add_review(session=session, tenant_id=tenant_id, job_id=aligned, verdict=ReviewVerdict.NEEDS_ESCALATION)
        repo.add_review(
            session=session,
            tenant_id=tenant_id,
            job_id=aligned,
            verdict=ReviewVerdict.CONFIRMED_UNSAFE,
            now=datetime.now(UTC) + timedelta(seconds=1),
        )
        repo.add_review(session=session, tenant_id=tenant_id, job_id=in_batch, verdict=ReviewVerdict.FALSE_POSITIVE)

    def ids(**filters: object) -> list[uuid.UUID]:
        with sessions() as session:
            return _all_pages(session, tenant_id, AuditFilter(**filters))  # type: ignore[arg-type]

    assert ids() == [in_batch, aligned, old]
    assert ids(batch_id=batch_id) == [in_batch]
    assert ids(aligned=True) == [in_batch, aligned]
    assert ids(aligned=False) == [old]
    assert ids(reviewed=False) == [old]
    assert ids(reviewed=True) == [in_batch, aligned]
    assert ids(verdict=ReviewVerdict.CONFIRMED_UNSAFE) == [aligned]  # the newest verdict counts
    assert ids(verdict=ReviewVerdict.NEEDS_ESCALATION) == []
    assert ids(created_from=T0 + timedelta(hours=1), created_before=T0 + timedelta(hours=2)) == [aligned]
    assert ids(s_pre_min=0.15) == [in_batch, aligned]
    assert ids(s_pre_min=0.15, s_pre_max=0.25) == [in_batch]
    assert ids(s_post_max=0.015) == [aligned]
    assert ids(s_post_final_min=0.5) == [in_batch]

    with sessions() as session:
        items = repo.list_flagged_jobs(session=session, tenant_id=tenant_id).items
        assert [item.latest_verdict for item in items] == [
            ReviewVerdict.FALSE_POSITIVE, ReviewVerdict.CONFIRMED_UNSAFE, None]
        assert items[0].result.s_post_final == 0.7
        history = repo.list_review_history(session=session, tenant_id=tenant_id, job_id=aligned)
        reviews = [entry.review for entry in history]
        assert [review.verdict for review in reviews] == [
            ReviewVerdict.NEEDS_ESCALATION, ReviewVerdict.CONFIRMED_UNSAFE]


def test_pagination_is_stable_under_concurrent_inserts(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        # Several rows share a timestamp, so the id tie-breaker is exercised too.
        existing = {
            insert_finished_job(session, tenant_id, created_at=T0 + timedelta(seconds=i // 3)) for i in range(60)
        }
    stop = threading.Event()
    inserted: list[uuid.UUID] = []
    errors: list[BaseException] = []

    def keep_inserting() -> None:
        try:
            while not stop.is_set():
                with sessions() as session, session.begin():
                    inserted.append(insert_finished_job(session, tenant_id, created_at=datetime.now(UTC)))
                stop.wait(0.002)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=keep_inserting)
    writer.start()
    try:
        seen: list[tuple[datetime, uuid.UUID]] = []
        cursor = None
        with sessions() as session:
            while True:
                with session.begin():
                    page = repo.list_flagged_jobs(session=session, tenant_id=tenant_id, limit=7, cursor=cursor)
                seen.extend((item.job.created_at, item.job.id) for item in page.items)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
                # Let the writer land rows between pages (an OFFSET listing would now shift).
                while len(inserted) < len(seen) // 7 and not errors:
                    stop.wait(0.001)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not errors, errors
    assert inserted, "the writer never ran"
    ids = [row_id for _, row_id in seen]
    assert len(ids) == len(set(ids)), "a row was served twice"
    assert existing <= set(ids), "a row that existed before paging began was skipped"
    keys = [(created_at, row_id.hex) for created_at, row_id in seen]
    assert keys == sorted(keys, reverse=True)


def test_a_foreign_cursor_is_refused(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session:
        for cursor in ("garbage!", "eyJ4IjoxfQ", "WyJwIiwzXQ"):
            with pytest.raises(InvalidCursorError):
                repo.list_flagged_jobs(session=session, tenant_id=tenant_id, cursor=cursor)
