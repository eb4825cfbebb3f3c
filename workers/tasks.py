"""Celery tasks: one per stage of the table over chunks of job ids; batch callbacks, the sweeper and the retention
purge. `register_tasks` makes them for an app (`workers.app.create_celery_app` calls it); every task extends
`WorkerTask`, which reaches the process's settings, sessions and models through cached properties.

A stage task takes a list of job ids (the first in a chain, or what the previous stage handed on) and
returns the ids of the jobs that completed its stage, which Celery passes to the next task of the chain.
Errors are sorted here:

- transient (database or broker unreachable, SQLite busy): the message is retried with exponential
  backoff, up to ETA_STAGE_MAX_RETRIES; after that the jobs stay in their status for the sweeper;
- CUDA out of memory: retried at once with half the batch size; at batch size 1 the jobs fail
  (`out_of_memory`);
- soft time limit: the jobs still held fail (`stage_timeout`) and the jobs already saved go on (re-raising,
  as is usual, would break the chain and strand them until the sweeper);
- per-job errors (image, parameters, a model error on one input) fail only that job; see `workers.stages`.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery import Celery, Task
from celery import signals as celery_signals
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session, sessionmaker

from eta.settings import Settings
from workers import signals  # noqa: F401 - signals connects the worker process hooks
from workers.context import WorkerContext
from workers.enqueue import publish_batch_callback
from workers.leases import LeaseKeeper, lease_owner, release
from workers.runner import (
    OUT_OF_MEMORY,
    STAGE_TIMEOUT,
    StageContext,
    StageProgress,
    StageRunner,
    complete_batches,
    fail_pending,
    parse_ids,
)
from workers.stage_table import CALLBACK_TASK, PURGE_TASK, SWEEP_TASK
from workers.stage_types import Stage

if TYPE_CHECKING:
    from workers.celery_config import EtaCelery

logger = logging.getLogger(__name__)


class WorkerTask(Task):
    """The base of every task here (Celery's task-class pattern): the process's context, made once per process
    and shared by the app's tasks, through cached properties. Its `stage` is the stage a stage task runs."""

    stage: Stage | None = None

    @cached_property
    def context(self) -> WorkerContext:
        app: EtaCelery = self.app
        return app.context

    @property
    def settings(self) -> Settings:
        return self.context.settings

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.context.sessions()

def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def is_transient(exc: BaseException) -> bool:
    """Errors that say nothing about the jobs, only that a service was briefly unavailable."""
    import sqlalchemy.exc
    from kombu.exceptions import OperationalError as BrokerError

    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError | sqlalchemy.exc.TimeoutError
                  | BrokerError | ConnectionError | TimeoutError):
        return True
    try:
        import redis.exceptions
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError)


def _propagates(exc: BaseException) -> bool:
    """Errors a stage must not pin on a job: the task handles them for the whole message."""
    return isinstance(exc, SoftTimeLimitExceeded) or is_out_of_memory(exc) or is_transient(exc)


def backoff_s(retries: int, settings: Settings) -> float:
    """Exponential backoff with full jitter: up to 2, 4, 8, ... seconds, capped."""
    cap = min(2.0 ** (retries + 1), float(settings.workers.retry_backoff_max_s))
    return random.uniform(cap / 2, cap)  # noqa: S311 - jitter, not security


