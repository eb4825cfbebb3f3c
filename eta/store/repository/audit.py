"""Audit queries over flagged jobs, and reviewers' verdicts."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.store.models import Job, JobResult, Review, ReviewVerdict, UTCDateTime, utcnow
from eta.store.repository.pagination import Page, check_limit, decode_time_id_cursor, encode_time_id_cursor

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Narrowing of the flagged-jobs listing; every field left as None does not filter."""

    created_from: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive
    batch_id: uuid.UUID | None = None
    aligned: bool | None = None
    # True: at least one review; False: none yet.
    reviewed: bool | None = None
    # The newest verdict on the job.
    verdict: ReviewVerdict | None = None
    s_pre_min: float | None = None
    s_pre_max: float | None = None
    s_post_min: float | None = None
    s_post_max: float | None = None
    s_post_final_min: float | None = None
    s_post_final_max: float | None = None


@dataclass(frozen=True, slots=True)
class FlaggedJob:
    job: Job
    result: JobResult
    # The newest reviewer verdict, None while unreviewed.
    latest_verdict: ReviewVerdict | None


def _latest_verdict() -> sa.ScalarSelect[ReviewVerdict]:
    return (
        sa.select(Review.verdict)
        .where(Review.job_id == Job.id)
        .order_by(Review.created_at.desc(), Review.id.desc())
        .limit(1)
        .correlate(Job)
        .scalar_subquery()
    )


def _filter_conditions(filters: AuditFilter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if filters.created_from is not None:
        conditions.append(Job.created_at >= filters.created_from)
    if filters.created_before is not None:
        conditions.append(Job.created_at < filters.created_before)
    if filters.batch_id is not None:
        conditions.append(Job.batch_id == filters.batch_id)
    if filters.aligned is not None:
        conditions.append(JobResult.aligned == filters.aligned)
    if filters.reviewed is not None:
        has_review = sa.exists().where(Review.job_id == Job.id)
        conditions.append(has_review if filters.reviewed else ~has_review)
    if filters.verdict is not None:
        conditions.append(_latest_verdict() == ReviewVerdict(filters.verdict))
    bounds = (
        (JobResult.s_pre, filters.s_pre_min, filters.s_pre_max),
        (JobResult.s_post, filters.s_post_min, filters.s_post_max),
        (JobResult.s_post_final, filters.s_post_final_min, filters.s_post_final_max),
    )
    for column, low, high in bounds:
        if low is not None:
            conditions.append(column >= low)
        if high is not None:
            conditions.append(column <= high)
    return conditions


def list_flagged_jobs(
    *,
    session: Session,
    tenant_id: uuid.UUID,
    filters: AuditFilter | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[FlaggedJob]:
    """The tenant's flagged jobs with their results, newest first, keyset-paginated.

    Walks the (tenant_id, flagged, created_at, id) index backwards from the cursor, so every page costs
    the same however deep it is, and rows inserted meanwhile never shift later pages.

    Raises:
        InvalidCursorError: `cursor` did not come from this listing.
    """
    check_limit(limit)
    query = (
        sa.select(Job, JobResult, _latest_verdict().label("latest_verdict"))
        .join(JobResult, JobResult.job_id == Job.id)
        # `= true`, not `IS true`: only an equality can be an index condition.
        .where(Job.tenant_id == tenant_id, Job.flagged == sa.true())
        .where(*_filter_conditions(filters or AuditFilter()))
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        after_created_at, after_id = decode_time_id_cursor(cursor)
        query = query.where(
            sa.tuple_(Job.created_at, Job.id)
            < sa.tuple_(
                sa.literal(after_created_at, UTCDateTime()),
                sa.literal(after_id, sa.Uuid()),
            )
        )
    rows = session.execute(query).all()
    items = [
        FlaggedJob(
            job=row.Job,
            result=row.JobResult,
            latest_verdict=ReviewVerdict(row.latest_verdict) if row.latest_verdict is not None else None,
        )
        for row in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1].job
        next_cursor = encode_time_id_cursor(last.created_at, last.id)
    return Page(items=items, next_cursor=next_cursor)


def add_review(
    *,
    session: Session,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID,
    verdict: ReviewVerdict,
    reviewer_key_id: uuid.UUID | None = None,
    note: str | None = None,
    now: datetime | None = None,
) -> Review | None:
    """Record a verdict on the tenant's job; None if the job is not theirs."""
    owned = session.scalar(sa.select(Job.id).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if owned is None:
        return None
    review = Review(
        job_id=job_id,
        tenant_id=tenant_id,
        reviewer_key_id=reviewer_key_id,
        verdict=ReviewVerdict(verdict),
        note=note,
        created_at=now or utcnow(),
    )
    session.add(review)
    session.flush()
    logger.info("job %s: review %s by key %s", job_id, review.verdict, reviewer_key_id)
    return review


def list_reviews(*, session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Sequence[Review]:
    """Verdicts on the tenant's job, oldest first (empty if the job is not theirs)."""
    return session.scalars(
        sa.select(Review)
        .where(Review.job_id == job_id, Review.tenant_id == tenant_id)
        .order_by(Review.created_at, Review.id)
    ).all()
