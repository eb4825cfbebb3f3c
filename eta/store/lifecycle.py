"""Job and batch statuses, and which job status changes are allowed.

A job only moves forward and never leaves a terminal state:

    queued -> pre_evaluating -> generating -> post_evaluating -> succeeded
    any of the four active statuses -> failed | cancelled

A stage may be skipped forwards (a text-only job has nothing to pre-evaluate), but `succeeded` is only
reached from the last active status (`post_evaluating`), so a job cannot succeed without its audit score.
"""

from __future__ import annotations

from enum import StrEnum


# The active statuses are declared in pipeline order, then the terminal ones: that order is the one list the
# lifecycle reads (`ACTIVE_JOB_STATUSES`, `is_allowed_transition`). A new stage's status goes in its place here, with
# the migration that adds it to the database's enum. (A comment, not the docstring: the API's OpenAPI document
# shows the docstring to clients.)
class JobStatus(StrEnum):
    """A job's status: the active ones in pipeline order, then the terminal ones."""

    QUEUED = "queued"
    PRE_EVALUATING = "pre_evaluating"
    GENERATING = "generating"
    POST_EVALUATING = "post_evaluating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_JOB_STATUSES


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_BATCH_STATUSES


TERMINAL_JOB_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
# Statuses a job can still leave, in pipeline order (the order of their declaration).
ACTIVE_JOB_STATUSES: tuple[JobStatus, ...] = tuple(status for status in JobStatus if not status.is_terminal)
# The statuses in which a worker is running a stage.
STAGE_STATUSES: tuple[JobStatus, ...] = ACTIVE_JOB_STATUSES[1:]
TERMINAL_BATCH_STATUSES: frozenset[BatchStatus] = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED}
)


def is_allowed_transition(current: JobStatus, target: JobStatus) -> bool:
    """Whether a job in `current` may move to `target` (the lifecycle in the module docstring)."""
    if current.is_terminal or current == target:
        return False
    if target in (JobStatus.FAILED, JobStatus.CANCELLED):
        return True
    if target == JobStatus.SUCCEEDED:
        return current == ACTIVE_JOB_STATUSES[-1]
    return ACTIVE_JOB_STATUSES.index(target) > ACTIVE_JOB_STATUSES.index(current)
