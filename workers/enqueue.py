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

from workers.stage_table import chain_from

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

class BrokerUnavailable(RuntimeError):
    """The message broker could not be reached; nothing was (reliably) sent."""


def chunks(job_ids: Sequence[uuid.UUID], size: int) -> list[list[uuid.UUID]]:
    return [list(job_ids[start:start + size]) for start in range(0, len(job_ids), size)]


def stage_chain(app: Celery, job_ids: Sequence[uuid.UUID], *, start: str = "pre") -> Signature:
    """The chain of stage tasks for one chunk, from stage `start` on: each task gets the ids the previous one
    handed on (the jobs that completed its stage)."""
    ids = [str(job_id) for job_id in job_ids]
    names = [stage.task for stage in chain_from(start)]
    first = app.signature(names[0], args=(ids,))
    return chain(first, *(app.signature(name) for name in names[1:]))


def send_chunks(app: Celery, job_ids: Sequence[uuid.UUID], *, start: str = "pre", chunk_size: int) -> int:
    """Publish one chain per chunk of `chunk_size` jobs. Returns the number of chains sent.

    Raises:
        BrokerUnavailable: the broker refused or could not be reached (some chunks may have gone out:
            re-sending them is harmless, the stages are idempotent).
    """
    from kombu.exceptions import OperationalError

    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for chunk in chunks(job_ids, chunk_size):
                stage_chain(app, chunk, start=start).apply_async(producer=producer, retry=False)
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


def enqueue_jobs(job_ids: Sequence[uuid.UUID], *, app: Celery | None = None, chunk_size: int | None = None) -> None:
    """Send newly committed `queued` jobs to the workers, `chunk_size` jobs per chain (default
    ETA_CHUNK_SIZE): a chunk's images share CLIP forwards, its prompts share `generate` calls.

    Raises:
        BrokerUnavailable: the broker could not be reached within ETA_BROKER_CONNECT_TIMEOUT_S.
    """
    if not job_ids:
        return
    if app is None:
        from workers.celery_app import celery_app

        app = celery_app
    size = chunk_size or int(app.conf.get("eta_chunk_size") or 32)
    sent = send_chunks(app, job_ids, chunk_size=size)
    logger.info("enqueued %d jobs in %d chunks (first %s)", len(job_ids), sent, job_ids[0])
