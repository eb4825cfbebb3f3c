"""Submitting batches: one transaction, idempotency keys, tenant scoping, per-batch listings and counts."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from eta.store import repository as repo
from eta.store.errors import IdempotencyConflictError, InvalidCursorError
from eta.store.lifecycle import BatchStatus, JobStatus
from eta.store.models import Batch, Job, ReviewVerdict
from eta.store.repository import NewJob
from tests.integration.store.factories import advance, record, submit


def test_batch_and_jobs_are_created_together(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    jobs = [
        NewJob(prompt="describe", custom_id="a", params={"policy": "both"}),
        NewJob(prompt="again", custom_id="b", seed=1234),
    ]
    with sessions() as session, session.begin():
        submitted = repo.create_batch_with_jobs(
            session=session,
            tenant_id=tenant_id,
            jobs=jobs,
            params={"tau_pre": 0.16},
            callback_url="https://example.test/hook",
        )
    assert submitted.created and len(submitted.job_ids) == 2
    with sessions() as session:
        batch = repo.get_batch(session=session, tenant_id=tenant_id, batch_id=submitted.batch.id)
        assert batch is not None
        assert batch.status == BatchStatus.IN_PROGRESS
        assert batch.params == {"tau_pre": 0.16}
        page = repo.list_batch_jobs(session=session, tenant_id=tenant_id, batch_id=batch.id)
        assert [job.id for job in page.items] == submitted.job_ids
        assert [(job.custom_id, job.position, job.status) for job in page.items] == [
            ("a", 0, JobStatus.QUEUED),
            ("b", 1, JobStatus.QUEUED),
        ]
        assert page.items[0].params == {"policy": "both"}
        assert page.items[1].seed == 1234
        # A seed is drawn for a job that did not bring one, so its result can be reproduced.
        assert isinstance(page.items[0].seed, int)


def test_a_bad_item_leaves_nothing_half_written(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    jobs = [NewJob(prompt="x", custom_id="same"), NewJob(prompt="y", custom_id="same")]
    with sessions() as session, pytest.raises(IntegrityError), session.begin():
        repo.create_batch_with_jobs(session=session, tenant_id=tenant_id, jobs=jobs)
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).where(Batch.tenant_id == tenant_id)) == 0
        assert session.scalar(sa.select(sa.func.count()).where(Job.tenant_id == tenant_id)) == 0


def test_idempotency_key_replays_the_first_batch(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        first = submit(session, tenant_id, count=3, idempotency_key="k1", request_hash="h1")
    with sessions() as session, session.begin():
        again = submit(session, tenant_id, count=3, idempotency_key="k1", request_hash="h1")
        assert not again.created
        assert (again.batch.id, again.job_ids) == (first.batch.id, first.job_ids)
        with pytest.raises(IdempotencyConflictError):
            submit(session, tenant_id, count=3, idempotency_key="k1", request_hash="other body")


def test_the_same_key_in_another_tenant_is_another_batch(
    sessions: sessionmaker[Session], make_tenant: Callable[[], uuid.UUID]
) -> None:
    first_tenant, second_tenant = make_tenant(), make_tenant()
    with sessions() as session, session.begin():
        first = submit(session, first_tenant, idempotency_key="k", request_hash="h")
        second = submit(session, second_tenant, idempotency_key="k", request_hash="h")
    assert first.created and second.created and first.batch.id != second.batch.id


def test_two_identical_requests_racing_create_one_batch(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    barrier = threading.Barrier(2)
    results: list[repo.SubmittedBatch] = []
    errors: list[BaseException] = []

    def post() -> None:
        try:
            with sessions() as session, session.begin():
                barrier.wait(timeout=10)
                results.append(submit(session, tenant_id, count=5, idempotency_key="race", request_hash="h"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert sorted(result.created for result in results) == [False, True]
    assert results[0].batch.id == results[1].batch.id
    assert results[0].job_ids == results[1].job_ids
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).where(Job.tenant_id == tenant_id)) == 5


def test_another_tenants_ids_find_nothing(
    sessions: sessionmaker[Session], make_tenant: Callable[[], uuid.UUID]
) -> None:
    owner, intruder = make_tenant(), make_tenant()
    with sessions() as session, session.begin():
        submitted = submit(session, owner, count=2)
        job_id = submitted.job_ids[0]
        advance(session, job_id, JobStatus.PRE_EVALUATING)
        assert record(session, JobStatus.PRE_EVALUATING, repo.pre_evaluation_result(
            job_id=job_id, s_pre=0.2, pre_unsafe=True, tau_pre=0.16, elapsed_ms=3.0))
    batch_id = submitted.batch.id
    with sessions() as session, session.begin():
        assert repo.get_job(session=session, tenant_id=intruder, job_id=job_id) is None
        assert repo.get_batch(session=session, tenant_id=intruder, batch_id=batch_id) is None
        assert repo.get_job_results(session=session, tenant_id=intruder, job_ids=[job_id]).get(job_id) is None
        assert repo.list_batch_jobs(session=session, tenant_id=intruder, batch_id=batch_id).items == []
        assert set(repo.count_jobs_by_status(session=session, tenant_id=intruder, batch_id=batch_id).values()) == {0}
        assert not repo.cancel_job(session=session, tenant_id=intruder, job_id=job_id)
        assert not repo.cancel_batch(session=session, tenant_id=intruder, batch_id=batch_id)
        verdict = ReviewVerdict.CONFIRMED_UNSAFE
        assert repo.add_review(session=session, tenant_id=intruder, job_id=job_id, verdict=verdict) is None
        assert repo.list_review_history(session=session, tenant_id=intruder, job_id=job_id) == []
        # The owner still sees everything, untouched.
        job = repo.get_job(session=session, tenant_id=owner, job_id=job_id)
        assert job is not None and job.status == JobStatus.PRE_EVALUATING
        assert repo.get_job_results(session=session, tenant_id=owner, job_ids=[job_id]).get(job_id) is not None


def test_batch_listing_pages_in_request_order(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        submitted = submit(session, tenant_id, count=7)
    seen: list[uuid.UUID] = []
    cursor = None
    with sessions() as session:
        while True:
            page = repo.list_batch_jobs(
                session=session, tenant_id=tenant_id, batch_id=submitted.batch.id, limit=3, cursor=cursor
            )
            seen.extend(job.id for job in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == submitted.job_ids
        with pytest.raises(InvalidCursorError):
            repo.list_batch_jobs(
                session=session, tenant_id=tenant_id, batch_id=submitted.batch.id, cursor="not-a-cursor"
            )


def test_counts_by_status(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        submitted = submit(session, tenant_id, count=5)
        advance(session, submitted.job_ids[0], JobStatus.GENERATING)
        advance(session, submitted.job_ids[1], JobStatus.GENERATING)
        repo.cancel_job(session=session, tenant_id=tenant_id, job_id=submitted.job_ids[2])
    with sessions() as session:
        counts = repo.count_jobs_by_status(session=session, tenant_id=tenant_id, batch_id=submitted.batch.id)
    assert counts == {
        JobStatus.QUEUED: 2,
        JobStatus.PRE_EVALUATING: 0,
        JobStatus.GENERATING: 2,
        JobStatus.POST_EVALUATING: 0,
        JobStatus.SUCCEEDED: 0,
        JobStatus.FAILED: 0,
        JobStatus.CANCELLED: 1,
    }


def test_a_single_job_outside_any_batch(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        job = repo.create_job(session=session, tenant_id=tenant_id, job=NewJob(prompt="hello", seed=7))
    with sessions() as session:
        found = repo.get_job(session=session, tenant_id=tenant_id, job_id=job.id)
        assert found is not None
        assert (found.batch_id, found.position, found.seed, found.status) == (None, None, 7, JobStatus.QUEUED)
