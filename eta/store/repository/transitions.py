"""Status changes of jobs and batches, each a compare-and-set.

Every change is one UPDATE whose WHERE clause names the status the caller expects, returning whether a row
changed. Two workers racing on the same change both run it; the database lets exactly one match, and the
loser learns it lost without reading first. The allowed moves are `eta.store.lifecycle`'s.

Functions never commit: the caller owns the transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.store.errors import InvalidTransitionError
from eta.store.lifecycle import (
    ACTIVE_JOB_STATUSES,
    STAGE_STATUSES,
    TERMINAL_JOB_STATUSES,
    BatchStatus,
    JobStatus,
    is_allowed_transition,
)
from eta.store.models import Batch, Job, utcnow
from eta.store.sql import affected_rows

logger = logging.getLogger(__name__)


# Column recording when a job entered each stage.
_ENTERED_AT: dict[JobStatus, str] = {
    JobStatus.PRE_EVALUATING: "pre_evaluating_at",
    JobStatus.GENERATING: "generating_at",
    JobStatus.POST_EVALUATING: "post_evaluating_at",
}


def transition_job(
    *,
    session: Session,
    job_id: uuid.UUID,
    expected: JobStatus,
    to: JobStatus,
    error_code: str | None = None,
    error_message: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Move a job from `expected` to `to` if it is still in `expected`; True if this call moved it.

    Entering a stage stamps its `*_at` column and sets `attempts` to 1; entering a terminal status
    stamps `finished_at`. `error_code`/`error_message` are recorded as given (meant for `failed`).

    Raises:
        InvalidTransitionError: the lifecycle forbids `expected -> to` (backwards, or out of a terminal
            status), whatever the job's current status.
    """
    expected, to = JobStatus(expected), JobStatus(to)
    values = _transition_values(expected, to, now=now or utcnow(), error_code=error_code,
                                error_message=error_message)
    result = session.execute(sa.update(Job).where(Job.id == job_id, Job.status == expected).values(**values))
    moved = affected_rows(result) == 1
    logger.debug("job %s: %s -> %s %s", job_id, expected, to, "done" if moved else "lost (status changed)")
    return moved


def transition_jobs(*, session: Session, job_ids: Sequence[uuid.UUID], expected: JobStatus, to: JobStatus,
                    now: datetime | None = None, lease: tuple[str, datetime] | None = None) -> set[uuid.UUID]:
    """`transition_job` for many jobs in one statement. Returns the ids this call moved.

    `lease` = (owner, until): the moved jobs are also leased to `owner` (`take_leases`), in the same statement.

    Raises:
        InvalidTransitionError: as `transition_job`.
    """
    expected, to = JobStatus(expected), JobStatus(to)
    values = _transition_values(expected, to, now=now or utcnow())
    if not job_ids:
        return set()
    if lease is not None:
        values.update(lease_owner=lease[0], lease_expires_at=lease[1])
    # Core, not the ORM's bulk UPDATE: nothing in the session is synchronised, and the statement is compiled once.
    moved = session.connection().execute(
        sa.update(Job).where(Job.id.in_(list(job_ids)), Job.status == expected).values(**values).returning(Job.id)
    ).scalars()
    return set(moved)


def _transition_values(expected: JobStatus, to: JobStatus, *, now: datetime, error_code: str | None = None,
                       error_message: str | None = None) -> dict[str, Any]:
    if not is_allowed_transition(expected, to):
        raise InvalidTransitionError(f"a job cannot move from {expected} to {to}")
    values: dict[str, Any] = {"status": to, "status_changed_at": now, "updated_at": now}
    if to in STAGE_STATUSES:
        values[_ENTERED_AT[to]] = now
        values["attempts"] = 1
    if to in TERMINAL_JOB_STATUSES:
        values["finished_at"] = now
    if error_code is not None or error_message is not None:
        values["error_code"] = error_code
        values["error_message"] = error_message
    return values


def cancel_job(*, session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID, now: datetime | None = None) -> bool:
    """Cancel the tenant's job unless it already ended; True if this call cancelled it.

    A worker still running a stage of it loses its next compare-and-set and stops there.
    """
    now = now or utcnow()
    result = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status.in_(ACTIVE_JOB_STATUSES))
        .values(status=JobStatus.CANCELLED, status_changed_at=now, updated_at=now, finished_at=now)
    )
    return affected_rows(result) == 1


def cancel_batch(*, session: Session, tenant_id: uuid.UUID, batch_id: uuid.UUID, now: datetime | None = None) -> bool:
    """Cancel the tenant's batch and every job of it that has not ended; True if this call did it."""
    now = now or utcnow()
    result = session.execute(
        sa.update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.tenant_id == tenant_id,
            Batch.status.in_((BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)),
        )
        .values(status=BatchStatus.CANCELLED, updated_at=now, finished_at=now)
    )
    if affected_rows(result) != 1:
        return False
    cancelled = session.execute(
        sa.update(Job)
        .where(Job.batch_id == batch_id, Job.status.in_(ACTIVE_JOB_STATUSES))
        .values(status=JobStatus.CANCELLED, status_changed_at=now, updated_at=now, finished_at=now)
    )
    logger.info("cancelled batch %s (%d jobs had not ended)", batch_id, affected_rows(cancelled))
    return True


def complete_batch_if_finished(*, session: Session, batch_id: uuid.UUID, now: datetime | None = None) -> bool:
    """Mark an in-progress batch `completed` once none of its jobs can still change.

    Returns True for exactly one caller, which should then fire the batch callback. Call it in a new
    transaction *after* the job's final status is committed: then, of two workers ending a batch's
    last two jobs at once, the later to commit always sees both jobs ended.
    """
    now = now or utcnow()
    unfinished = sa.exists().where(Job.batch_id == batch_id, Job.status.in_(ACTIVE_JOB_STATUSES))
    result = session.execute(
        sa.update(Batch)
        .where(Batch.id == batch_id, Batch.status == BatchStatus.IN_PROGRESS, ~unfinished)
        .values(status=BatchStatus.COMPLETED, updated_at=now, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    completed = affected_rows(result) == 1
    if completed:
        logger.info("batch %s completed", batch_id)
    return completed


def mark_batch_callback_sent(*, session: Session, batch_id: uuid.UUID, now: datetime | None = None) -> bool:
    """Record that the batch's callback was delivered; True only the first time."""
    now = now or utcnow()
    result = session.execute(
        sa.update(Batch)
        .where(Batch.id == batch_id, Batch.callback_sent_at.is_(None))
        .values(callback_sent_at=now, updated_at=now)
    )
    return affected_rows(result) == 1
