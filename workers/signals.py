"""Worker process hooks: learn the queues and check the schema before forking, then per pool process drop
the inherited database connections and load the models of the queues."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import current_app, signals

from workers.context import WorkerContext
from workers.stage_table import roles_for_queues

logger = logging.getLogger(__name__)


@signals.worker_init.connect
def on_worker_init(sender: Any = None, **_: Any) -> None:
    """Main worker process, before the pool starts: which models to load, and is the schema current."""
    from eta.store.schema import check_schema_current

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
    """A freshly forked pool process: its own connections, its own models (loaded once, here)."""
    context = _context(current_app)
    context.after_fork()
    start = time.monotonic()
    try:
        context.preload()
    except Exception:
        # The first task tries again and fails loudly; the jobs stay in their status for the sweeper.
        logger.exception("could not load the models at process start")
        return
    logger.info("pool process ready: models loaded in %.1fs", time.monotonic() - start)


def _context(app: Any) -> WorkerContext:
    """The context of the worker's app (built by `workers.app.create_celery_app`)."""
    context: WorkerContext = app.context
    return context
