"""Batches and jobs as records: submission (a batch with its jobs, or one job), the image a job submitted by
reference gets once fetched, and the reads, tenant-scoped for request handlers and `*_any_tenant` for workers.

Functions never commit: the caller owns the transaction (`with factory() as s, s.begin(): ...`). Status
changes are in `transitions`, the sweeper's queries in `recovery`, worker leases in `leases`.
"""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from eta.store.errors import IdempotencyConflictError
from eta.store.lifecycle import ACTIVE_JOB_STATUSES, BatchStatus, JobStatus
from eta.store.models import Batch, Job, utcnow
from eta.store.repository.pagination import Page, check_limit, decode_position_cursor, encode_position_cursor
from eta.store.sql import affected_rows

logger = logging.getLogger(__name__)


# Seeds drawn at submission fit every RNG the workers seed (torch, numpy, random).
_SEED_BITS = 31


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


def attach_fetched_image(*, session: Session, job_id: uuid.UUID, sha256: str) -> bool:
    """Record the stored image of a job submitted by reference (`image_url`): what the stages judge from now
    on. False when the job already has one (another copy of the stage message stored it first)."""
    result = session.execute(sa.update(Job).where(Job.id == job_id, Job.image_sha256.is_(None))
                             .values(image_sha256=sha256))
    return affected_rows(result) > 0


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


def count_active_jobs(*, session: Session, tenant_id: uuid.UUID, cap: int = 1_000_000) -> int:
    """How many of the tenant's jobs are still in the pipeline (counted up to `cap`)."""
    active = (sa.select(Job.id).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE_JOB_STATUSES))
              .limit(cap).subquery())
    return int(session.scalar(sa.select(sa.func.count()).select_from(active)) or 0)


def batches_with_callback(*, session: Session, batch_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Those of `batch_ids` that have a callback URL, in the order given."""
    if not batch_ids:
        return []
    with_url = set(session.scalars(
        sa.select(Batch.id).where(Batch.id.in_(list(batch_ids)), Batch.callback_url.is_not(None))
    ).all())
    return [batch_id for batch_id in batch_ids if batch_id in with_url]
