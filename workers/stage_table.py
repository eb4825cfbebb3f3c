"""The stages of the pipeline, declared once.

Everything the rest of the workers know about a stage is read from `STAGES`: the Celery task of each stage, its
route and time limits (`workers.app`), the chain a chunk of jobs follows (`workers.enqueue`), the models a
worker loads for its queues (`workers.context`), the statuses a stage claims and hands on (`workers.runner`),
which queue and stage the sweeper looks at for a job stalled in each status (`workers.sweeper`), and each
stage's limits (`StageLimits`, overridable by `ETA_STAGE_<NAME>_<LIMIT>`; checked by `check_stage_limits`).

A job goes through the stages in the order of the table. For each stage:

    waiting  the status a job has while its message sits in the stage's queue
    running  the status while a worker holds it (the same as `waiting` when no claim is needed: a job
             enters `generating` when pre-evaluation saves, and nothing else can take it from there)
    next     the status the stage's save moves the job to, in the same transaction as its results

Adding a stage is one entry here, its `StageStep` (what it computes and records) and the migration that
adds its status (in `eta.store.lifecycle.JobStatus`, in pipeline order) and its result columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from eta.config import ModelRole
from eta.settings import Settings, SettingsError, StageLimits, stage_variables
from eta.store.lifecycle import JobStatus
from workers.stage_types import Stage
from workers.stages import GenerationStep, PostEvaluationStep, PreEvaluationStep

# The queue of the tasks that need no model: batch callbacks, the sweeper, the retention purge.
CONTROL_QUEUE = "eta.control"
CALLBACK_TASK = "eta.send_batch_callback"
SWEEP_TASK = "eta.sweep"
PURGE_TASK = "eta.purge_expired"
CONTROL_TASKS = (CALLBACK_TASK, SWEEP_TASK, PURGE_TASK)


STAGES: tuple[Stage, ...] = (
    Stage(
        name="pre", queue="eta.pre", task="eta.pre_evaluate",
        waiting=JobStatus.QUEUED, running=JobStatus.PRE_EVALUATING, next=JobStatus.GENERATING,
        roles=(ModelRole.CLIP,), step=PreEvaluationStep,
        limits=StageLimits(batch_size=32, soft_time_limit_s=300, time_limit_s=360, sweep_after_s=420,
                           sweep_waiting_after_s=600),
    ),
    Stage(
        name="generate", queue="eta.generate", task="eta.generate_with_alignment",
        waiting=JobStatus.GENERATING, running=JobStatus.GENERATING, next=JobStatus.POST_EVALUATING,
        roles=(ModelRole.VLM, ModelRole.REWARD, ModelRole.CLIP), step=GenerationStep,
        limits=StageLimits(batch_size=8, soft_time_limit_s=3600, time_limit_s=3720, sweep_after_s=3900),
    ),
    Stage(
        name="post", queue="eta.post", task="eta.post_evaluate",
        waiting=JobStatus.POST_EVALUATING, running=JobStatus.POST_EVALUATING, next=JobStatus.SUCCEEDED,
        roles=(ModelRole.REWARD,), step=PostEvaluationStep,
        limits=StageLimits(batch_size=32, soft_time_limit_s=300, time_limit_s=360, sweep_after_s=420),
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


def task_routes(stages: Sequence[Stage] = STAGES) -> dict[str, dict[str, str]]:
    """Celery routes: each stage task to its queue, the control tasks to the control queue."""
    return {**{s.task: {"queue": s.queue} for s in stages}, **{t: {"queue": CONTROL_QUEUE} for t in CONTROL_TASKS}}


def time_limits(settings: Settings, stages: Sequence[Stage] = STAGES) -> dict[str, dict[str, Any]]:
    """Celery task annotations: each stage task's soft and hard time limits."""
    return {s.task: s.time_limits(settings) for s in stages}


def check_stage_limits(settings: Settings, stages: Sequence[Stage] = STAGES) -> dict[str, StageLimits]:
    """Every stage's limits under `settings`, checked (the Celery app factory calls it, so a worker, the beat
    and the API refuse to start with limits that contradict each other).

    Raises:
        SettingsError: a stage's limits contradict each other, or the environment sets limits of a stage that
            does not exist (a misspelt name); the message names the variables.
    """
    names = {s.name for s in stages}
    unknown = sorted(set(settings.workers.stages) - names)
    if unknown:
        variables = ", ".join(f"{stage_variables(name, 'batch_size')[0].removesuffix('BATCH_SIZE')}*"
                              for name in unknown)
        raise SettingsError(f"{variables}: no stage {', '.join(map(repr, unknown))}; the stages are "
                            f"{', '.join(s.name for s in stages)}")
    return {s.name: s.limits_in(settings) for s in stages}


def roles_for_queues(queues: Iterable[str]) -> tuple[ModelRole, ...]:
    """Model roles needed by the given (full) queue names, in load order (cheapest first)."""
    queues = set(queues)
    wanted = {role for s in STAGES if s.queue in queues for role in s.roles}
    return tuple(role for role in (ModelRole.CLIP, ModelRole.REWARD, ModelRole.VLM) if role in wanted)


def sweep_timeouts(settings: Settings) -> dict[JobStatus, timedelta]:
    """How long a job may sit in each active status before the sweeper sends it again."""
    timeouts: dict[JobStatus, timedelta] = {}
    for s in STAGES:
        limits = s.limits_in(settings)
        if s.waiting != s.running:
            timeouts[s.waiting] = timedelta(seconds=limits.sweep_waiting_after_s or limits.sweep_after_s)
        timeouts[s.running] = timedelta(seconds=limits.sweep_after_s)
    return timeouts


# The queue a job waiting in each status sits in (a backlog there is not a loss), and the stage a stalled job
# in each status restarts from.
WAITING_QUEUE: dict[JobStatus, str] = {s.waiting: s.queue for s in STAGES}
RESTART_STAGE: dict[JobStatus, Stage] = {
    status: s for s in STAGES for status in dict.fromkeys((s.waiting, s.running))
}
