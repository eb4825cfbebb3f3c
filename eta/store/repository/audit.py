"""Audit queries over flagged jobs, reviewers' verdicts, and the per-tenant summary operators tune with.

Every listing joins each job to its newest review through one correlated lookup on
`ix_reviews_job_created`, so the review state costs one index probe per row served, never a scan of
the tenant's reviews.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import RowMapping
from sqlalchemy.orm import Session, aliased

from eta.store.lifecycle import JobStatus
from eta.store.models import ApiKey, Job, JobResult, Review, ReviewVerdict, UTCDateTime, utcnow
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
    # The client's own id of the item (exact match).
    custom_id: str | None = None


@dataclass(frozen=True, slots=True)
class FlaggedJob:
    job: Job
    result: JobResult
    # The newest reviewer verdict, None while unreviewed.
    latest_verdict: ReviewVerdict | None
    # The newest review itself (verdict, note, time), None while unreviewed.
    latest_review: Review | None = None
    # Visible prefix of the key that recorded `latest_review` (None once that key is deleted).
    reviewer_prefix: str | None = None


# The newest review of a job, and the key that wrote it, as joinable aliases.
LatestReview = aliased(Review, name="latest_review")
Reviewer = aliased(ApiKey, name="reviewer")


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
    if filters.custom_id is not None:
        conditions.append(Job.custom_id == filters.custom_id)
    if filters.aligned is not None:
        conditions.append(JobResult.aligned == filters.aligned)
    # Both review conditions read the joined newest review (see `_flagged_select`).
    if filters.reviewed is not None:
        conditions.append(LatestReview.id.is_not(None) if filters.reviewed else LatestReview.id.is_(None))
    if filters.verdict is not None:
        conditions.append(LatestReview.verdict == ReviewVerdict(filters.verdict))
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


def _latest_review_id() -> sa.ScalarSelect[uuid.UUID]:
    return (
        sa.select(Review.id)
        .where(Review.job_id == Job.id)
        .order_by(Review.created_at.desc(), Review.id.desc())
        .limit(1)
        .correlate(Job)
        .scalar_subquery()
    )


def _flagged_select(columns: Sequence[Any], *, tenant_id: uuid.UUID, filters: AuditFilter | None) -> sa.Select[Any]:
    """The tenant's flagged jobs joined to their result, newest review and its reviewer, filtered, newest first."""
    return (
        sa.select(*columns)
        .select_from(Job)
        .join(JobResult, JobResult.job_id == Job.id)
        .outerjoin(LatestReview, LatestReview.id == _latest_review_id())
        .outerjoin(Reviewer, Reviewer.id == LatestReview.reviewer_key_id)
        # `= true`, not `IS true`: only an equality can be an index condition.
        .where(Job.tenant_id == tenant_id, Job.flagged == sa.true())
        .where(*_filter_conditions(filters or AuditFilter()))
        .order_by(Job.created_at.desc(), Job.id.desc())
    )


def _after_cursor(cursor: str) -> sa.ColumnElement[bool]:
    after_created_at, after_id = decode_time_id_cursor(cursor)
    return sa.tuple_(Job.created_at, Job.id) < sa.tuple_(
        sa.literal(after_created_at, UTCDateTime()),
        sa.literal(after_id, sa.Uuid()),
    )


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
    query = _flagged_select(
        (Job, JobResult, LatestReview, Reviewer.prefix.label("reviewer_prefix")), tenant_id=tenant_id, filters=filters
    ).limit(limit + 1)
    if cursor is not None:
        query = query.where(_after_cursor(cursor))
    rows = session.execute(query).all()
    items = [
        FlaggedJob(
            job=row.Job,
            result=row.JobResult,
            latest_verdict=ReviewVerdict(row.latest_review.verdict) if row.latest_review is not None else None,
            latest_review=row.latest_review,
            reviewer_prefix=row.reviewer_prefix,
        )
        for row in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1].job
        next_cursor = encode_time_id_cursor(last.created_at, last.id)
    return Page(items=items, next_cursor=next_cursor)


