"""The sweeper: re-enqueues jobs whose message was lost, and completes batches nobody completed.

A job can be left behind by a worker killed mid-stage (the embedded broker forgets its unacknowledged
message; Redis redelivers it only after the visibility timeout), a Redis flush or restart, a hard time
limit, or a broker that was down when the API enqueued. The database says where each job is; the sweeper
finds jobs that sat in one status longer than its timeout and sends them again from the stage they need.

- A waiting status (`queued`, `generating`, `post_evaluating`: the job waits in the stage's queue or runs)
  is skipped while that queue still holds messages: a backlog is not a loss.
- Each re-enqueue is a compare-and-set on (status, status_changed_at) that counts one more attempt; the
  transaction commits only after the messages are published, so a broker that is still down changes
  nothing. A job out of attempts ends `failed` with code `stalled`.
- Re-sending is harmless when the original message was only slow: every stage is idempotent.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from eta.settings import Settings
from eta.store import repository as repo
from eta.store.lifecycle import JobStatus
from eta.store.models import utcnow
from workers.enqueue import BrokerUnavailable, send_chunks
from workers.runner import STALLED
from workers.stage_table import CALLBACK_TASK, RESTART_STAGE, WAITING_QUEUE, sweep_timeouts

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    requeued: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    skipped_backlog: list[str] = field(default_factory=list)
    completed_batches: list[uuid.UUID] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"requeued": self.requeued, "failed_stalled": self.failed, "skipped_backlog": self.skipped_backlog,
                "completed_batches": [str(b) for b in self.completed_batches]}


def queue_depths(app: Celery, queues: list[str]) -> dict[str, int]:
    """Messages waiting in each queue (not counting those a worker holds).

    Raises:
        BrokerUnavailable: the broker cannot be reached.
    """
    from kombu.exceptions import ChannelError, OperationalError

    depths: dict[str, int] = {}
    try:
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            for name in queues:
                try:
                    depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except ChannelError:
                    depths[name] = 0  # never declared, or emptied by a flush
    except (OperationalError, OSError) as exc:
        raise BrokerUnavailable(f"the message broker is unreachable: {exc}") from exc
    return depths


def sweep(*, sessions: sessionmaker[Session], app: Celery, settings: Settings, now: datetime | None = None,
          limit: int = 5000) -> SweepReport:
    """One pass: re-enqueue stalled jobs, fail those out of attempts, complete finished batches.

    Args:
        now: the time to judge staleness against (tests pass a later time instead of waiting).
    Raises:
        BrokerUnavailable: the broker cannot be reached (nothing was changed).
    """
    now = now or utcnow()
    report = SweepReport()
    depths = queue_depths(app, sorted(set(WAITING_QUEUE.values())))
    timeouts: dict[JobStatus, timedelta] = {}
    for status, timeout in sweep_timeouts(settings).items():
        queue = WAITING_QUEUE.get(status)
        if queue is not None and depths.get(queue, 0) > 0:
            report.skipped_backlog.append(str(status))
            continue
        timeouts[status] = timeout
    if report.skipped_backlog:
        logger.info("sweep: not sweeping %s, their queues hold messages (%s)",
                    ", ".join(report.skipped_backlog), depths)

    with sessions() as session, session.begin():
        stalled = repo.find_stalled_jobs(session=session, timeouts=timeouts, now=now, limit=limit)
        to_send: dict[str, list[uuid.UUID]] = {}
        touched: set[uuid.UUID] = set()
        for job in stalled:
            if job.attempts >= settings.workers.max_stage_attempts:
                if repo.transition_job(session=session, job_id=job.job_id, expected=job.status, to=JobStatus.FAILED,
                                       error_code=STALLED, now=now,
                                       error_message=f"no progress in status {job.status} after "
                                                     f"{job.attempts} attempts"):
                    logger.warning("job %s: stalled in %s after %d attempts, failed", job.job_id, job.status,
                                   job.attempts)
                    report.failed += 1
                    if job.batch_id is not None:
                        touched.add(job.batch_id)
                continue
            if repo.requeue_stalled_job(session=session, job_id=job.job_id, status=job.status,
                                        status_changed_at=job.status_changed_at, now=now):
                logger.info("job %s: stalled in %s since %s, re-enqueued (attempt %d)", job.job_id, job.status,
                            job.status_changed_at.isoformat(), job.attempts + 1)
                to_send.setdefault(RESTART_STAGE[job.status].name, []).append(job.job_id)
        # Publish before committing: if the broker is down the exception rolls the claims back.
        for stage, job_ids in to_send.items():
            send_chunks(app, job_ids, start=stage, chunk_size=settings.workers.chunk_size)
            report.requeued[stage] = len(job_ids)
    report.completed_batches = complete_finished_batches(sessions, touched)
    return report


def complete_finished_batches(sessions: sessionmaker[Session], also: set[uuid.UUID] | None = None
                              ) -> list[uuid.UUID]:
    """Complete every in-progress batch whose jobs have all ended (a worker died between the two commits).

    Returns the batches this call completed.
    """
    with sessions() as session:
        candidates = set(repo.find_completable_batches(session=session))
    completed = []
    for batch_id in sorted(candidates | (also or set())):
        with sessions() as session, session.begin():
            if repo.complete_batch_if_finished(session=session, batch_id=batch_id):
                completed.append(batch_id)
    return completed


def with_callbacks(app: Celery, sessions: sessionmaker[Session], batch_ids: list[uuid.UUID]) -> None:
    """Send the callback task of each completed batch that has a callback URL."""
    if not batch_ids:
        return
    with sessions() as session:
        with_url = repo.batches_with_callback(session=session, batch_ids=batch_ids)
    for batch_id in with_url:
        app.send_task(CALLBACK_TASK, args=[str(batch_id)])
