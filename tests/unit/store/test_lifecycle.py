"""The job lifecycle: forward only, succeeded only after post-evaluation, terminal means final."""

from __future__ import annotations

import itertools

import pytest

from eta.store.lifecycle import ACTIVE_JOB_STATUSES, TERMINAL_JOB_STATUSES, JobStatus, is_allowed_transition

ALLOWED = {
    (JobStatus.QUEUED, JobStatus.PRE_EVALUATING),
    (JobStatus.QUEUED, JobStatus.GENERATING),
    (JobStatus.QUEUED, JobStatus.POST_EVALUATING),
    (JobStatus.PRE_EVALUATING, JobStatus.GENERATING),
    (JobStatus.PRE_EVALUATING, JobStatus.POST_EVALUATING),
    (JobStatus.GENERATING, JobStatus.POST_EVALUATING),
    (JobStatus.POST_EVALUATING, JobStatus.SUCCEEDED),
    *((active, end) for active in ACTIVE_JOB_STATUSES for end in (JobStatus.FAILED, JobStatus.CANCELLED)),
}


@pytest.mark.parametrize(("current", "target"), list(itertools.product(JobStatus, JobStatus)))
def test_transition_table(current: JobStatus, target: JobStatus) -> None:
    assert is_allowed_transition(current, target) == ((current, target) in ALLOWED)


def test_terminal_statuses() -> None:
    assert {status for status in JobStatus if status.is_terminal} == TERMINAL_JOB_STATUSES
    assert set(ACTIVE_JOB_STATUSES) | TERMINAL_JOB_STATUSES == set(JobStatus)
