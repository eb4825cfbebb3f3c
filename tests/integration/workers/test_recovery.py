"""Lost work comes back: a worker SIGKILLed mid-stage, a Redis flush, a broker that was down at submission.

In each case the database knows where every job is; the sweeper (called here with a `now` in the future
instead of waiting for its timeouts) re-enqueues what stalled, and every job ends exactly once.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from eta.store.models import Job, JobResult, utcnow
from workers.app import create_celery_app
from workers.enqueue import BrokerUnavailable, enqueue_jobs
from workers.sweeper import sweep

from .conftest import (
    Item,
    expected_stage_records,
    flush_prefix,
    job_statuses,
    stage_records,
    wait_until_terminal,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.models]


def _sweep_later(sessions, celery_app, worker_env, hours: float = 1.0):
    return sweep(sessions=sessions, app=celery_app, settings=worker_env.settings,
                 now=utcnow() + timedelta(hours=hours))


def _assert_exactly_once(sessions, job_ids) -> None:
    """Every job succeeded, has one result row, and each stage recorded its result once."""
    with sessions() as session:
        jobs = session.scalars(sa.select(Job).where(Job.id.in_(job_ids))).all()
        results = session.scalar(sa.select(sa.func.count()).select_from(JobResult)
                                 .where(JobResult.job_id.in_(job_ids)))
    assert {str(j.status) for j in jobs} == {"succeeded"}
    assert results == len(job_ids)
    assert stage_records(sessions, job_ids) == expected_stage_records(sessions, job_ids)


def test_a_worker_killed_mid_stage_is_replaced_and_each_job_completes_once(worker, submit, celery_app, sessions,
                                                                           worker_env):
    # Long vanilla answers keep the generate stage busy for a few seconds: time to kill it there. Equal
    # parameters put both jobs in one `generate` call (a stage saves each parameter group as it finishes).
    # (The tiny VLM does not reach EOS on these two within 200 tokens: most of a second of decoding.)
    submitted = submit([Item("Tell me everything.", "waterview.jpg", {"max_new_tokens": 200}),
                        Item("And more.", "extreme_ironing.jpg", {"max_new_tokens": 200})])
    ids = submitted.job_ids
    since = len(worker.log())
    enqueue_jobs(ids, app=celery_app)
    worker.wait_for_log("stage generate started: jobs", also=str(ids[0]), since=since, timeout=60)
    time.sleep(0.1)
    killed_log = worker.log()
    worker.kill()
    statuses = job_statuses(sessions, ids)
    assert set(statuses.values()) == {"generating"}, (statuses, killed_log[-3000:])  # killed mid-stage
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(JobResult)
                              .where(JobResult.job_id.in_(ids), JobResult.s_post.is_not(None))) == 0

    worker.start()
    # Redis keeps the killed worker's unacknowledged message until the visibility timeout; the sweeper
    # does not wait for it.
    report = _sweep_later(sessions, celery_app, worker_env)
    # (>=: and whatever else other tests left stalled)
    assert report.requeued.get("generate", 0) >= 2, (report, worker.log()[-3000:])
    wait_until_terminal(sessions, ids, worker=worker, timeout=180)
    _assert_exactly_once(sessions, ids)


def test_after_a_redis_flush_the_sweeper_recovers_every_job(worker, submit, celery_app, sessions, worker_env):
    items = [Item(f"Question {i}?", "extreme_ironing.jpg" if i % 3 else None, {"max_new_tokens": 24})
             for i in range(10)]
    submitted = submit(items)
    ids = submitted.job_ids
    since = len(worker.log())
    enqueue_jobs(ids, app=celery_app)  # three chains of up to 4 jobs
    worker.wait_for_log("stage pre started: jobs", also=str(ids[0]), since=since, timeout=60)
    assert flush_prefix(worker_env.key_prefix) > 0  # every queued message of this session is gone
    # The beat's sweeper sees its marker key gone with the rest and re-sends every job no worker holds.
    worker.wait_for_log("the broker lost its data", since=since, timeout=60)
    worker.wait_idle()

    deadline = time.monotonic() + 120
    while set(job_statuses(sessions, ids).values()) != {"succeeded"}:
        assert time.monotonic() < deadline, worker.log()[-3000:]
        _sweep_later(sessions, celery_app, worker_env)
        time.sleep(0.5)
        worker.wait_idle()
    _assert_exactly_once(sessions, ids)


def test_jobs_left_queued_while_the_broker_was_down_are_enqueued_by_the_sweeper(worker, submit, celery_app,
                                                                                sessions, worker_env):
    down = create_celery_app(worker_env.settings.with_values(redis_url="redis://127.0.0.1:1/0"))
    submitted = submit([Item("Submitted during an outage.", "waterview.jpg"), Item("Me too.", None)])
    start = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        enqueue_jobs(submitted.job_ids, app=down)
    assert time.monotonic() - start < 10  # the API answers 202 quickly and leaves the jobs queued
    assert set(job_statuses(sessions, submitted.job_ids).values()) == {"queued"}

    report = _sweep_later(sessions, celery_app, worker_env)
    assert report.requeued.get("pre", 0) >= 2
    wait_until_terminal(sessions, submitted.job_ids, worker=worker)
    _assert_exactly_once(sessions, submitted.job_ids)


def test_the_beat_schedule_sweeps_jobs_that_nobody_enqueued(worker, submit, sessions):
    # Stored an hour ago and never enqueued (the API lost the broker, then its process died): the worker's own
    # beat schedule runs the sweeper, which finds them without anyone calling it.
    submitted = submit([Item("Forgotten.", "waterview.jpg"), Item("Me too.", None)],
                       now=utcnow() - timedelta(hours=1))
    wait_until_terminal(sessions, submitted.job_ids, worker=worker, timeout=60)
    # Nothing but the sweeper could have sent them (they were never enqueued): finishing is its doing.
    _assert_exactly_once(sessions, submitted.job_ids)
