"""The purge pass: `eta purge` and the workers' beat schedule both run `purge_expired`.

It walks expired jobs in short transactions of `batch_size` jobs (short row locks, bounded memory) until
none is left. The bytes of images left unreferenced are deleted inside the transaction that purged their
last job, while it holds those images' rows `FOR UPDATE`: rows of the database backend roll back with it;
files of the filesystem backend are deleted before the commit, so a resubmission of the same image (which
share-locks the image's row before it checks for the file) waits for the commit and then writes the file
again, rather than finding the file, committing its job and losing the file to a deletion after the commit.
Should that commit fail, the batch's jobs (expired and finished, the images' only users) stay unpurged
without their image until the next pass purges them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from eta.settings import Settings
from eta.store.blobs import make_blob_store
from eta.store.models import utcnow
from eta.store.repository.retention import count_expired_jobs, purge_expired_jobs

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PurgeReport:
    cutoff: datetime | None  # jobs created before this were purged (None: retention is off)
    jobs: int  # jobs whose vanilla answer and image were purged
    images: int  # image blobs deleted


def retention_cutoff(settings: Settings, *, days: int | None = None, now: datetime | None = None) -> datetime | None:
    """Jobs created before the returned time are expired; None when retention is off (0 days)."""
    days = settings.retention.retention_days if days is None else days
    if days <= 0:
        return None
    return (now or utcnow()) - timedelta(days=days)


def count_expired(sessions: sessionmaker[Session], *, cutoff: datetime) -> int:
    with sessions() as session:
        return count_expired_jobs(session=session, cutoff=cutoff)


def purge_expired(
    sessions: sessionmaker[Session],
    *,
    settings: Settings,
    days: int | None = None,
    now: datetime | None = None,
) -> PurgeReport:
    """Purge every finished job older than the retention period (`settings.retention.retention_days`, or `days`)."""
    now = now or utcnow()
    cutoff = retention_cutoff(settings, days=days, now=now)
    if cutoff is None:
        logger.info("retention is off (ETA_RETENTION_DAYS=0): nothing purged")
        return PurgeReport(cutoff=None, jobs=0, images=0)
    jobs = images = 0
    while True:
        with sessions() as session, session.begin():
            purged = purge_expired_jobs(session=session, cutoff=cutoff, limit=settings.retention.purge_batch_size,
                                        now=now)
            # Before the commit, under the images' row locks taken by purge_expired_jobs (see above).
            blobs = make_blob_store(session=session, settings=settings)
            images += sum(blobs.delete(digest) for digest in purged.unreferenced_images)
        jobs += len(purged.job_ids)
        if len(purged.job_ids) < settings.retention.purge_batch_size:
            break
    logger.info("purge done: %d jobs created before %s, %d image blobs deleted", jobs, cutoff.isoformat(), images)
    return PurgeReport(cutoff=cutoff, jobs=jobs, images=images)
