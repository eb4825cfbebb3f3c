"""What the sweeper looks for: work that a dead or stuck worker left unfinished.

Jobs whose lease ran out or that sat too long in a status (`find_stalled_jobs`, then `requeue_stalled_job`,
a compare-and-set so that of two sweepers one re-enqueues), batches whose jobs all ended but that were never
marked completed, and completed batches whose callback was never delivered. Every query spans all tenants.

Functions never commit: the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.store.lifecycle import ACTIVE_JOB_STATUSES, BatchStatus, JobStatus
from eta.store.models import Batch, Job, utcnow
from eta.store.sql import affected_rows


@dataclass(frozen=True, slots=True)
class StalledJob:
    job_id: uuid.UUID
    status: JobStatus
    status_changed_at: datetime
    attempts: int
    # None for a job submitted on its own.
    batch_id: uuid.UUID | None = None


def find_stalled_jobs(
    *,
    session: Session,
    timeouts: Mapping[JobStatus, timedelta],
    now: datetime | None = None,
    limit: int = 500,
    expired_leases: bool = True,
) -> list[StalledJob]:
    """Jobs nobody is moving forward, oldest first (all tenants):

    - with `expired_leases`, every active job whose lease ran out (its worker died, however long its stage may
      take): a worker that is alive keeps pushing its deadline back, so a slow stage is never reported;
    - a job no worker holds (no lease) that has sat in a status of `timeouts` longer than that status's timeout
      (a status left out is not looked at this way).

    Uses the partial index on `lease_expires_at` and the (status, status_changed_at) index.
    """
    for status in timeouts:
        if JobStatus(status) not in ACTIVE_JOB_STATUSES:
            raise ValueError(f"{status} is terminal: a job cannot stall in it")
    now = now or utcnow()
    clauses = [
        sa.and_(Job.status == status, Job.status_changed_at < now - timeout, Job.lease_expires_at.is_(None))
        for status, timeout in timeouts.items()
    ]
    if expired_leases:
        clauses.append(sa.and_(Job.lease_expires_at < now, Job.status.in_(ACTIVE_JOB_STATUSES)))
    if not clauses:
        return []
    rows = session.execute(
        sa.select(Job.id, Job.status, Job.status_changed_at, Job.attempts, Job.batch_id)
        .where(sa.or_(*clauses))
        .order_by(Job.status_changed_at)
        .limit(limit)
    )
    return [
        StalledJob(job_id=row.id, status=row.status, status_changed_at=row.status_changed_at, attempts=row.attempts,
                   batch_id=row.batch_id)
        for row in rows
    ]


def requeue_stalled_job(
    *,
    session: Session,
    job_id: uuid.UUID,
    status: JobStatus,
    status_changed_at: datetime,
    now: datetime | None = None,
    count_attempt: bool = True,
) -> bool:
    """Claim a stalled job for re-enqueueing: restart its stage clock, drop its (expired) lease and, unless
    `count_attempt` is False (the broker lost every message: not the job's doing), count one more attempt.

    Compare-and-set on (status, status_changed_at) as `find_stalled_jobs` reported them and on a lease that is
    absent or expired, so of two sweepers only one re-enqueues, and a job that moved on or that a worker took
    meanwhile is left alone.
    """
    now = now or utcnow()
    values: dict[str, Any] = {"status_changed_at": now, "updated_at": now, "lease_owner": None,
                              "lease_expires_at": None}
    if count_attempt:
        values["attempts"] = Job.attempts + 1
    result = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.status == status, Job.status_changed_at == status_changed_at,
               sa.or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))
        .values(**values)
    )
    return affected_rows(result) == 1


def find_completable_batches(*, session: Session) -> list[uuid.UUID]:
    """In-progress batches whose jobs have all ended (a worker died between a job's commit and the batch's):
    candidates for `complete_batch_if_finished`, each in its own transaction."""
    unfinished = sa.exists().where(Job.batch_id == Batch.id, Job.status.in_(ACTIVE_JOB_STATUSES))
    return list(session.scalars(
        sa.select(Batch.id).where(Batch.status == BatchStatus.IN_PROGRESS, ~unfinished).order_by(Batch.id)
    ).all())


def find_undelivered_callbacks(*, session: Session, finished_before: datetime, finished_after: datetime | None = None,
                               limit: int = 1000) -> list[uuid.UUID]:
    """Completed batches with a callback URL, finished in [`finished_after`, `finished_before`), whose callback
    was never delivered (oldest first)."""
    window = [Batch.finished_at < finished_before]
    if finished_after is not None:
        window.append(Batch.finished_at >= finished_after)
    return list(session.scalars(
        sa.select(Batch.id)
        .where(Batch.status == BatchStatus.COMPLETED, Batch.callback_url.is_not(None),
               Batch.callback_sent_at.is_(None), *window)
        .order_by(Batch.finished_at)
        .limit(limit)
    ))
