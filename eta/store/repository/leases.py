"""Worker leases on jobs: the worker holding a job pushes its deadline back while it works, and a lease that
ran out tells the sweeper (`recovery.find_stalled_jobs`) that the worker died, however long its stage may take.

Functions never commit: the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.store.lifecycle import ACTIVE_JOB_STATUSES
from eta.store.models import Job
from eta.store.sql import affected_rows


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
