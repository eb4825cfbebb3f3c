"""Batches and jobs: submission, tenant-scoped reads, status changes, the sweeper's queries.

Every status change is a compare-and-set: one UPDATE whose WHERE clause names the status the caller
expects, returning whether a row changed. Two workers racing on the same change both run it; the
database lets exactly one match, and the loser learns it lost without reading first.

Functions never commit: the caller owns the transaction (`with factory() as s, s.begin(): ...`).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from eta.store.errors import IdempotencyConflictError, InvalidTransitionError
from eta.store.lifecycle import (
    ACTIVE_JOB_STATUSES,
    STAGE_STATUSES,
    TERMINAL_JOB_STATUSES,
    BatchStatus,
    JobStatus,
    is_allowed_transition,
)
from eta.store.models import Batch, Job, utcnow
from eta.store.repository.pagination import Page, check_limit, decode_position_cursor, encode_position_cursor
from eta.store.sql import affected_rows

logger = logging.getLogger(__name__)

# Seeds drawn at submission fit every RNG the workers seed (torch, numpy, random).
_SEED_BITS = 31

# Column recording when a job entered each stage.
_ENTERED_AT: dict[JobStatus, str] = {
    JobStatus.PRE_EVALUATING: "pre_evaluating_at",
    JobStatus.GENERATING: "generating_at",
    JobStatus.POST_EVALUATING: "post_evaluating_at",
}


@dataclass(frozen=True, slots=True)
class NewJob:
    """One item of a submission, already validated by the caller (its image already stored)."""

    prompt: str
    image_sha256: str | None = None
    custom_id: str | None = None
    # Parameters frozen for this job (the caller merges batch-wide and per-item values).
    params: Mapping[str, Any] = field(default_factory=dict)
    # None draws one now, so every job is reproducible from what is stored.
    seed: int | None = None
    # The preset the params were built on (name, version), if any.
    preset_name: str | None = None
    preset_version: int | None = None
    # An image by reference, fetched by the pre-evaluation stage (`image_sha256` stays None until then).
    image_url: str | None = None


@dataclass(frozen=True, slots=True)
class SubmittedBatch:
    batch: Batch
    # The batch's jobs in request order.
    job_ids: list[uuid.UUID]
    # False when this is a replay of an earlier request with the same idempotency key.
    created: bool


@dataclass(frozen=True, slots=True)
class StalledJob:
    job_id: uuid.UUID
    status: JobStatus
    status_changed_at: datetime
    attempts: int
    # None for a job submitted on its own.
    batch_id: uuid.UUID | None = None


def _job_row(
    *, job: NewJob, tenant_id: uuid.UUID, batch_id: uuid.UUID | None, position: int | None, now: datetime
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "batch_id": batch_id,
        "position": position,
        "custom_id": job.custom_id,
        "image_sha256": job.image_sha256,
        "prompt": job.prompt,
        "params": dict(job.params),
        "seed": job.seed if job.seed is not None else secrets.randbits(_SEED_BITS),
        "preset_name": job.preset_name,
        "preset_version": job.preset_version,
        "image_url": job.image_url,
        "status": JobStatus.QUEUED,
        "created_at": now,
        "updated_at": now,
        "status_changed_at": now,
    }


def _replayed_batch(
    session: Session, *, tenant_id: uuid.UUID, idempotency_key: str, request_hash: str | None
) -> SubmittedBatch | None:
    batch = session.scalar(
        sa.select(Batch).where(Batch.tenant_id == tenant_id, Batch.idempotency_key == idempotency_key)
    )
    if batch is None:
        return None
    if batch.request_hash != request_hash:
        raise IdempotencyConflictError(f"idempotency key {idempotency_key!r} was already used with a different request")
    job_ids = session.scalars(sa.select(Job.id).where(Job.batch_id == batch.id).order_by(Job.position)).all()
    return SubmittedBatch(batch=batch, job_ids=list(job_ids), created=False)


def create_batch_with_jobs(
    *,
    session: Session,
    tenant_id: uuid.UUID,
    jobs: Sequence[NewJob],
    params: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    callback_url: str | None = None,
    now: datetime | None = None,
) -> SubmittedBatch:
    """Insert a batch (status `in_progress`) and all its jobs (status `queued`) in the caller's transaction.

    With an idempotency key, a request already seen returns the stored batch (`created=False`), also
    when two identical requests race. Enqueue the jobs only after the transaction commits.

    Raises:
        IdempotencyConflictError: the key was used before with another `request_hash`.
        ValueError: `jobs` is empty.
        sqlalchemy.exc.IntegrityError: duplicate `custom_id` in the batch, or an unknown image.
    """
    if not jobs:
        raise ValueError("a batch needs at least one job")
    if idempotency_key is not None:
        replay = _replayed_batch(
            session, tenant_id=tenant_id, idempotency_key=idempotency_key, request_hash=request_hash
        )
        if replay is not None:
            return replay
    now = now or utcnow()
    try:
        # A savepoint, so losing the race on the idempotency key leaves the caller's transaction usable.
        with session.begin_nested():
            batch = Batch(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                status=BatchStatus.IN_PROGRESS,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                callback_url=callback_url,
                params=dict(params or {}),
                created_at=now,
                updated_at=now,
            )
            session.add(batch)
            session.flush()
            rows = [
                _job_row(job=job, tenant_id=tenant_id, batch_id=batch.id, position=position, now=now)
                for position, job in enumerate(jobs)
            ]
            session.execute(sa.insert(Job), rows)
    except IntegrityError:
        if idempotency_key is None:
            raise
        replay = _replayed_batch(
            session, tenant_id=tenant_id, idempotency_key=idempotency_key, request_hash=request_hash
        )
        if replay is None:
            raise
        return replay
    logger.info("created batch %s with %d jobs for tenant %s", batch.id, len(rows), tenant_id)
    return SubmittedBatch(batch=batch, job_ids=[row["id"] for row in rows], created=True)


def create_job(*, session: Session, tenant_id: uuid.UUID, job: NewJob, now: datetime | None = None) -> Job:
    """Insert one job outside any batch (status `queued`). Enqueue it after the commit."""
    row = _job_row(job=job, tenant_id=tenant_id, batch_id=None, position=None, now=now or utcnow())
    created = Job(**row)
    session.add(created)
    session.flush()
    logger.info("created job %s for tenant %s", created.id, tenant_id)
    return created


def get_job(*, session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    """The job if it belongs to `tenant_id`; None otherwise (whether or not it exists elsewhere)."""
    return session.scalar(sa.select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))


def get_jobs_any_tenant(*, session: Session, job_ids: Sequence[uuid.UUID]) -> list[Job]:
    """The jobs that exist among `job_ids`, in the order given, whoever owns them: for workers and the sweeper,
    never for a request handler."""
    if not job_ids:
        return []
    rows = {job.id: job for job in session.scalars(
        sa.select(Job).where(Job.id.in_(list(job_ids))).execution_options(populate_existing=True))}
    return [rows[job_id] for job_id in job_ids if job_id in rows]


def get_batch_any_tenant(*, session: Session, batch_id: uuid.UUID) -> Batch | None:
    """The batch whoever owns it: for the workers' callbacks, never for a request handler."""
    return session.get(Batch, batch_id, populate_existing=True)


