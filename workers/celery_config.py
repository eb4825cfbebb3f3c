"""The configuration of the workers' Celery app, built from the service settings and the stage table.

`EtaCelery` carries the settings and the table it was built from; `configured_app` sets its broker, queues,
routes, time limits and beat schedule. Kept apart from the tasks (`workers.tasks`) so that a process that only
sends messages (the API, through `workers.enqueue.client_app`) needs none of them; `workers.app` adds them.
"""


from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from eta.settings import Settings
from workers.broker import broker_url, embedded_broker_dir, is_embedded, transport_options
from workers.context import WorkerContext
from workers.stage_table import (
    CALLBACK_TASK,
    CONTROL_QUEUE,
    PURGE_TASK,
    STAGES,
    SWEEP_TASK,
    check_stage_limits,
    task_routes,
    time_limits,
)
from workers.stage_types import Stage

logger = logging.getLogger(__name__)

class EtaCelery(Celery):
    """A Celery app that carries what it was built from: the settings and the stage table. A worker process's
    context (sessions, models) hangs on it too, made on first use, for the tasks' base class
    (`workers.tasks.WorkerTask`) and the process hooks (`workers.signals`)."""

    def __init__(self, settings: Settings, stages: Sequence[Stage], **options: Any) -> None:
        super().__init__("eta", **options)
        self.settings = settings
        self.stages = tuple(stages)

    @cached_property
    def context(self) -> WorkerContext:
        return WorkerContext(self.settings)

    def use_context(self, context: WorkerContext) -> None:
        """Run this app's tasks in `context` (a test's or a benchmark's sessions and models)."""
        self.__dict__["context"] = context


def configured_app(settings: Settings, *, stages: Sequence[Stage] = STAGES) -> EtaCelery:
    """A Celery app for `settings` and `stages`, configured (broker, queues, routes, time limits, beat) but with no
    task registered: enough to send messages, which name their tasks (`workers.enqueue.client_app`). A worker's
    app is `workers.app.create_celery_app`, which adds the tasks.

    Raises:
        eta.settings.SettingsError: the stages' limits contradict each other (`check_stage_limits`).
    """
    check_stage_limits(settings, stages)
    app = EtaCelery(settings, stages, broker=broker_url(settings), task_cls="workers.tasks:WorkerTask")
    nameless = Exchange("")
    embedded = is_embedded(settings)
    app.conf.update(
        broker_transport_options=transport_options(settings),
        broker_connection_timeout=settings.broker.connect_timeout_s,
        broker_connection_retry_on_startup=True,
        # No result backend: chains hand results on in the message, and Postgres holds every outcome.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(name, nameless, routing_key=name) for name in (*(s.queue for s in stages), CONTROL_QUEUE)],
        task_default_queue=CONTROL_QUEUE,
        task_default_exchange="",
        task_routes=task_routes(stages),
        task_annotations=_time_limits(settings, stages),
        # A message is acknowledged only after its task returns: a worker killed whole (its main process too)
        # never acknowledges it, and the broker delivers it again.
        task_acks_late=True,
        # A pool process that dies mid-task (killed, or crashed by an input: a segfault in a model) does not put
        # its message back at once: requeued, a poison job would crash one process after another for ever,
        # uncounted. Its jobs' leases lapse instead, and the sweeper sends them again, counting the attempt and in
        # smaller chunks each time, so a poison job ends up alone and fails alone (workers.sweeper).
        task_reject_on_worker_lost=False,
        # One message at a time per process: a GPU worker must not hold a second chunk while busy.
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=None,
        # How long the pool waits for a new process to say it is up (Celery's default, 4 s, is shorter than a model
        # load: every replacement of a process that died would be killed while loading, for ever). The process
        # itself gives up first, with its stacks in the log (workers.signals), so this is only the backstop.
        worker_proc_alive_timeout=settings.workers.worker_ready_timeout_s + 30,
        worker_send_task_events=False,
        # The embedded broker is one folder: no remote control (its fanout files outlive dead workers).
        worker_enable_remote_control=not embedded,
        beat_schedule={
            "sweep-stalled-jobs": {"task": SWEEP_TASK, "schedule": settings.workers.sweep_interval_s},
            "purge-expired-jobs": {"task": PURGE_TASK, "schedule": settings.retention.purge_interval_s},
        },
        beat_schedule_filename=str(embedded_broker_dir(settings).parent / "celerybeat-schedule"),
        timezone="UTC",
    )
    return app


def _time_limits(settings: Settings, stages: Sequence[Stage]) -> dict[str, dict[str, Any]]:
    return {
        **time_limits(settings, stages),
        CALLBACK_TASK: {"soft_time_limit": 4 * settings.workers.callback_timeout_s + 30,
                        "time_limit": 4 * settings.workers.callback_timeout_s + 60},
    }
