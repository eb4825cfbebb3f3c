"""Stage results: what each worker stage computed, written idempotently into the job's result row.

A worker stage builds one `StageResult` per job (`pre_evaluation_result`, `generation_result`,
`post_evaluation_result`) and writes the group with `record_stage_results`, which first locks the jobs and
keeps those still in the stage's status; a stale message (the job moved on, or was cancelled) writes nothing
for that job. The rest are upserted into the one `job_results` row of each job, so a redelivered stage
overwrites its own values instead of adding a row. Call it in the same transaction as the compare-and-set
that ends the stage.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.store.lifecycle import JobStatus
from eta.store.models import Job, JobResult, utcnow
from eta.store.sql import insert_statement

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageResult:
    """What one stage writes for one job (`record_stage_results`)."""

    job_id: uuid.UUID
    # The stage's columns of `job_results`; every result of one call carries the same ones.
    columns: Mapping[str, Any]
    # Milliseconds the stage took for the job (its entry in `timings`).
    elapsed_ms: float
    # The audit flag, set on the job itself (post-evaluation only; None leaves it).
    flagged: bool | None = None


def record_stage_results(
    *,
    session: Session,
    stage: str,
    status: JobStatus,
    results: Sequence[StageResult],
    now: datetime | None = None,
) -> set[uuid.UUID]:
    """Write a stage's results for a group of jobs, in three statements however large the group: lock the jobs
    still in `status` (one SELECT ... FOR UPDATE, in id order), upsert their result rows (one multi-row INSERT
    ... ON CONFLICT that merges `timings` and counts `stage_records` in SQL), and set their audit flags (one
    UPDATE per flag value, post-evaluation only). A job that moved meanwhile writes nothing.

    Returns the ids of the jobs recorded.
    """
    if not results:
        return set()
    ids = [r.job_id for r in results]
    # FOR UPDATE (a no-op on SQLite, whose transactions already hold the write lock) serialises writers of one
    # job; id order keeps two copies of one message from deadlocking.
    current = set(session.connection().execute(
        sa.select(Job.id).where(Job.id.in_(ids), Job.status == status).order_by(Job.id).with_for_update()
    ).scalars())
    stale = [str(job_id) for job_id in ids if job_id not in current]
    if stale:
        logger.info("jobs %s: not recording stage %s, no longer %s", ", ".join(stale), stage, status)
    todo = [r for r in results if r.job_id in current]
    if not todo:
        return set()
    now = now or utcnow()
    names = list(todo[0].columns)
    rows = [{"job_id": r.job_id, **r.columns, "timings": {stage: float(r.elapsed_ms)}, "stage_records": 1,
             "created_at": now, "updated_at": now} for r in todo]
    insert = insert_statement(session, JobResult)
    excluded = insert.excluded
    timings: Any
    if session.get_bind().dialect.name == "postgresql":
        timings = sa.type_coerce(JobResult.timings.op("||")(excluded.timings), JobResult.timings.type)
    else:
        timings = sa.func.json_patch(JobResult.timings, excluded.timings)
    # The rows as parameters of one statement, not as its VALUES: the statement is compiled once per stage and
    # cached, and the driver still sends the rows as one multi-row INSERT (SQLAlchemy's "insertmanyvalues").
    session.connection().execute(insert.on_conflict_do_update(
        index_elements=["job_id"],
        set_={**{name: excluded[name] for name in names}, "timings": timings,
              "stage_records": JobResult.stage_records + 1, "updated_at": excluded.updated_at},
    ), rows)
    for flag in (True, False):
        flagged = [r.job_id for r in todo if r.flagged is flag]
        if flagged:
            session.connection().execute(
                sa.update(Job).where(Job.id.in_(flagged)).values(flagged=flag, updated_at=now))
    for r in todo:  # a JobResult of these jobs already in the session is now stale: reload it on next access
        cached = session.identity_map.get(session.identity_key(JobResult, r.job_id))
        if cached is not None:
            session.expire(cached)
    return {r.job_id for r in todo}


def pre_evaluation_result(*, job_id: uuid.UUID, s_pre: float | None, pre_unsafe: bool | None, tau_pre: float,
                          elapsed_ms: float) -> StageResult:
    """The pre-evaluation of a job (None scores for a text-only job)."""
    return StageResult(job_id, {"s_pre": s_pre, "pre_unsafe": pre_unsafe, "tau_pre": tau_pre}, elapsed_ms)


def generation_result(*, job_id: uuid.UUID, vanilla_response: str, s_post: float, post_unsafe: bool,
                      tau_post: float, policy: str, aligned: bool, response: str, trace: Sequence[Any],
                      fingerprint: Mapping[str, Any], fingerprint_sha256: str, elapsed_ms: float) -> StageResult:
    """Generation with alignment: the vanilla answer, its score, the decision, the final answer, the alignment
    trace, and the fingerprint of models and parameters."""
    return StageResult(job_id, {
        "vanilla_response": vanilla_response, "s_post": s_post, "post_unsafe": post_unsafe, "tau_post": tau_post,
        "policy": policy, "aligned": aligned, "response": response, "trace": list(trace),
        "fingerprint": dict(fingerprint), "fingerprint_sha256": fingerprint_sha256,
    }, elapsed_ms)


def post_evaluation_result(*, job_id: uuid.UUID, s_post_final: float, flagged: bool, flag_reasons: Sequence[str],
                           elapsed_ms: float) -> StageResult:
    """The final audit score and the flag (also set on the job, where audit queries look)."""
    return StageResult(job_id, {"s_post_final": s_post_final, "flag_reasons": list(flag_reasons)}, elapsed_ms,
                       flagged=flagged)


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