def get_job_version(*, session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> tuple[Any, ...] | None:
    """What identifies the current state of the tenant's job document, read without the document: every change
    of a job or its result moves `updated_at` (in the same transaction), and retention sets `purged_at`.
    None when the job is not the tenant's."""
    row = session.connection().execute(
        sa.select(Job.updated_at, Job.status, Job.purged_at).where(Job.id == job_id, Job.tenant_id == tenant_id)
    ).first()
    return tuple(row) if row is not None else None


def get_batch(*, session: Session, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> Batch | None:
    """The batch if it belongs to `tenant_id`; None otherwise."""
    return session.scalar(sa.select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id))


def list_batch_jobs(
    *,
    session: Session,
    tenant_id: uuid.UUID,
    batch_id: uuid.UUID,
    limit: int = 100,
    cursor: str | None = None,
) -> Page[Job]:
    """A page of a batch's jobs in request order.

    Raises:
        InvalidCursorError: `cursor` did not come from this listing.
    """
    query = (
        sa.select(Job)
        .where(Job.batch_id == batch_id, Job.tenant_id == tenant_id)
        .order_by(Job.position)
        .limit(check_limit(limit) + 1)
    )
    if cursor is not None:
        query = query.where(Job.position > decode_position_cursor(cursor))
    jobs = session.scalars(query).all()
    if len(jobs) <= limit:
        return Page(items=jobs, next_cursor=None)
    # Jobs of a batch always have a position.
    last_position = cast(int, jobs[limit - 1].position)
    return Page(items=jobs[:limit], next_cursor=encode_position_cursor(last_position))


def count_jobs_by_status(*, session: Session, tenant_id: uuid.UUID, batch_id: uuid.UUID) -> dict[JobStatus, int]:
    """Number of the batch's jobs in each status (every status present, zeros included)."""
    counts = dict.fromkeys(JobStatus, 0)
    rows = session.execute(
        sa.select(Job.status, sa.func.count())
        .where(Job.batch_id == batch_id, Job.tenant_id == tenant_id)
        .group_by(Job.status)
    )
    for status, count in rows:
        counts[JobStatus(status)] = int(count)
    return counts


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


def find_completable_batches(*, session: Session) -> list[uuid.UUID]:
    """In-progress batches whose jobs have all ended (a worker died between a job's commit and the batch's):
    candidates for `complete_batch_if_finished`, each in its own transaction."""
    unfinished = sa.exists().where(Job.batch_id == Batch.id, Job.status.in_(ACTIVE_JOB_STATUSES))
    return list(session.scalars(
        sa.select(Batch.id).where(Batch.status == BatchStatus.IN_PROGRESS, ~unfinished).order_by(Batch.id)
    ).all())


def batches_with_callback(*, session: Session, batch_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Those of `batch_ids` that have a callback URL, in the order given."""
    if not batch_ids:
        return []
    with_url = set(session.scalars(
        sa.select(Batch.id).where(Batch.id.in_(list(batch_ids)), Batch.callback_url.is_not(None))
    ).all())
    return [batch_id for batch_id in batch_ids if batch_id in with_url]


def mark_batch_callback_sent(*, session: Session, batch_id: uuid.UUID, now: datetime | None = None) -> bool:
    """Record that the batch's callback was delivered; True only the first time."""
    now = now or utcnow()
    result = session.execute(
        sa.update(Batch)
        .where(Batch.id == batch_id, Batch.callback_sent_at.is_(None))
        .values(callback_sent_at=now, updated_at=now)
    )
    return affected_rows(result) == 1


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


def take_leases(*, session: Session, job_ids: Sequence[uuid.UUID], owner: str, until: datetime) -> int:
    """`owner` holds the jobs until `until` (whoever held them before). Returns the number of jobs leased."""
    if not job_ids:
        return 0
    result = session.connection().execute(
        sa.update(Job).where(Job.id.in_(list(job_ids)), Job.status.in_(ACTIVE_JOB_STATUSES))
        .values(lease_owner=owner, lease_expires_at=until)
    )
    return affected_rows(result)


def renew_leases(*, session: Session, job_ids: Sequence[uuid.UUID], owner: str, until: datetime) -> int:
    """Push back the deadline of the jobs `owner` still holds (a job another worker took is left to it)."""
    if not job_ids:
        return 0
    result = session.execute(
        sa.update(Job).where(Job.id.in_(list(job_ids)), Job.lease_owner == owner)
        .values(lease_expires_at=until)
        .execution_options(synchronize_session=False)
    )
    return affected_rows(result)


def release_leases(*, session: Session, job_ids: Sequence[uuid.UUID], owner: str) -> int:
    """`owner` lets go of the jobs it holds (their next message is in the broker)."""
    if not job_ids:
        return 0
    result = session.execute(
        sa.update(Job).where(Job.id.in_(list(job_ids)), Job.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    return affected_rows(result)


def count_active_jobs(*, session: Session, tenant_id: uuid.UUID, cap: int = 1_000_000) -> int:
    """How many of the tenant's jobs are still in the pipeline (counted up to `cap`)."""
    active = (sa.select(Job.id).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE_JOB_STATUSES))
              .limit(cap).subquery())
    return int(session.scalar(sa.select(sa.func.count()).select_from(active)) or 0)


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


def attach_fetched_image(*, session: Session, job_id: uuid.UUID, sha256: str) -> bool:
    """Record the stored image of a job submitted by reference (`image_url`): what the stages judge from now
    on. False when the job already has one (another copy of the stage message stored it first)."""
    result = session.execute(sa.update(Job).where(Job.id == job_id, Job.image_sha256.is_(None))
                             .values(image_sha256=sha256))
    return affected_rows(result) > 0
