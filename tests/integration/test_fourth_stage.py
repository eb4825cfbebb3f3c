"""A stage declared only here, with the two pieces a stage takes in code (a `Stage` entry and its `StageStep`),
runs through claim -> compute -> record as a Celery task the app factory makes from the table it is given.

The third piece, a migration, would add the stage's own status to `JobStatus` and the database; a test cannot
declare one, so this stage reuses the last stage's statuses (`post_evaluating` -> `succeeded`), as a stage that
took the audit's place would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from eta.config import ETAConfig
from eta.models import Models
from eta.settings import Settings, SettingsError, StageLimits
from eta.store import repository as repo
from eta.store.db import session_factory
from eta.store.lifecycle import JobStatus
from eta.store.models import Batch, Job, JobResult
from eta.store.repository import NewJob
from workers.app import create_celery_app
from workers.context import WorkerContext
from workers.stage_table import STAGES, check_stage_limits
from workers.stage_types import ModelCalls, Stage, StageStep, Work


class CountWords(StageStep):
    """Counts each prompt's words: a stand-in for what a new stage's model would compute."""

    reads_image = False

    def compute(self, models: Models, group: list[Work], *, batch_size: int, calls: ModelCalls) -> list[int]:
        calls.add("word_counts")
        return [len(work.prompt.split()) for work in group]

    def result(self, work: Work, output: int, *, elapsed_ms: float) -> repo.StageResult:
        return repo.StageResult(job_id=work.job_id, columns={}, elapsed_ms=elapsed_ms)

    def describe(self, output: int) -> str:
        return f"{output} words"


WORDS = Stage(name="words", queue="eta.words", task="eta.count_words",
              waiting=JobStatus.POST_EVALUATING, running=JobStatus.POST_EVALUATING, next=JobStatus.SUCCEEDED,
              roles=(), step=CountWords,
              limits=StageLimits(batch_size=4, soft_time_limit_s=30, time_limit_s=40, sweep_after_s=60))
TABLE = (*STAGES, WORDS)


@pytest.fixture
def sessions(sqlite_engine: Engine) -> Iterator[Any]:
    yield session_factory(sqlite_engine)


def _jobs_waiting_for_the_stage(sessions: Any, prompts: list[str]) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with sessions() as session, session.begin():
        tenant = repo.create_tenant(session=session, name=f"words-{uuid.uuid4().hex[:6]}")
        made = repo.create_batch_with_jobs(session=session, tenant_id=tenant.id, jobs=[
            NewJob(prompt=prompt, params=ETAConfig().to_dict(), seed=n) for n, prompt in enumerate(prompts)])
        moved = repo.transition_jobs(session=session, job_ids=made.job_ids, expected=JobStatus.QUEUED,
                                     to=JobStatus.POST_EVALUATING)
        assert moved == set(made.job_ids)
    return made.batch.id, list(made.job_ids)


def test_a_stage_declared_in_a_test_runs_as_a_task_of_the_app(sessions, sqlite_url: str, tmp_path):
    # Its limits come from its declaration, overridden by its own variables like any stage's.
    settings = Settings(eta_data_dir=tmp_path, database_url=sqlite_url, eta_stage_words_batch_size=2)
    assert check_stage_limits(settings, TABLE)["words"].batch_size == 2
    with pytest.raises(SettingsError, match="ETA_STAGE_WORDS_SWEEP_AFTER_S"):
        create_celery_app(settings.with_values(eta_stage_words_sweep_after_s=40), stages=TABLE)

    app = create_celery_app(settings, stages=TABLE)
    app.use_context(WorkerContext(settings, sessions=sessions))
    task = app.tasks[WORDS.task]
    assert app.conf.task_routes[WORDS.task] == {"queue": "eta.words"}
    assert app.conf.task_annotations[WORDS.task] == {"soft_time_limit": 30, "time_limit": 40}

    batch_id, ids = _jobs_waiting_for_the_stage(sessions, ["one", "two words", "three words here"])
    handed_on = task.apply(args=([str(i) for i in ids],)).get()
    assert handed_on == []  # the last stage hands nothing on: its jobs end

    with sessions() as session:
        jobs = {job.id: job for job in session.scalars(sa.select(Job).where(Job.id.in_(ids)))}
        results = {r.job_id: r for r in session.scalars(sa.select(JobResult).where(JobResult.job_id.in_(ids)))}
        batch = session.get(Batch, batch_id)
    assert {str(job.status) for job in jobs.values()} == {"succeeded"}
    assert all("words" in results[i].timings for i in ids)  # recorded under the stage's name
    assert batch is not None and str(batch.status) == "completed"
    assert batch.model_calls == {"words": {"word_counts": 2}}  # 3 jobs, batch size 2: two calls

    # A second delivery of the same message changes nothing.
    assert task.apply(args=([str(i) for i in ids],)).get() == []
    with sessions() as session:
        assert all(r.stage_records == 1 for r in session.scalars(sa.select(JobResult).where(JobResult.job_id.in_(ids))))
