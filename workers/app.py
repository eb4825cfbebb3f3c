"""The Celery application of the workers: the configuration of `workers.celery_config` (the API sends with the same
configuration, without the tasks: `workers.enqueue.client_app`) plus the tasks of `workers.tasks`.

The stage tasks, their routes and time limits come from the stage table (`workers.stage_table`). Queues, one per
stage so each worker process loads only the models its queues need:

    eta.pre       CLIP pre-evaluation                     (clip)
    eta.generate  vanilla generation, post-evaluation,    (vlm + reward + clip)
                  decision and alignment
    eta.post      final reward score and audit flags      (reward)
    eta.control   batch callbacks, the sweeper, the        (no model)
                  retention purge

Messages carry job ids only. Every queue is published to through the default (nameless) exchange with the
queue name as routing key: a Redis flush then loses the messages but not the routing (kombu keeps named
exchange bindings in Redis keys, and a publish to a binding that vanished is silently dead-lettered).
"""

from __future__ import annotations

from collections.abc import Sequence

from eta.settings import Settings
from workers.celery_config import EtaCelery, configured_app
from workers.stage_table import STAGES
from workers.stage_types import Stage

__all__ = ["EtaCelery", "create_celery_app"]


def create_celery_app(settings: Settings, *, stages: Sequence[Stage] = STAGES) -> EtaCelery:
    """A worker's Celery app for `settings` (`workers.celery_config.configured_app`), with a task for each of
    `stages` (the table's, unless a test brings its own) and the control tasks registered.

    Raises:
        eta.settings.SettingsError: the stages' limits contradict each other (`check_stage_limits`).
    """
    from workers.signals import ConsumeWhenPoolReady
    from workers.tasks import register_tasks

    app = configured_app(settings, stages=stages)
    register_tasks(app, stages)
    # The worker takes messages only once its pool processes have loaded their models (workers.signals).
    app.steps["consumer"].add(ConsumeWhenPoolReady)
    return app
