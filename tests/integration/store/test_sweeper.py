"""The sweeper's queries: jobs stalled in a stage, and claiming one for re-enqueueing exactly once."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from eta.store import repository as repo
from eta.store.lifecycle import JobStatus
from eta.store.models import utcnow
from tests.integration.store.factories import advance, submit

pytestmark = pytest.mark.usefixtures("empty_db")


def test_finds_jobs_stalled_longer_than_their_stage_timeout(
    sessions: sessionmaker[Session], tenant_id: uuid.UUID
) -> None:
    with sessions() as session, session.begin():
        queued, generating, post, done = submit(session, tenant_id, count=4).job_ids
        advance(session, generating, JobStatus.GENERATING)
        advance(session, post, JobStatus.POST_EVALUATING)
        advance(session, done, JobStatus.POST_EVALUATING)
        repo.transition_job(session=session, job_id=done, expected=JobStatus.POST_EVALUATING, to=JobStatus.SUCCEEDED)
    timeouts = {
        JobStatus.QUEUED: timedelta(minutes=30),
        JobStatus.GENERATING: timedelta(minutes=10),
        JobStatus.POST_EVALUATING: timedelta(minutes=2),
    }
    with sessions() as session:
        now = utcnow()
        assert repo.find_stalled_jobs(session=session, timeouts=timeouts, now=now) == []

        five_minutes_on = repo.find_stalled_jobs(session=session, timeouts=timeouts, now=now + timedelta(minutes=5))
        assert [stalled.job_id for stalled in five_minutes_on] == [post]
        assert five_minutes_on[0].status == JobStatus.POST_EVALUATING

        later = repo.find_stalled_jobs(session=session, timeouts=timeouts, now=now + timedelta(hours=1))
        assert {stalled.job_id for stalled in later} == {queued, generating, post}
        # Oldest first: the queued job has waited longest.
        assert later[0].job_id == queued

        only_generation = repo.find_stalled_jobs(
            session=session, timeouts={JobStatus.GENERATING: timedelta(0)}, now=now + timedelta(hours=1)
        )
        assert [stalled.job_id for stalled in only_generation] == [generating]

        with pytest.raises(ValueError, match="terminal"):
            repo.find_stalled_jobs(session=session, timeouts={JobStatus.SUCCEEDED: timedelta(0)})


def test_two_sweepers_requeue_a_stalled_job_once(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        job_id = submit(session, tenant_id).job_ids[0]
        advance(session, job_id, JobStatus.GENERATING)
    timeouts = {JobStatus.GENERATING: timedelta(minutes=10)}
    later = utcnow() + timedelta(hours=1)
    with sessions() as session:
        (first_view,) = repo.find_stalled_jobs(session=session, timeouts=timeouts, now=later)
    with sessions() as session:
        (second_view,) = repo.find_stalled_jobs(session=session, timeouts=timeouts, now=later)
    assert first_view == second_view and first_view.attempts == 1

    def requeue(view: repo.StalledJob) -> bool:
        with sessions() as session, session.begin():
            return repo.requeue_stalled_job(
                session=session,
                job_id=view.job_id,
                status=view.status,
                status_changed_at=view.status_changed_at,
                now=later,
            )

    assert requeue(first_view)
    assert not requeue(second_view)
    with sessions() as session:
        job = next(iter(repo.get_jobs_any_tenant(session=session, job_ids=[job_id])), None)
        assert job is not None
        assert (job.status, job.attempts, job.status_changed_at) == (JobStatus.GENERATING, 2, later)
        # The stage clock restarted: not stalled again until the timeout passes anew.
        assert repo.find_stalled_jobs(session=session, timeouts=timeouts, now=later) == []


def test_a_job_that_moved_on_is_not_requeued(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> None:
    with sessions() as session, session.begin():
        job_id = submit(session, tenant_id).job_ids[0]
        advance(session, job_id, JobStatus.PRE_EVALUATING)
    later = utcnow() + timedelta(hours=1)
    with sessions() as session:
        (view,) = repo.find_stalled_jobs(
            session=session, timeouts={JobStatus.PRE_EVALUATING: timedelta(minutes=1)}, now=later
        )
    with sessions() as session, session.begin():
        # The slow worker finishes the stage after all.
        repo.transition_job(session=session, job_id=job_id, expected=JobStatus.PRE_EVALUATING, to=JobStatus.GENERATING)
    with sessions() as session, session.begin():
        assert not repo.requeue_stalled_job(
            session=session, job_id=job_id, status=view.status, status_changed_at=view.status_changed_at
        )
