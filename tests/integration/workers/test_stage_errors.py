"""How a stage task sorts errors, run in this process against the workers' Postgres database.

The task body (`workers.tasks.run_stage`) gets a stand-in Celery task that records retries, and a CLIP stand-in
that fails on demand: out of memory, the soft time limit, a lost database connection, a bad input.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
import torch
from celery.exceptions import SoftTimeLimitExceeded

from eta.models import Models
from eta.store import repository as repo
from eta.store.models import Job, JobResult
from workers.context import WorkerContext
from workers.stage_table import stage
from workers.tasks import run_stage

from .conftest import Item

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.models]


class Retried(Exception):
    def __init__(self, **options: Any) -> None:
        super().__init__(options)
        self.options = options


class StandInTask:
    """What `run_stage` uses of a bound Celery task: its request, its app, and the context its base class holds."""

    def __init__(self, context: WorkerContext, retries: int = 0) -> None:
        self.context = context
        self.request = SimpleNamespace(retries=retries)
        self.sent: list[tuple[str, list[Any]]] = []
        self.app = SimpleNamespace(send_task=lambda name, args: self.sent.append((name, args)))

    def retry(self, **options: Any) -> Retried:
        return Retried(**options)


class StandInClip:
    """A CLIP scorer whose image forward raises `fail(images)` when that returns an exception."""

    def __init__(self, fail: Callable[[list[Any]], BaseException | None] = lambda images: None) -> None:
        self.fail = fail
        self.image_calls: list[int] = []

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.ones(len(texts), 4), dim=-1)

    def embed_images(self, images: list[Any]) -> torch.Tensor:
        self.image_calls.append(len(images))
        exc = self.fail(images)
        if exc is not None:
            raise exc
        return torch.nn.functional.normalize(torch.ones(len(images), 4), dim=-1)


@pytest.fixture
def run_pre(sessions, worker_env):
    """`run_pre(clip, ids, batch_size, retries)` runs the pre-evaluation task body with `clip` as the model, in a
    worker context of the test's settings and sessions."""

    def run(clip: StandInClip, ids: list[uuid.UUID], batch_size: int, retries: int = 0) -> list[str]:
        context = WorkerContext(worker_env.settings, sessions=sessions, models=Models(clip=clip))  # type: ignore[arg-type]
        return run_stage(StandInTask(context, retries), stage("pre"), [str(i) for i in ids],  # type: ignore[arg-type]
                         batch_size)

    return run


def _jobs(sessions, ids: list[uuid.UUID]) -> dict[uuid.UUID, Job]:
    with sessions() as session:
        return {job.id: job for job in session.scalars(sa.select(Job).where(Job.id.in_(ids)))}


def test_out_of_memory_halves_the_batch_and_fails_the_jobs_only_at_size_one(run_pre, submit, sessions):
    ids = submit([Item(f"q{i}", "waterview.jpg") for i in range(4)]).job_ids
    clip = StandInClip(lambda images: torch.OutOfMemoryError("CUDA out of memory") if len(images) > 1 else None)
    for size in (4, 2):
        with pytest.raises(Retried) as retried:
            run_pre(clip, ids, size)
        assert retried.value.options["kwargs"] == {"batch_size": size // 2}
        assert {str(j.status) for j in _jobs(sessions, ids).values()} == {"pre_evaluating"}  # kept for the retry
    assert sorted(run_pre(clip, ids, 1, retries=2)) == sorted(map(str, ids))
    assert clip.image_calls == [4, 2, 1, 1, 1, 1]
    assert {str(j.status) for j in _jobs(sessions, ids).values()} == {"generating"}

    more = submit([Item("q", "waterview.jpg")]).job_ids
    always = StandInClip(lambda images: torch.OutOfMemoryError("CUDA out of memory"))
    assert run_pre(always, more, 1) == []
    job = _jobs(sessions, more)[more[0]]
    assert (str(job.status), job.error_code) == ("failed", "out_of_memory")


def test_the_soft_time_limit_fails_the_jobs_held_and_hands_on_the_others(run_pre, submit, sessions):
    image_job, text_job = submit([Item("slow", "waterview.jpg"), Item("text only", None)]).job_ids
    clip = StandInClip(lambda images: SoftTimeLimitExceeded())
    assert run_pre(clip, [image_job, text_job], 4) == [str(text_job)]
    jobs = _jobs(sessions, [image_job, text_job])
    assert (str(jobs[image_job].status), jobs[image_job].error_code) == ("failed", "stage_timeout")
    assert str(jobs[text_job].status) == "generating"


def test_a_lost_database_connection_is_retried_with_backoff(run_pre, submit, sessions, worker_env):
    ids = submit([Item("q", "waterview.jpg")]).job_ids
    lost = sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    with pytest.raises(Retried) as retried:
        run_pre(StandInClip(lambda images: lost), ids, 4)
    assert 0 < retried.value.options["countdown"] <= worker_env.settings.workers.retry_backoff_max_s
    assert retried.value.options["max_retries"] == worker_env.settings.workers.stage_max_retries
    job = _jobs(sessions, ids)[ids[0]]
    assert str(job.status) == "pre_evaluating"  # not the job's fault: not failed
    with sessions() as session, session.begin():  # leave nothing for another test's sweeper
        repo.cancel_job(session=session, tenant_id=job.tenant_id, job_id=job.id)


def test_a_model_error_on_one_input_fails_that_job_only(run_pre, submit, sessions):
    ids = submit([Item("a", "waterview.jpg"), Item("b", "extreme_ironing.jpg"), Item("c", "waterview.jpg")]).job_ids
    # extreme_ironing.jpg (570 x 380) is the poison: the model fails on any forward that includes it.
    poison = StandInClip(lambda images: ValueError("bad pixels") if any(i.width == 570 for i in images) else None)
    assert sorted(run_pre(poison, ids, 4)) == sorted([str(ids[0]), str(ids[2])])
    jobs = _jobs(sessions, ids)
    assert (str(jobs[ids[1]].status), jobs[ids[1]].error_code) == ("failed", "internal_error")
    assert "bad pixels" in (jobs[ids[1]].error_message or "")
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(JobResult)
                              .where(JobResult.job_id.in_([ids[0], ids[2]]), JobResult.s_pre.is_not(None))) == 2


def test_invalid_stored_parameters_fail_the_job_with_a_code(run_pre, submit, sessions):
    ids = submit([Item("a", "waterview.jpg", {"tau_pre": "high"}), Item("b", "waterview.jpg")]).job_ids
    assert run_pre(StandInClip(), ids, 4) == [str(ids[1])]
    job = _jobs(sessions, ids)[ids[0]]
    assert (str(job.status), job.error_code) == ("failed", "invalid_params")
