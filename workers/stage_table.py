"""The stages of the pipeline, declared once.

Everything the rest of the workers know about a stage is read from `STAGES`: Celery's routes and time
limits (`workers.app`), the chain a chunk of jobs follows (`workers.enqueue`), the models a worker loads
for its queues (`workers.runtime`), the statuses a stage claims and hands on (`workers.runner`), and which
queue and stage the sweeper looks at for a job stalled in each status (`workers.sweeper`).

A job goes through the stages in the order of the table. For each stage:

    waiting  the status a job has while its message sits in the stage's queue
    running  the status while a worker holds it (the same as `waiting` when no claim is needed: a job
             enters `generating` when pre-evaluation saves, and nothing else can take it from there)
    next     the status the stage's save moves the job to, in the same transaction as its results

Adding a stage is one entry here, its `StageStep` (what it computes and records) and the migration that
adds its status and result columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from eta.config import ModelRole
from eta.settings import Settings
from eta.store.lifecycle import JobStatus
from workers.stages import GenerationStep, PostEvaluationStep, PreEvaluationStep, StageStep

# The queue of the tasks that need no model: batch callbacks, the sweeper, the retention purge.
CONTROL_QUEUE = "eta.control"
CALLBACK_TASK = "eta.send_batch_callback"
SWEEP_TASK = "eta.sweep"
PURGE_TASK = "eta.purge_expired"
CONTROL_TASKS = (CALLBACK_TASK, SWEEP_TASK, PURGE_TASK)


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline: where its messages go, what a job's status says about it, what it loads."""

    # Short name: `eta worker --queues`, chain starts, log lines, the `timings` key of a result.
    name: str
    queue: str
    task: str
    waiting: JobStatus
    running: JobStatus
    next: JobStatus
    # Models its compute step uses (a worker loads those of its queues, once per process).
    roles: tuple[ModelRole, ...]
    # What it computes and records (a fresh instance per message).
    step: type[StageStep]
    # Settings of the stage: jobs per model call, soft and hard time limit of one message (seconds), and how
    # long a job may sit in `running` before the sweeper sends it again.
    batch_size: Callable[[Settings], int]
    soft_time_limit_s: Callable[[Settings], int]
    time_limit_s: Callable[[Settings], int]
    sweep_after_s: Callable[[Settings], int]
    # How long a job may sit in `waiting`, when that is a status of its own (None: the same as running).
    sweep_waiting_after_s: Callable[[Settings], int] | None = None

    def time_limits(self, settings: Settings) -> dict[str, int]:
        return {"soft_time_limit": self.soft_time_limit_s(settings), "time_limit": self.time_limit_s(settings)}


STAGES: tuple[Stage, ...] = (
    Stage(
        name="pre", queue="eta.pre", task="eta.pre_evaluate",
        waiting=JobStatus.QUEUED, running=JobStatus.PRE_EVALUATING, next=JobStatus.GENERATING,
        roles=(ModelRole.CLIP,), step=PreEvaluationStep,
        batch_size=lambda s: s.workers.clip_batch_size,
        soft_time_limit_s=lambda s: s.workers.pre_soft_time_limit_s,
        time_limit_s=lambda s: s.workers.pre_time_limit_s,
        sweep_after_s=lambda s: s.workers.sweep_pre_evaluating_after_s,
        sweep_waiting_after_s=lambda s: s.workers.sweep_queued_after_s,
    ),
    Stage(
        name="generate", queue="eta.generate", task="eta.generate_with_alignment",
        waiting=JobStatus.GENERATING, running=JobStatus.GENERATING, next=JobStatus.POST_EVALUATING,
        roles=(ModelRole.VLM, ModelRole.REWARD, ModelRole.CLIP), step=GenerationStep,
        batch_size=lambda s: s.workers.generate_batch_size,
        soft_time_limit_s=lambda s: s.workers.generate_soft_time_limit_s,
        time_limit_s=lambda s: s.workers.generate_time_limit_s,
        sweep_after_s=lambda s: s.workers.sweep_generating_after_s,
    ),
    Stage(
        name="post", queue="eta.post", task="eta.post_evaluate",
        waiting=JobStatus.POST_EVALUATING, running=JobStatus.POST_EVALUATING, next=JobStatus.SUCCEEDED,
        roles=(ModelRole.REWARD,), step=PostEvaluationStep,
        batch_size=lambda s: s.workers.reward_batch_size,
        soft_time_limit_s=lambda s: s.workers.post_soft_time_limit_s,
        time_limit_s=lambda s: s.workers.post_time_limit_s,
        sweep_after_s=lambda s: s.workers.sweep_post_evaluating_after_s,
    ),
)

STAGE_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
# Short queue names accepted by `eta worker --queues`, and the queue each stands for.
QUEUES: dict[str, str] = {**{stage.name: stage.queue for stage in STAGES}, "control": CONTROL_QUEUE}


def stage(name: str) -> Stage:
    """The stage called `name`.

    Raises:
        KeyError: no stage has that name (the message lists those that do).
    """
    try:
        return STAGE_BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; the stages are {', '.join(STAGE_BY_NAME)}") from None


def chain_from(name: str) -> tuple[Stage, ...]:
    """The stages a chunk goes through when it starts at stage `name`."""
    start = STAGES.index(stage(name))
    return STAGES[start:]


def task_routes() -> dict[str, dict[str, str]]:
    """Celery routes: each stage task to its queue, the control tasks to the control queue."""
    return {**{s.task: {"queue": s.queue} for s in STAGES}, **{t: {"queue": CONTROL_QUEUE} for t in CONTROL_TASKS}}


def time_limits(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery task annotations: each stage task's soft and hard time limits."""
    return {s.task: s.time_limits(settings) for s in STAGES}


def roles_for_queues(queues: Iterable[str]) -> tuple[ModelRole, ...]:
    """Model roles needed by the given (full) queue names, in load order (cheapest first)."""
    queues = set(queues)
    wanted = {role for s in STAGES if s.queue in queues for role in s.roles}
    return tuple(role for role in (ModelRole.CLIP, ModelRole.REWARD, ModelRole.VLM) if role in wanted)


def sweep_timeouts(settings: Settings) -> dict[JobStatus, timedelta]:
    """How long a job may sit in each active status before the sweeper sends it again."""
    timeouts: dict[JobStatus, timedelta] = {}
    for s in STAGES:
        if s.sweep_waiting_after_s is not None and s.waiting != s.running:
            timeouts[s.waiting] = timedelta(seconds=s.sweep_waiting_after_s(settings))
        timeouts[s.running] = timedelta(seconds=s.sweep_after_s(settings))
    return timeouts


# The queue a job waiting in each status sits in (a backlog there is not a loss), and the stage a stalled job
# in each status restarts from.
WAITING_QUEUE: dict[JobStatus, str] = {s.waiting: s.queue for s in STAGES}
RESTART_STAGE: dict[JobStatus, Stage] = {
    status: s for s in STAGES for status in dict.fromkeys((s.waiting, s.running))
}
