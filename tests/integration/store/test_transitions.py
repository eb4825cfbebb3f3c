"""Job status changes are compare-and-set: forward only, never out of a terminal state, one racer wins."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from eta.store import repository as repo
from eta.store.errors import InvalidTransitionError
from eta.store.lifecycle import BatchStatus, JobStatus
from tests.integration.store.factories import advance, submit


def _race(sessions: sessionmaker[Session], attempt: Callable[[Session], bool], racers: int = 2) -> list[bool]:
    """Run `attempt` in `racers` threads released together, each in its own transaction."""
    barrier = threading.Barrier(racers)
    outcomes: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            with sessions() as session, session.begin():
                barrier.wait(timeout=10)
                won = attempt(session)
            with lock:
                outcomes.append(won)
        except BaseException as exc:  # reported below, so a failing thread fails the test
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return outcomes


def test_two_workers_racing_on_one_transition_exactly_one_wins(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID
) -> None:
    with sessions() as session, session.begin():
        job_ids = submit(session, tenant_id, count=8).job_ids
    for job_id in job_ids:
        outcomes = _race(
            sessions,
            lambda s, job_id=job_id: repo.transition_job(
                session=s, job_id=job_id, expected=JobStatus.QUEUED, to=JobStatus.PRE_EVALUATING
            ),
        )
        assert sorted(outcomes) == [False, True]
        with sessions() as session:
            job = repo.get_job(session=session, tenant_id=tenant_id, job_id=job_id)
            assert job is not None
            assert job.status == JobStatus.PRE_EVALUATING
            assert job.attempts == 1


def test_cancel_racing_with_a_worker_exactly_one_wins(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        job_id = submit(session, tenant_id).job_ids[0]
        advance(session, job_id, JobStatus.POST_EVALUATING)
    calls = iter(
        [
            lambda s: repo.transition_job(
                session=s, job_id=job_id, expected=JobStatus.POST_EVALUATING, to=JobStatus.SUCCEEDED
            ),
            lambda s: repo.cancel_job(session=s, tenant_id=tenant_id, job_id=job_id),
        ]
    )
    lock = threading.Lock()

    def attempt(session: Session) -> bool:
        with lock:
            call = next(calls)
        return call(session)

    assert sorted(_race(sessions, attempt)) == [False, True]
    with sessions() as session:
        job = repo.get_job(session=session, tenant_id=tenant_id, job_id=job_id)
        assert job is not None and job.status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED)
        assert job.finished_at is not None


def test_forward_path_stamps_each_stage(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        job_id = submit(session, tenant_id).job_ids[0]
        advance(session, job_id, JobStatus.POST_EVALUATING)
        assert repo.transition_job(
            session=session, job_id=job_id, expected=JobStatus.POST_EVALUATING, to=JobStatus.SUCCEEDED
        )
    with sessions() as session:
        job = repo.get_job(session=session, tenant_id=tenant_id, job_id=job_id)
        assert job is not None
        assert job.status == JobStatus.SUCCEEDED
        stamps = [job.created_at, job.pre_evaluating_at, job.generating_at, job.post_evaluating_at, job.finished_at]
        assert all(stamp is not None and stamp.tzinfo is not None for stamp in stamps)
        assert stamps == sorted(stamps)  # type: ignore[type-var]


def test_a_stale_expected_status_changes_nothing(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        job_id = submit(session, tenant_id).job_ids[0]
        advance(session, job_id, JobStatus.GENERATING)
        # A redelivered pre-evaluation message tries to start its stage again.
        assert not repo.transition_job(
            session=session, job_id=job_id, expected=JobStatus.QUEUED, to=JobStatus.PRE_EVALUATING
        )
        job = next(iter(repo.get_jobs_any_tenant(session=session, job_ids=[job_id])), None)
        assert job is not None and job.status == JobStatus.GENERATING


@pytest.mark.parametrize(
    ("expected", "to"),
    [
        (JobStatus.GENERATING, JobStatus.PRE_EVALUATING),
        (JobStatus.POST_EVALUATING, JobStatus.QUEUED),
        (JobStatus.QUEUED, JobStatus.SUCCEEDED),
        (JobStatus.SUCCEEDED, JobStatus.FAILED),
        (JobStatus.FAILED, JobStatus.QUEUED),
        (JobStatus.CANCELLED, JobStatus.GENERATING),
    ],
)
def test_backwards_or_out_of_a_terminal_state_is_refused(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID, expected: JobStatus, to: JobStatus
) -> None:
    with sessions() as session, session.begin():
        job_id = submit(session, tenant_id).job_ids[0]
        with pytest.raises(InvalidTransitionError):
            repo.transition_job(session=session, job_id=job_id, expected=expected, to=to)


def test_terminal_job_stays_terminal(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        job_id = submit(session, tenant_id).job_ids[0]
        advance(session, job_id, JobStatus.GENERATING)
        assert repo.transition_job(
            session=session,
            job_id=job_id,
            expected=JobStatus.GENERATING,
            to=JobStatus.FAILED,
            error_code="model_error",
            error_message="out of memory",
        )
        assert not repo.cancel_job(session=session, tenant_id=tenant_id, job_id=job_id)
        for stage in (JobStatus.PRE_EVALUATING, JobStatus.GENERATING, JobStatus.POST_EVALUATING):
            assert not repo.transition_job(session=session, job_id=job_id, expected=stage, to=JobStatus.CANCELLED)
    with sessions() as session:
        job = repo.get_job(session=session, tenant_id=tenant_id, job_id=job_id)
        assert job is not None
        assert (job.status, job.error_code, job.error_message) == (JobStatus.FAILED, "model_error", "out of memory")


def test_batch_completes_once_when_its_last_job_ends(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        submitted = submit(session, tenant_id, count=2)
    batch_id, (first, second) = submitted.batch.id, submitted.job_ids
    with sessions() as session, session.begin():
        assert repo.cancel_job(session=session, tenant_id=tenant_id, job_id=first)
    with sessions() as session, session.begin():
        assert not repo.complete_batch_if_finished(session=session, batch_id=batch_id)
        advance(session, second, JobStatus.POST_EVALUATING)
        assert repo.transition_job(
            session=session, job_id=second, expected=JobStatus.POST_EVALUATING, to=JobStatus.SUCCEEDED
        )
    # Two workers both see the batch done after their commits: one of them fires the callback.
    outcomes = _race(sessions, lambda s: repo.complete_batch_if_finished(session=s, batch_id=batch_id))
    assert sorted(outcomes) == [False, True]
    with sessions() as session, session.begin():
        batch = repo.get_batch(session=session, tenant_id=tenant_id, batch_id=batch_id)
        assert batch is not None and batch.status == BatchStatus.COMPLETED and batch.finished_at is not None
        assert repo.mark_batch_callback_sent(session=session, batch_id=batch_id)
        assert not repo.mark_batch_callback_sent(session=session, batch_id=batch_id)


def test_cancel_batch_cancels_only_jobs_still_running(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        submitted = submit(session, tenant_id, count=3)
        done, running, queued = submitted.job_ids
        advance(session, done, JobStatus.POST_EVALUATING)
        repo.transition_job(session=session, job_id=done, expected=JobStatus.POST_EVALUATING, to=JobStatus.SUCCEEDED)
        advance(session, running, JobStatus.GENERATING)
    with sessions() as session, session.begin():
        assert repo.cancel_batch(session=session, tenant_id=tenant_id, batch_id=submitted.batch.id)
        assert not repo.cancel_batch(session=session, tenant_id=tenant_id, batch_id=submitted.batch.id)
    with sessions() as session:
        counts = repo.count_jobs_by_status(session=session, tenant_id=tenant_id, batch_id=submitted.batch.id)
        assert counts[JobStatus.SUCCEEDED] == 1
        assert counts[JobStatus.CANCELLED] == 2
        batch = repo.get_batch(session=session, tenant_id=tenant_id, batch_id=submitted.batch.id)
        assert batch is not None and batch.status == BatchStatus.CANCELLED
