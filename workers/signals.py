"""Worker process hooks: learn the queues, check the schema and that the pool may fork, before forking; then per
pool process drop the inherited database connections and load the models of the queues, within a deadline; and
take no message before the pool processes are ready.

The worker's main process never runs torch when its pool forks (see workers.preflight): a process forked after
torch started its thread pool hangs in its first parallel torch operation, and CUDA initialised before a fork is
unusable in every child. `on_worker_init` refuses to fork a pool from a process that imported torch, so a future
import that pulls torch into the main process fails at start-up instead of hanging jobs.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import os
import sys
import time
from typing import Any

from celery import bootsteps, current_app, signals

from workers.context import WorkerContext
from workers.stage_table import roles_for_queues

logger = logging.getLogger(__name__)

# Pool processes that finished loading their models, counted in memory shared with the main process (made before
# the pool forks; None in a pool that does not fork). `ConsumeWhenPoolReady` reads it.
_ready_processes: Any = None


class ForkUnsafeParent(SystemExit):
    """The worker's main process imported torch before forking its pool (one line; exit status 1)."""


def pool_forks(pool_cls: Any) -> bool:
    """Whether a Celery pool implementation (a name such as "prefork", or a class) forks its processes."""
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool

    implementation = get_implementation(pool_cls) if isinstance(pool_cls, str) else pool_cls
    return isinstance(implementation, type) and issubclass(implementation, TaskPool)


def check_fork_safe(pool_cls: Any) -> None:
    """Refuse to fork a pool from a process where torch is imported.

    Raises:
        ForkUnsafeParent: the pool forks and torch is in this process.
    """
    if "torch" in sys.modules and pool_forks(pool_cls):
        raise ForkUnsafeParent(
            "eta worker: torch was imported in the worker's main process before it forks its pool, and a forked "
            "process hangs in its first torch operation; keep torch out of the main process (run model work in "
            "workers.preflight's child or in the pool processes), or start the worker with --pool solo")


def pool_ready_count() -> int:
    """How many pool processes of this worker have finished loading their models so far."""
    return 0 if _ready_processes is None else int(_ready_processes.value)


@signals.worker_init.connect
def on_worker_init(sender: Any = None, **_: Any) -> None:
    """Main worker process, before the pool starts: which models to load, is the schema current, can it fork."""
    global _ready_processes
    from eta.store.schema import check_schema_current

    if sender is not None:
        pool_cls = getattr(sender, "pool_cls", None)
        check_fork_safe(pool_cls)
        if pool_forks(pool_cls):
            _ready_processes = multiprocessing.get_context("fork").Value("i", 0)
    queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    roles = roles_for_queues(queues)
    context = _context(sender.app if sender is not None else current_app)
    context.set_roles(roles)
    logger.info("worker consumes %s; models per process: %s", ", ".join(queues) or "(default)",
                ", ".join(roles) or "none")
    revision = check_schema_current(context.engine())
    logger.info("database schema at %s", revision)


@signals.worker_process_init.connect
def on_worker_process_init(**_: Any) -> None:
    """A freshly forked pool process: its own connections, its own models (loaded once, here).

    The process tells its pool it is up only when this returns; one that is not ready within
    ETA_WORKER_READY_TIMEOUT_S writes every thread's stack to the worker's log and exits (faulthandler's watchdog
    is a C thread: it fires even when the process is stuck inside a native call holding the GIL), and the pool
    starts another in its place.
    """
    context = _context(current_app)
    context.after_fork()
    # File descriptor 2 is the worker log (Celery swaps sys.stderr for a logging proxy with no file behind it).
    faulthandler.dump_traceback_later(context.settings.workers.worker_ready_timeout_s, exit=True, file=2)
    start = time.monotonic()
    try:
        context.preload()
    except Exception:
        # The first task tries again and fails loudly; the jobs stay in their status for the sweeper.
        logger.exception("could not load the models at process start")
        return
    finally:
        faulthandler.cancel_dump_traceback_later()
        if _ready_processes is not None:
            with _ready_processes.get_lock():
                _ready_processes.value += 1
    logger.info("pool process ready: models loaded in %.1fs (pid %d)", time.monotonic() - start, os.getpid())


class ConsumeWhenPoolReady(bootsteps.StartStopStep):
    """Take messages only once the pool processes have loaded their models.

    Otherwise the main process takes a message from the broker while its pool processes are still loading (seconds
    for the tiny models, minutes for a 7B VLM) and holds it unstarted, no lease on its jobs: a broker restart in that
    window leaves the message in the broker's unacknowledged set until the visibility timeout (hours). The step
    stops consuming as the consumer starts and consumes again from the event loop's timer once every pool process
    is ready (the loop must run meanwhile: it is what replaces a pool process that died while loading). Past twice
    the ready deadline it consumes with whatever is up: a worker that never consumes helps nobody.
    """

    label = "consume when the pool is ready"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._timer: Any = None
        # The queues set aside until the pool is ready (None: not decided yet; empty: nothing waits).
        self._paused: list[str] | None = None
        self._wanted = 1
        self._started = self._deadline = 0.0

    def start(self, parent: Any) -> None:
        if self._paused is None:  # the first start of the consumer
            controller = getattr(parent, "controller", None)
            self._wanted = int(getattr(controller, "concurrency", 1) or 1)
            if _ready_processes is None or pool_ready_count() >= self._wanted:
                self._paused = []
                return
            self._paused = [queue.name for queue in parent.task_consumer.queues]
            for name in self._paused:
                parent.cancel_task_queue(name)
            self._started = time.monotonic()
            self._deadline = self._started + 2 * _context(parent.app).settings.workers.worker_ready_timeout_s
            logger.info("waiting for %d pool process(es) to load their models before taking messages", self._wanted)
        # Also after a reconnection while still waiting: the set-aside queues stay out of the restarted consumer.
        if self._paused:
            self._timer = parent.timer.call_repeatedly(0.2, self._check, (parent,))

    def _check(self, parent: Any) -> None:
        ready = pool_ready_count()
        if ready < self._wanted and time.monotonic() < self._deadline:
            return
        self._cancel_timer()
        waited = time.monotonic() - self._started
        if ready < self._wanted:
            logger.warning("only %d of %d pool processes ready after %.0fs; taking messages anyway", ready,
                           self._wanted, waited)
        else:
            logger.info("%d pool process(es) ready after %.1fs; taking messages", self._wanted, waited)
        queues, self._paused = self._paused or [], []
        for name in queues:
            parent.add_task_queue(name)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stop(self, parent: Any) -> None:
        self._cancel_timer()

    def shutdown(self, parent: Any) -> None:
        self._cancel_timer()


def _context(app: Any) -> WorkerContext:
    """The context of the worker's app (built by `workers.app.create_celery_app`)."""
    context: WorkerContext = app.context
    return context
