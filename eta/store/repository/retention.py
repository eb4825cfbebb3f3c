"""Retention: after a configured number of days a finished job loses its image bytes and vanilla answer.

What stays: the job, its prompt, every score and threshold, both flags, the final answer, the alignment
trace, the fingerprint, the image's sha256 and metadata, and every verdict. What goes: the vanilla
answer (`job_results.vanilla_response`), and the image bytes once no unpurged job of any tenant uses them
(images are stored once per content, shared across tenants). `jobs.purged_at` records when, so readers
answer "purged" rather than "missing".
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.store.lifecycle import TERMINAL_JOB_STATUSES
from eta.store.models import Image, Job, JobResult, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PurgedJobs:
    # Jobs marked purged by this call (their vanilla answers are gone).
    job_ids: list[uuid.UUID]
    # Image digests no unpurged job refers to any more: delete their bytes from the blob store.
    unreferenced_images: list[str]


def _expired(cutoff: datetime) -> list[sa.ColumnElement[bool]]:
    # `purged_at IS NULL` and `created_at` match the partial index ix_jobs_unpurged_created.
    return [Job.purged_at.is_(None), Job.created_at < cutoff, Job.status.in_(sorted(TERMINAL_JOB_STATUSES))]


def count_expired_jobs(*, session: Session, cutoff: datetime) -> int:
    """Finished jobs created before `cutoff` that still hold their image and vanilla answer."""
    return int(session.scalar(sa.select(sa.func.count()).select_from(Job).where(*_expired(cutoff))) or 0)


def purge_expired_jobs(
    *, session: Session, cutoff: datetime, limit: int = 1000, now: datetime | None = None
) -> PurgedJobs:
    """Mark up to `limit` finished jobs created before `cutoff` purged and clear their vanilla answers.

    Returns the jobs purged and the image digests left unreferenced; the caller deletes those blobs in
    this transaction, before it commits (files too). Jobs still running are never purged. Concurrent
    purges skip each other's rows (`SKIP LOCKED` on Postgres).

    An image's row in `images` is locked (`FOR UPDATE`, in digest order) before checking whether a live job
    still uses it, and stays locked until the commit: a submission of that image key-share-locks the row
    before it checks or writes the bytes (`store_image`), and again when inserting its job (the foreign-key
    check). So the check waits for a submission already under way and then sees its job, and a submission
    arriving later waits until the bytes are deleted and the purge committed, then writes them again.
    """
    now = now or utcnow()
    rows = session.execute(
        sa.select(Job.id, Job.image_sha256)
        .where(*_expired(cutoff))
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return PurgedJobs(job_ids=[], unreferenced_images=[])
    job_ids = [row.id for row in rows]
    session.execute(sa.update(Job).where(Job.id.in_(job_ids)).values(purged_at=now, updated_at=now))
    session.execute(
        sa.update(JobResult).where(JobResult.job_id.in_(job_ids)).values(vanilla_response=None, updated_at=now)
    )
    digests = sorted({row.image_sha256 for row in rows if row.image_sha256 is not None})
    unreferenced = _unreferenced_images(session, digests)
    logger.info("purged %d jobs created before %s; %d images no longer referenced", len(job_ids),
                cutoff.isoformat(), len(unreferenced))
    return PurgedJobs(job_ids=job_ids, unreferenced_images=unreferenced)


def _unreferenced_images(session: Session, digests: Sequence[str]) -> list[str]:
    if not digests:
        return []
    session.execute(sa.select(Image.sha256).where(Image.sha256.in_(digests)).order_by(Image.sha256).with_for_update())
    still_used = set(
        session.scalars(
            sa.select(Job.image_sha256).where(Job.image_sha256.in_(digests), Job.purged_at.is_(None)).distinct()
        )
    )
    return [digest for digest in digests if digest not in still_used]