def run_stage(task: WorkerTask, stage: Stage, raw_ids: list[Any], batch_size: int | None) -> list[str]:
    """Run `stage` over the message's jobs, in the task's context, sorting what goes wrong (see the module
    docstring).

    Returns the ids of the jobs that go on to the next stage.
    """
    context = task.context
    settings = context.settings
    job_ids = parse_ids(raw_ids)
    if not job_ids:
        return []
    size = batch_size or stage.limits_in(settings).batch_size
    ids_text = ", ".join(map(str, job_ids))
    name = stage.name
    logger.info("stage %s started: jobs %s (batch size %d, retry %d)", name, ids_text, size, task.request.retries)
    owner = lease_owner(getattr(task.request, "id", None))
    ctx = StageContext(sessions=context.sessions(), models=context.models_for(stage.roles), settings=settings,
                       lease_owner=owner)
    progress = StageProgress(stage=stage)
    keeper = LeaseKeeper(ctx.sessions, owner=owner, lease_s=settings.workers.lease_s,
                         held=lambda: [*progress.pending, *progress.forward])
    try:
        with keeper:
            StageRunner(ctx, progress, batch_size=size, propagates=_propagates).run(job_ids)
    except SoftTimeLimitExceeded:
        logger.error("stage %s: soft time limit reached; failing jobs %s", name, _ids(progress.pending))
        fail_pending(ctx, progress, STAGE_TIMEOUT, f"the {name} stage exceeded its time limit")
    except Exception as exc:
        if is_out_of_memory(exc):
            _free_accelerator_memory()
            if size > 1:
                logger.warning("stage %s: out of memory at batch size %d, retrying jobs %s at %d", name, size,
                               ids_text, size // 2)
                raise task.retry(kwargs={"batch_size": size // 2}, countdown=1, exc=exc,
                                 max_retries=task.request.retries + 1) from exc
            logger.error("stage %s: out of memory at batch size 1; failing jobs %s", name, _ids(progress.pending))
            fail_pending(ctx, progress, OUT_OF_MEMORY, f"out of accelerator memory in the {name} stage: {exc}")
        elif is_transient(exc):
            countdown = backoff_s(task.request.retries, settings)
            logger.warning("stage %s: transient error on jobs %s (%s); retry %d in %.1fs", name, ids_text, exc,
                           task.request.retries + 1, countdown)
            raise task.retry(countdown=countdown, exc=exc, max_retries=settings.workers.stage_max_retries) from exc
        else:
            logger.exception("stage %s: unexpected error on jobs %s; the sweeper will retry them", name, ids_text)
            raise
    finally:
        # Whatever happened, jobs that ended here may have been the last of their batch.
        _complete(task, ctx, progress)
    logger.info("stage %s done: jobs %s handed on, %d failed, model calls %s", name, _ids(progress.forward),
                len(progress.failed), progress.model_calls)
    return [str(job_id) for job_id in progress.forward]


def _ids(job_ids: Any) -> str:
    return ", ".join(map(str, job_ids)) or "(none)"


def _complete(task: WorkerTask, ctx: StageContext, progress: StageProgress) -> None:
    """Complete the batches whose last job ended here, and send their callbacks."""
    if not progress.touched_batches:
        return
    try:
        for batch_id in complete_batches(ctx, sorted(progress.touched_batches)):
            publish_batch_callback(task.app, batch_id)
    except Exception:
        # The jobs are saved; the sweeper completes any batch left in progress.
        logger.exception("could not complete batches %s", _ids(progress.touched_batches))


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _stage_run(stage: Stage) -> Callable[..., list[str]]:
    """The body of `stage`'s task: its name and docstring come from the stage table."""

    def run(self: WorkerTask, job_ids: list[str], batch_size: int | None = None) -> list[str]:
        return run_stage(self, stage, job_ids, batch_size)

    run.__name__ = run.__qualname__ = stage.task.rpartition(".")[2]
    run.__doc__ = f"Stage {stage.name} over a chunk of jobs ({stage.step.__doc__ or ''})".strip()
    return run


def register_tasks(app: Celery, stages: Sequence[Stage]) -> None:
    """Make `app`'s tasks: one per stage of `stages`, named and routed by the table, and the control tasks."""
    for stage in stages:
        app.task(bind=True, name=stage.task, base=WorkerTask, shared=False, stage=stage)(_stage_run(stage))
    for name, body in ((CALLBACK_TASK, send_batch_callback), (SWEEP_TASK, sweep), (PURGE_TASK, purge_expired)):
        app.task(bind=True, name=name, base=WorkerTask, shared=False)(body)


@celery_signals.task_success.connect
def release_handed_on(sender: Task | None = None, result: Any = None, **_: Any) -> None:
    """The handed-on jobs' leases go once the chain's next message is out (Celery signals success only after
    publishing it; if publishing fails, the leases run out and the sweeper re-sends the jobs)."""
    if not isinstance(sender, WorkerTask) or sender.stage is None or not result:
        return
    release(sender.sessions, owner=lease_owner(sender.request.id), job_ids=parse_ids(result))


def send_batch_callback(self: WorkerTask, batch_id: str) -> None:
    """POST the signed summary of a completed batch to its callback URL, retrying with backoff."""
    from workers.callbacks import CallbackError, batch_summary, post_callback

    settings = self.settings
    batch_uuid = uuid.UUID(batch_id)
    sessions = self.sessions
    try:
        with sessions() as session:
            callback = batch_summary(session, batch_uuid)
        if callback is None:
            logger.info("batch %s: no callback to send", batch_id)
            return
        status = post_callback(callback, settings=settings)
    except CallbackError as exc:
        if not exc.retryable:
            logger.error("batch %s: callback refused for good: %s", batch_id, exc)
            return
        countdown = backoff_s(self.request.retries, settings)
        logger.warning("batch %s: callback failed (%s); retry %d in %.1fs", batch_id, exc, self.request.retries + 1,
                       countdown)
        raise self.retry(countdown=countdown, exc=exc, max_retries=settings.workers.callback_max_retries) from exc
    from eta.store import repository as repo

    with sessions() as session, session.begin():
        repo.mark_batch_callback_sent(session=session, batch_id=batch_uuid)
    logger.info("batch %s: callback delivered (HTTP %d)", batch_id, status)


def sweep(self: WorkerTask) -> dict[str, Any]:
    """One sweeper pass (the beat schedule runs it every ETA_SWEEP_INTERVAL_S)."""
    from workers.enqueue import BrokerUnavailable
    from workers.sweeper import sweep as sweep_once
    from workers.sweeper import with_callbacks

    try:
        report = sweep_once(sessions=self.sessions, app=self.app, settings=self.settings)
    except BrokerUnavailable as exc:
        logger.warning("sweep skipped: %s", exc)
        return {}
    with_callbacks(self.app, self.sessions, report.completed_batches)
    logger.info("sweep: %s", report.as_dict())
    return report.as_dict()


def purge_expired(self: WorkerTask) -> dict[str, Any]:
    """Apply the retention period (the beat schedule runs it every ETA_PURGE_INTERVAL_S; `eta purge` by hand)."""
    from eta.store.retention import purge_expired as purge

    report = purge(self.sessions, settings=self.settings)
    return {"jobs": report.jobs, "images": report.images}
