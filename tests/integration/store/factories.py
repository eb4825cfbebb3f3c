"""Test data builders for the store tests."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from eta.store import repository as repo
from eta.store.lifecycle import BatchStatus, JobStatus
from eta.store.models import Batch, Job, JobResult
from eta.store.repository import NewJob

# The path through the stages, as workers walk it.
PIPELINE = [JobStatus.QUEUED, JobStatus.PRE_EVALUATING, JobStatus.GENERATING, JobStatus.POST_EVALUATING]


def submit(session: Session, tenant_id: uuid.UUID, count: int = 1, **kwargs: Any) -> repo.SubmittedBatch:
    jobs = [NewJob(prompt=f"prompt {i}", custom_id=f"item-{i}") for i in range(count)]
    return repo.create_batch_with_jobs(session=session, tenant_id=tenant_id, jobs=jobs, **kwargs)


def advance(session: Session, job_id: uuid.UUID, to: JobStatus) -> None:
    """Walk a queued job forward through the stages up to `to` (one of the active statuses)."""
    for current, target in zip(PIPELINE, PIPELINE[1 : PIPELINE.index(to) + 1], strict=False):
        assert repo.transition_job(session=session, job_id=job_id, expected=current, to=target)


# The stage each active status belongs to (the names workers record timings under).
STAGE_OF = {JobStatus.PRE_EVALUATING: "pre", JobStatus.GENERATING: "generate", JobStatus.POST_EVALUATING: "post"}


def record(session: Session, status: JobStatus, result: repo.StageResult) -> bool:
    """Write one job's result of the stage `status` names, the way a worker does; False if the job moved on."""
    recorded = repo.record_stage_results(session=session, stage=STAGE_OF[status], status=status, results=[result])
    return result.job_id in recorded


def insert_finished_job(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    created_at: datetime,
    flagged: bool = True,
    batch_id: uuid.UUID | None = None,
    **result: Any,
) -> uuid.UUID:
    """A succeeded job with its result row, inserted directly (audit tests need many, with set times)."""
    job = Job(
        tenant_id=tenant_id,
        batch_id=batch_id,
        prompt="p",
        seed=1,
        status=JobStatus.SUCCEEDED,
        flagged=flagged,
        created_at=created_at,
        status_changed_at=created_at,
        finished_at=created_at,
    )
    session.add(job)
    session.flush()
    session.add(JobResult(job_id=job.id, **result))
    session.flush()
    return job.id


def insert_batch(session: Session, tenant_id: uuid.UUID) -> uuid.UUID:
    batch = Batch(tenant_id=tenant_id, status=BatchStatus.IN_PROGRESS)
    session.add(batch)
    session.flush()
    return batch.id
