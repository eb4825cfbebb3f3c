"""The sweeper: re-enqueues jobs whose message was lost, and completes batches nobody completed.

A job can be left behind by a worker killed mid-stage (the embedded broker forgets its unacknowledged
message; Redis redelivers it only after the visibility timeout), a Redis flush or restart, a hard time
limit, or a broker that was down when the API enqueued. The database says where each job is; the sweeper
finds the jobs nobody is moving forward and sends them again from the stage they need:

- A job whose **lease ran out**: the worker that held it (running its stage, or handing it on to the next
  one) stopped renewing it, so it died. Found within `lease_s` plus one sweep interval, whatever the stage's
  time limit and whatever the queues hold; a slow stage on a live worker keeps its lease and is never swept.
- **The broker lost its data** (a flush, or a restart without persistence): a marker key the sweeper keeps in
  Redis is gone. Every job no live worker holds is re-sent at once (without counting an attempt: the loss was
  not the job's), and so is the callback of every completed batch not yet delivered.
- A job **no worker holds** that has sat in one status longer than its timeout (its message lost some other
  way). A waiting status (`queued`, `generating`, `post_evaluating`) is skipped while that queue still holds
  messages: a backlog is not a loss. While that queue is empty, a job waiting there unheld for
  `sweep_unheld_after_s` (60 s) is sent again: its message is in no queue and no worker runs it (a worker that
  runs a job holds its lease), so a worker took it and died, or lost its broker connection, before starting it;
  Redis gives such a message back only after its visibility timeout (hours).
- A completed batch whose callback was not delivered `callback_resend_after_s` after it completed gets its
  callback task again (receivers deduplicate on `ETA-Event-Id`).

Each re-enqueue is a compare-and-set on (status, status_changed_at, no live lease) that counts one more
attempt; the transaction commits only after the messages are published, so a broker that is still down
changes nothing. Re-sending is harmless when the original message was only slow: every stage is idempotent.

A killed worker and a job that kills its worker (an input that crashes a model) look the same from here, so a
re-sent job goes in a smaller chunk each time (`resend_chunk_size`: half the chunk size per attempt, down to
one job): a poison job ends up alone, and the jobs that shared its chunk go through in chunks without it. A job
fails as `stalled` only once it is out of attempts (`ETA_MAX_STAGE_ATTEMPTS`) *and* its last attempt ran it
alone, so it failed for what it is, not for the company it kept.
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
from workers.enqueue import BrokerUnavailable, publish_batch_callback, send_chunks
from workers.runner import STALLED
from workers.stage_table import RESTART_STAGE, WAITING_QUEUE, sweep_timeouts

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    requeued: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    skipped_backlog: list[str] = field(default_factory=list)
    completed_batches: list[uuid.UUID] = field(default_factory=list)
    broker_data_lost: bool = False
    callbacks_resent: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"requeued": self.requeued, "failed_stalled": self.failed, "skipped_backlog": self.skipped_backlog,
                "completed_batches": [str(b) for b in self.completed_batches],
                "broker_data_lost": self.broker_data_lost, "callbacks_resent": self.callbacks_resent}


def resend_chunk_size(attempt: int, settings: Settings) -> int:
    """Jobs per message when a job is sent for its `attempt`-th try of a stage (the first try is the API's chunk):
    the chunk size halved per try after the first, at least one."""
    return max(1, settings.workers.chunk_size >> max(attempt - 1, 0))


def out_of_attempts(attempts: int, settings: Settings) -> bool:
    """Whether a stalled job that has had `attempts` tries of its stage fails rather than being sent again: it has
    used ETA_MAX_STAGE_ATTEMPTS, and the last of them ran it alone (see the module docstring)."""
    return attempts >= settings.workers.max_stage_attempts and resend_chunk_size(attempts, settings) == 1


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
                size = getattr(channel, "_size", None)
                if size is not None:
                    # kombu's virtual transports (Redis, the embedded folder) count a queue's messages with
                    # `_size`; a passive declare first asks whether the queue exists, which under a Redis key
                    # prefix looks for the unprefixed key and answers "no such queue" for a full queue.
                    depths[name] = int(size(name))
                    continue
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
    if broker_lost_data(app, settings):
        logger.warning("sweep: the broker lost its data (flushed or restarted empty); re-sending every job no "
                       "worker holds, and undelivered batch callbacks")
        report.broker_data_lost = True
        _resend_everything(sessions=sessions, app=app, settings=settings, now=now, report=report, limit=limit)
    timeouts: dict[JobStatus, timedelta] = {}
    for status, timeout in sweep_timeouts(settings).items():
        queue = WAITING_QUEUE.get(status)
        if queue is not None and depths.get(queue, 0) > 0:
            report.skipped_backlog.append(str(status))
            continue
        # Its queue is empty: a job waiting there that no worker holds has no message a worker will take.
        timeouts[status] = (min(timeout, timedelta(seconds=settings.workers.sweep_unheld_after_s))
                            if queue is not None else timeout)
    if report.skipped_backlog:
        logger.info("sweep: not sweeping %s, their queues hold messages (%s)",
                    ", ".join(report.skipped_backlog), depths)

    with sessions() as session, session.begin():
        stalled = repo.find_stalled_jobs(session=session, timeouts=timeouts, now=now, limit=limit)
        touched: set[uuid.UUID] = set()
        to_send: dict[tuple[str, int], list[uuid.UUID]] = {}
        for job in stalled:
            if out_of_attempts(job.attempts, settings):
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
                to_send.setdefault((RESTART_STAGE[job.status].name, job.attempts + 1), []).append(job.job_id)
        # Publish before committing: if the broker is down the exception rolls the claims back.
        for (stage, attempt), job_ids in to_send.items():
            send_chunks(app, job_ids, start=stage, chunk_size=resend_chunk_size(attempt, settings))
            report.requeued[stage] = report.requeued.get(stage, 0) + len(job_ids)
    report.completed_batches = complete_finished_batches(sessions, touched)
    # Batches that completed one sweep interval's worth of time `callback_resend_after_s` ago: each comes up in
    # about one pass (a callback the receiver refused for good is not sent forever).
    due = now - timedelta(seconds=settings.workers.callback_resend_after_s)
    resend_callbacks(sessions=sessions, app=app, report=report, finished_before=due,
                     finished_after=due - timedelta(seconds=settings.workers.sweep_interval_s))
    return report


# Marker key of the broker's data: gone means the broker lost every message (see the module docstring).
_EPOCH_KEY = "eta.broker-epoch"
# The marker value this process set or saw last, by broker (its URL and key prefix): a broker this process has not
# looked at yet is not in it. One process may sweep several brokers (a test session does).
_seen_epochs: dict[str, str] = {}


def broker_lost_data(app: Celery, settings: Settings) -> bool:
    """Whether the Redis broker lost its data since this process last looked (its marker key is gone).

    The first look of a process at a broker only sets the marker: a broker emptied before this process started is
    recovered by the timeouts instead. Always False for the embedded broker (its messages are files).
    """
    from workers.broker import broker_url, is_embedded

    if is_embedded(settings):
        return False
    import redis

    key = f"{settings.broker.key_prefix}{_EPOCH_KEY}"
    url = broker_url(settings)
    broker = f"{url}|{key}"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=settings.broker.connect_timeout_s, socket_timeout=10)
        try:
            current = client.get(key)
            if current is None:
                token = uuid.uuid4().hex
                client.set(key, token)
                lost = broker in _seen_epochs
                _seen_epochs[broker] = token
                return lost
            _seen_epochs[broker] = current.decode() if isinstance(current, bytes) else str(current)
            return False
        finally:
            client.close()
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"the message broker is unreachable: {exc}") from exc


def _resend_everything(*, sessions: sessionmaker[Session], app: Celery, settings: Settings, now: datetime,
                       report: SweepReport, limit: int) -> None:
    """Re-send every active job that no live worker holds, page by page, and every undelivered callback."""
    everything = dict.fromkeys(sweep_timeouts(settings), timedelta(0))
    while True:
        with sessions() as session, session.begin():
            lost = repo.find_stalled_jobs(session=session, timeouts=everything, now=now, limit=limit)
            to_send: dict[tuple[str, int], list[uuid.UUID]] = {}
            for job in lost:
                if repo.requeue_stalled_job(session=session, job_id=job.job_id, status=job.status,
                                            status_changed_at=job.status_changed_at, now=now, count_attempt=False):
                    to_send.setdefault((RESTART_STAGE[job.status].name, job.attempts), []).append(job.job_id)
            for (stage, attempt), job_ids in to_send.items():
                send_chunks(app, job_ids, start=stage, chunk_size=resend_chunk_size(attempt, settings))
                report.requeued[stage] = report.requeued.get(stage, 0) + len(job_ids)
        if len(lost) < limit:
            break
    resend_callbacks(sessions=sessions, app=app, finished_before=now, report=report)


def resend_callbacks(*, sessions: sessionmaker[Session], app: Celery, report: SweepReport, finished_before: datetime,
                     finished_after: datetime | None = None) -> None:
    """Send again the callback task of completed batches that finished in the window and are undelivered."""
    with sessions() as session:
        batch_ids = repo.find_undelivered_callbacks(session=session, finished_before=finished_before,
                                                    finished_after=finished_after)
    for batch_id in batch_ids:
        publish_batch_callback(app, batch_id)
    report.callbacks_resent += len(batch_ids)


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
        publish_batch_callback(app, batch_id)
