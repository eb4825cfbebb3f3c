"""Worker process hooks: learn the queues and check the schema before forking, then per pool process drop
the inherited database connections and load the models of the queues, within a deadline.

The worker's main process never runs torch when its pool forks (see workers.preflight): a process forked
after torch started its thread pool hangs in its first parallel torch operation, and CUDA initialised before
a fork is unusable in every child. `on_worker_init` refuses to fork a pool from a process that imported
torch, so a future import that pulls torch into the main process fails at start-up instead of hanging jobs.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import time
from typing import Any

from celery import signals

from workers import runtime
from workers.stage_table import roles_for_queues

logger = logging.getLogger(__name__)


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


@signals.worker_init.connect
def on_worker_init(sender: Any = None, **_: Any) -> None:
    """Main worker process, before the pool starts: which models to load, is the schema current, can it fork."""
    from eta.store.schema import check_schema_current

    if sender is not None:
        check_fork_safe(getattr(sender, "pool_cls", None))
    queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    roles = roles_for_queues(queues)
    runtime.set_roles(roles)
    logger.info("worker consumes %s; models per process: %s", ", ".join(queues) or "(default)",
                ", ".join(roles) or "none")
    revision = check_schema_current(runtime.engine())
    logger.info("database schema at %s", revision)


@signals.worker_process_init.connect
def on_worker_process_init(**_: Any) -> None:
    """A freshly forked pool process: its own connections, its own models (loaded once, here).

    The process tells its pool it is up only when this returns; one that is not ready within
    ETA_WORKER_READY_TIMEOUT_S writes every thread's stack to the worker's log and exits (faulthandler's watchdog
    is a C thread: it fires even when the process is stuck inside a native call holding the GIL), and the pool
    starts another in its place.
    """
    from eta.settings import get_settings

    runtime.after_fork()
    deadline = get_settings().workers.worker_ready_timeout_s
    # File descriptor 2 is the worker log (Celery swaps sys.stderr for a logging proxy with no file behind it).
    faulthandler.dump_traceback_later(deadline, exit=True, file=2)
    start = time.monotonic()
    try:
        runtime.preload()
    except Exception:
        # The first task tries again and fails loudly; the jobs stay in their status for the sweeper.
        logger.exception("could not load the models at process start")
        return
    finally:
        faulthandler.cancel_dump_traceback_later()
    logger.info("pool process ready: models loaded in %.1fs (pid %d)", time.monotonic() - start, os.getpid())
