"""Sending jobs to the workers: ids in chunks, each chunk a chain of the three stage tasks.

Call `enqueue_jobs` only after the transaction that created the jobs has committed (a worker must find
them). When the broker cannot be reached it raises `BrokerUnavailable` within a few seconds; the jobs stay
`queued` in the database and the sweeper enqueues them once the broker is back.

This module does not import the tasks (nor torch): it names them, so the API process stays light.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from celery import chain
from celery.canvas import Signature

from workers.celery_config import EtaCelery, configured_app
from workers.stage_table import chain_from

if TYPE_CHECKING:
    from celery import Celery

    from eta.settings import Settings

__all__ = ["BrokerUnavailable", "EtaCelery", "client_app", "enqueue_jobs", "publish_batch_callback", "send_chunks",
           "stage_chain"]

logger = logging.getLogger(__name__)

def client_app(settings: Settings) -> EtaCelery:
    """The Celery app a process that only sends messages uses (the API): the workers' configuration for
    `settings` (broker, queues, routes; the stages' limits checked), no task registered.

    Raises:
        eta.settings.SettingsError: the stages' limits contradict each other.
    """
    return configured_app(settings)


class BrokerUnavailable(RuntimeError):
    """The message broker could not be reached; nothing was (reliably) sent."""


def chunks(job_ids: Sequence[uuid.UUID], size: int) -> list[list[uuid.UUID]]:
    return [list(job_ids[start:start + size]) for start in range(0, len(job_ids), size)]


# Priorities 0 (first) to 9 (last): a message without one (a sweeper re-send) goes first.
LOWEST_PRIORITY = 9


def fair_priority(chunks_ahead: int) -> int:
    """The priority of a chunk whose tenant already has `chunks_ahead` chunks in the pipeline.

    A tenant with nothing in flight gets 0 and overtakes every tenant with a backlog; the more a tenant has in
    flight, the later its next chunks (on a log scale: 0, 1, 2-3, 4-7, ... chunks ahead). So one tenant's
    10,000-job batch delays another's single job by about one chunk, a lone tenant still keeps every worker
    busy (a priority orders the queues, it caps nothing), and a tenant's own chunks keep their order.
    """
    return min(LOWEST_PRIORITY, max(0, chunks_ahead).bit_length())


def stage_chain(app: Celery, job_ids: Sequence[uuid.UUID], *, start: str = "pre", priority: int | None = None
                ) -> Signature:
    """The chain of stage tasks for one chunk, from stage `start` on: each task gets the ids the previous one
    handed on (the jobs that completed its stage). Every stage message of the chunk has `priority`."""
    ids = [str(job_id) for job_id in job_ids]
    names = [stage.task for stage in chain_from(start)]
    options = {"priority": priority} if priority is not None else {}
    first = app.signature(names[0], args=(ids,), **options)
    return chain(first, *(app.signature(name, **options) for name in names[1:]))


def send_chunks(app: Celery, job_ids: Sequence[uuid.UUID], *, start: str = "pre", chunk_size: int,
                ahead: int | None = None) -> int:
    """Publish one chain per chunk of `chunk_size` jobs. Returns the number of chains sent.

    `ahead`: jobs of the same tenant already in the pipeline (the chunks get `fair_priority`); None sends them
    first (the sweeper's re-sends: they have waited already).

    Raises:
        BrokerUnavailable: the broker refused or could not be reached (some chunks may have gone out:
            re-sending them is harmless, the stages are idempotent).
    """
    from kombu.exceptions import OperationalError

    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for index, chunk in enumerate(chunks(job_ids, chunk_size)):
                priority = None if ahead is None else fair_priority(ahead // chunk_size + index)
                stage_chain(app, chunk, start=start, priority=priority).apply_async(producer=producer, retry=False)
                sent += 1
    except (OperationalError, ConnectionError, TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"the message broker is unreachable: {exc}") from exc
    except Exception as exc:
        # Transport-specific connection errors (redis-py's are not OSError subclasses).
        if _is_connection_error(exc):
            raise BrokerUnavailable(f"the message broker is unreachable: {exc}") from exc
        raise
    return sent


def _is_connection_error(exc: BaseException) -> bool:
    try:
        import redis.exceptions
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError)


def enqueue_jobs(job_ids: Sequence[uuid.UUID], *, app: EtaCelery, chunk_size: int | None = None,
                 ahead: int = 0) -> None:
    """Send newly committed `queued` jobs to the workers through `app`, `chunk_size` jobs per chain (default: the
    ETA_CHUNK_SIZE of the settings the app was built from): a chunk's images share CLIP forwards, its prompts
    share `generate` calls.

    `ahead`: how many other jobs of the same tenant are still in the pipeline; it sets the chunks' place in
    the queues (`fair_priority`), so that tenants take turns.

    Raises:
        BrokerUnavailable: the broker could not be reached within ETA_BROKER_CONNECT_TIMEOUT_S.
    """
    if not job_ids:
        return
    size = chunk_size or app.settings.workers.chunk_size
    sent = send_chunks(app, job_ids, chunk_size=size, ahead=ahead)
    logger.info("enqueued %d jobs in %d chunks (first %s)", len(job_ids), sent, job_ids[0])


def publish_batch_callback(app: Celery, batch_id: uuid.UUID, *, patience_s: float = 30.0) -> None:
    """Publish the callback task of a completed batch, trying again for up to `patience_s` while the broker is
    unreachable (a Redis restart): a callback not published now waits for the sweeper's late re-send.

    Raises:
        BrokerUnavailable: the broker stayed unreachable.
    """
    import time

    from workers.stage_table import CALLBACK_TASK

    deadline = time.monotonic() + patience_s
    delay = 0.5
    while True:
        try:
            app.send_task(CALLBACK_TASK, args=[str(batch_id)], retry=False)
            return
        except Exception as exc:
            from kombu.exceptions import OperationalError

            if not isinstance(exc, OperationalError | ConnectionError | TimeoutError | OSError) \
                    and not _is_connection_error(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise BrokerUnavailable(f"the message broker is unreachable: {exc}") from exc
            logger.warning("batch %s: could not publish its callback (%s); trying again in %.1fs", batch_id, exc,
                           delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