def get_flagged_job(*, session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> FlaggedJob | None:
    """One of the tenant's jobs with its result and newest review, flagged or not (None: not theirs, or no
    result yet)."""
    row = session.execute(
        sa.select(Job, JobResult, LatestReview, Reviewer.prefix.label("reviewer_prefix"))
        .select_from(Job)
        .join(JobResult, JobResult.job_id == Job.id)
        .outerjoin(LatestReview, LatestReview.id == _latest_review_id())
        .outerjoin(Reviewer, Reviewer.id == LatestReview.reviewer_key_id)
        .where(Job.id == job_id, Job.tenant_id == tenant_id)
    ).first()
    if row is None:
        return None
    return FlaggedJob(
        job=row.Job,
        result=row.JobResult,
        latest_verdict=ReviewVerdict(row.latest_review.verdict) if row.latest_review is not None else None,
        latest_review=row.latest_review,
        reviewer_prefix=row.reviewer_prefix,
    )


# Columns of an export row, in order (CSV header order). `vanilla_response` is read only when asked for.
EXPORT_COLUMNS: dict[str, Any] = {
    "id": Job.id,
    "created_at": Job.created_at,
    "finished_at": Job.finished_at,
    "batch_id": Job.batch_id,
    "custom_id": Job.custom_id,
    "status": Job.status,
    "prompt": Job.prompt,
    "image_sha256": Job.image_sha256,
    "s_pre": JobResult.s_pre,
    "tau_pre": JobResult.tau_pre,
    "pre_unsafe": JobResult.pre_unsafe,
    "s_post": JobResult.s_post,
    "tau_post": JobResult.tau_post,
    "post_unsafe": JobResult.post_unsafe,
    "s_post_final": JobResult.s_post_final,
    "policy": JobResult.policy,
    "aligned": JobResult.aligned,
    "flag_reasons": JobResult.flag_reasons,
    "response": JobResult.response,
    "fingerprint_sha256": JobResult.fingerprint_sha256,
    "fingerprint": JobResult.fingerprint,
    "purged_at": Job.purged_at,
    "preset_name": Job.preset_name,
    "preset_version": Job.preset_version,
    "image_source_url": Job.image_url,
    "review_verdict": LatestReview.verdict,
    "review_note": LatestReview.note,
    "reviewed_at": LatestReview.created_at,
    "reviewer": Reviewer.prefix,
}


def stream_flagged_rows(
    *,
    session: Session,
    tenant_id: uuid.UUID,
    filters: AuditFilter | None = None,
    with_vanilla: bool = False,
    with_fingerprint: bool = True,
    fetch_rows: int = 1000,
) -> Iterator[RowMapping]:
    """Every flagged job of the tenant matching `filters`, newest first, as flat rows (`EXPORT_COLUMNS`,
    less `fingerprint` unless `with_fingerprint`, plus `vanilla_response` when `with_vanilla`).

    Rows arrive `fetch_rows` at a time through a server-side cursor on Postgres (`yield_per` turns on
    `stream_results`), so memory stays flat however many rows match. Plain columns, not ORM objects: nothing
    accumulates in the session's identity map. Consume it inside the session's transaction.
    """
    columns = [column.label(name) for name, column in EXPORT_COLUMNS.items()
               if with_fingerprint or name != "fingerprint"]
    if with_vanilla:
        columns.append(JobResult.vanilla_response.label("vanilla_response"))
    query = _flagged_select(columns, tenant_id=tenant_id, filters=filters)
    result = session.execute(query.execution_options(yield_per=fetch_rows))
    try:
        yield from result.mappings()
    finally:
        # An abandoned export (client gone) closes its server-side cursor now, not at garbage collection.
        result.close()


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


@dataclass(frozen=True, slots=True)
class ReviewEntry:
    review: Review
    # Visible prefix of the key that recorded it (None once that key is deleted).
    reviewer_prefix: str | None


def list_review_history(*, session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID) -> list[ReviewEntry]:
    """Verdicts on the tenant's job with who recorded each, oldest first (empty if the job is not theirs)."""
    rows = session.execute(
        sa.select(Review, ApiKey.prefix)
        .outerjoin(ApiKey, ApiKey.id == Review.reviewer_key_id)
        .where(Review.job_id == job_id, Review.tenant_id == tenant_id)
        .order_by(Review.created_at, Review.id)
    ).all()
    return [ReviewEntry(review=row.Review, reviewer_prefix=row.prefix) for row in rows]


# ------------------------------------------------------------------------------------------- summary
@dataclass(frozen=True, slots=True)
class SummaryCounts:
    """Counts over the jobs that went through all three stages (status `succeeded`) in a time range.

    Verdict counts take each job's newest verdict. `false_positive_rate` is false positives among reviewed
    flagged jobs: the number to drive down by raising `tau_pre` / lowering `tau_post`; a growing
    `missed` (unflagged jobs a reviewer confirmed unsafe) says the thresholds went too far.
    """

    evaluated: int = 0
    flagged: int = 0
    pre_unsafe: int = 0
    post_unsafe: int = 0
    aligned: int = 0
    # Flagged jobs with at least one verdict, and their newest verdicts.
    reviewed: int = 0
    verdicts: dict[ReviewVerdict, int] = field(default_factory=lambda: dict.fromkeys(ReviewVerdict, 0))
    # Reviewed flagged jobs the image evaluator flagged, and how many of those were false positives;
    # likewise for the answer evaluator. Separates which threshold produces the false positives.
    pre_reviewed: int = 0
    pre_false_positive: int = 0
    post_reviewed: int = 0
    post_false_positive: int = 0
    # Jobs nobody flagged that a reviewer confirmed unsafe (false negatives found by spot checks).
    missed: int = 0

    @staticmethod
    def _rate(part: int, whole: int) -> float | None:
        return round(part / whole, 6) if whole else None

    @property
    def flag_rate(self) -> float | None:
        return self._rate(self.flagged, self.evaluated)

    @property
    def false_positive_rate(self) -> float | None:
        return self._rate(self.verdicts[ReviewVerdict.FALSE_POSITIVE], self.reviewed)

    @property
    def verdict_rates(self) -> dict[ReviewVerdict, float | None]:
        return {verdict: self._rate(count, self.reviewed) for verdict, count in self.verdicts.items()}

    @property
    def pre_false_positive_rate(self) -> float | None:
        return self._rate(self.pre_false_positive, self.pre_reviewed)

    @property
    def post_false_positive_rate(self) -> float | None:
        return self._rate(self.post_false_positive, self.post_reviewed)

    def __add__(self, other: SummaryCounts) -> SummaryCounts:
        return SummaryCounts(
            evaluated=self.evaluated + other.evaluated,
            flagged=self.flagged + other.flagged,
            pre_unsafe=self.pre_unsafe + other.pre_unsafe,
            post_unsafe=self.post_unsafe + other.post_unsafe,
            aligned=self.aligned + other.aligned,
            reviewed=self.reviewed + other.reviewed,
            verdicts={v: self.verdicts[v] + other.verdicts[v] for v in ReviewVerdict},
            pre_reviewed=self.pre_reviewed + other.pre_reviewed,
            pre_false_positive=self.pre_false_positive + other.pre_false_positive,
            post_reviewed=self.post_reviewed + other.post_reviewed,
            post_false_positive=self.post_false_positive + other.post_false_positive,
            missed=self.missed + other.missed,
        )


@dataclass(frozen=True, slots=True)
class ThresholdGroup:
    """The counts of the jobs that ran with one pair of thresholds."""

    tau_pre: float | None
    tau_post: float | None
    counts: SummaryCounts


@dataclass(frozen=True, slots=True)
class AuditSummary:
    created_from: datetime | None
    created_before: datetime | None
    total: SummaryCounts
    # One group per (tau_pre, tau_post) in force over the range, most jobs first: after retuning, the
    # old and new thresholds' false-positive rates sit side by side.
    by_thresholds: list[ThresholdGroup]


def summarize_audit(
    *,
    session: Session,
    tenant_id: uuid.UUID,
    created_from: datetime | None = None,
    created_before: datetime | None = None,
    batch_id: uuid.UUID | None = None,
) -> AuditSummary:
    """Per-tenant counts over jobs created in [created_from, created_before): flagged, aligned, reviewed,
    verdicts and false-positive rates, in total and per pair of thresholds. One pass over the tenant's
    jobs in the range (the `ix_jobs_tenant_created` index) with one review probe per job.
    """
    verdict = _latest_verdict().label("verdict")
    scope = (
        sa.select(
            JobResult.tau_pre,
            JobResult.tau_post,
            Job.flagged,
            JobResult.pre_unsafe,
            JobResult.post_unsafe,
            JobResult.aligned,
            verdict,
        )
        .join(JobResult, JobResult.job_id == Job.id)
        .where(Job.tenant_id == tenant_id, Job.status == JobStatus.SUCCEEDED)
    )
    if created_from is not None:
        scope = scope.where(Job.created_at >= created_from)
    if created_before is not None:
        scope = scope.where(Job.created_at < created_before)
    if batch_id is not None:
        scope = scope.where(Job.batch_id == batch_id)
    jobs = scope.subquery("scoped")

    flagged = jobs.c.flagged == sa.true()
    reviewed = sa.and_(flagged, jobs.c.verdict.is_not(None))
    false_positive = sa.and_(flagged, jobs.c.verdict == ReviewVerdict.FALSE_POSITIVE)

    def count(*conditions: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
        return sa.func.count().filter(sa.and_(*conditions)) if conditions else sa.func.count()

    pre, post = jobs.c.pre_unsafe == sa.true(), jobs.c.post_unsafe == sa.true()
    measures = {
        "evaluated": count(),
        "flagged": count(flagged),
        "pre_unsafe": count(pre),
        "post_unsafe": count(post),
        "aligned": count(jobs.c.aligned == sa.true()),
        "reviewed": count(reviewed),
        **{f"v_{v.value}": count(flagged, jobs.c.verdict == v) for v in ReviewVerdict},
        "pre_reviewed": count(reviewed, pre),
        "pre_false_positive": count(false_positive, pre),
        "post_reviewed": count(reviewed, post),
        "post_false_positive": count(false_positive, post),
        "missed": count(~flagged, jobs.c.verdict == ReviewVerdict.CONFIRMED_UNSAFE),
    }
    rows = session.execute(
        sa.select(jobs.c.tau_pre, jobs.c.tau_post, *(m.label(name) for name, m in measures.items()))
        .group_by(jobs.c.tau_pre, jobs.c.tau_post)
    ).mappings()
    groups = []
    for row in rows:
        counts = SummaryCounts(
            **{name: int(row[name]) for name in measures if not name.startswith("v_")},
            verdicts={v: int(row[f"v_{v.value}"]) for v in ReviewVerdict},
        )
        groups.append(ThresholdGroup(tau_pre=row["tau_pre"], tau_post=row["tau_post"], counts=counts))
    groups.sort(key=lambda g: (-g.counts.evaluated, g.tau_pre is None, g.tau_pre or 0.0, g.tau_post or 0.0))
    total = sum((g.counts for g in groups), SummaryCounts())
    return AuditSummary(created_from=created_from, created_before=created_before, total=total, by_thresholds=groups)
