"""Stage results: what each worker stage computed, written idempotently into the job's result row.

Each `record_*` call first locks the job row and checks the job is still in that stage; a stale message
(the job moved on, or was cancelled) writes nothing and gets False. Otherwise it upserts the stage's
columns into the one `job_results` row of the job, so a redelivered stage overwrites its own values
instead of adding a row. Call it in the same transaction as the compare-and-set that ends the stage.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.store.lifecycle import JobStatus
from eta.store.models import Job, JobResult, utcnow
from eta.store.sql import upsert

logger = logging.getLogger(__name__)


def _record_stage(
    session: Session,
    *,
    job_id: uuid.UUID,
    stage: str,
    status: JobStatus,
    columns: Mapping[str, Any],
    elapsed_ms: float,
    now: datetime | None,
) -> bool:
    # FOR UPDATE (a no-op on SQLite, whose transactions already hold the write lock) serialises writers
    # of one job, which makes the read-merge-write of `timings` safe.
    current = session.scalar(sa.select(Job.status).where(Job.id == job_id).with_for_update())
    if current != status:
        logger.info("job %s: not recording stage %s, the job is %s, not %s", job_id, stage, current, status)
        return False
    now = now or utcnow()
    stored = session.execute(
        sa.select(JobResult.timings, JobResult.stage_records).where(JobResult.job_id == job_id)
    ).first()
    timings, records = (stored.timings or {}, stored.stage_records or 0) if stored is not None else ({}, 0)
    values = {
        "job_id": job_id,
        **columns,
        "timings": {**timings, stage: float(elapsed_ms)},
        "stage_records": records + 1,
        "created_at": now,
        "updated_at": now,
    }
    upsert(
        session,
        JobResult,
        values,
        conflict_columns=("job_id",),
        update_columns=(*columns, "timings", "stage_records", "updated_at"),
    )
    # A JobResult of this job already in the session is now stale: reload it on next access.
    cached = session.identity_map.get(session.identity_key(JobResult, job_id))
    if cached is not None:
        session.expire(cached)
    return True


def record_pre_evaluation(
    *,
    session: Session,
    job_id: uuid.UUID,
    s_pre: float | None,
    pre_unsafe: bool | None,
    tau_pre: float,
    elapsed_ms: float,
    now: datetime | None = None,
) -> bool:
    """Store the pre-evaluation (None scores for a text-only job); the job must be `pre_evaluating`."""
    return _record_stage(
        session,
        job_id=job_id,
        stage="pre",
        status=JobStatus.PRE_EVALUATING,
        columns={"s_pre": s_pre, "pre_unsafe": pre_unsafe, "tau_pre": tau_pre},
        elapsed_ms=elapsed_ms,
        now=now,
    )


def record_generation(
    *,
    session: Session,
    job_id: uuid.UUID,
    vanilla_response: str,
    s_post: float,
    post_unsafe: bool,
    tau_post: float,
    policy: str,
    aligned: bool,
    response: str,
    trace: Sequence[Any],
    fingerprint: Mapping[str, Any],
    fingerprint_sha256: str,
    elapsed_ms: float,
    now: datetime | None = None,
) -> bool:
    """Store generation with alignment (vanilla answer, its score, the decision, the final answer and
    the alignment trace, and the fingerprint of models and parameters); the job must be `generating`.
    """
    return _record_stage(
        session,
        job_id=job_id,
        stage="generate",
        status=JobStatus.GENERATING,
        columns={
            "vanilla_response": vanilla_response,
            "s_post": s_post,
            "post_unsafe": post_unsafe,
            "tau_post": tau_post,
            "policy": policy,
            "aligned": aligned,
            "response": response,
            "trace": list(trace),
            "fingerprint": dict(fingerprint),
            "fingerprint_sha256": fingerprint_sha256,
        },
        elapsed_ms=elapsed_ms,
        now=now,
    )


def record_post_evaluation(
    *,
    session: Session,
    job_id: uuid.UUID,
    s_post_final: float,
    flagged: bool,
    flag_reasons: Sequence[str],
    elapsed_ms: float,
    now: datetime | None = None,
) -> bool:
    """Store the final audit score and the flag (also set on the job, where audit queries look);
    the job must be `post_evaluating`.
    """
    recorded = _record_stage(
        session,
        job_id=job_id,
        stage="post",
        status=JobStatus.POST_EVALUATING,
        columns={"s_post_final": s_post_final, "flag_reasons": list(flag_reasons)},
        elapsed_ms=elapsed_ms,
        now=now,
    )
    if recorded:
        session.execute(sa.update(Job).where(Job.id == job_id).values(flagged=flagged, updated_at=now or utcnow()))
    return recorded


def get_stage_results(*, session: Session, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, JobResult]:
    """Result rows of jobs whoever owns them, keyed by job id (jobs without one are absent): what a worker
    stage reads of the stages before it. Never for a request handler."""
    if not job_ids:
        return {}
    rows = session.scalars(sa.select(JobResult).where(JobResult.job_id.in_(list(job_ids))))
    return {row.job_id: row for row in rows}


def get_job_results(
    *, session: Session, tenant_id: uuid.UUID, job_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, JobResult]:
    """Result rows of several of the tenant's jobs in one query, keyed by job id (jobs without one are absent)."""
    if not job_ids:
        return {}
    rows = session.scalars(
        sa.select(JobResult)
        .join(Job, Job.id == JobResult.job_id)
        .where(JobResult.job_id.in_(list(job_ids)), Job.tenant_id == tenant_id)
    )
    return {row.job_id: row for row in rows}


def get_job_with_result(
    *, session: Session, tenant_id: uuid.UUID, job_id: uuid.UUID
) -> tuple[Job, JobResult | None] | None:
    """The tenant's job and its result row (None before any stage finished) in one query; None if the job is
    not theirs."""
    row = session.execute(
        sa.select(Job, JobResult)
        .outerjoin(JobResult, JobResult.job_id == Job.id)
        .where(Job.id == job_id, Job.tenant_id == tenant_id)
    ).first()
    return (row[0], row[1]) if row is not None else None
