"""Planted faults through a real prefork worker on Postgres + Redis, with the instant models:

- a poison job (its prompt makes the instant VLM SIGKILL its pool process, every time) fails alone: the
  sweeper re-sends the crashed chunk in smaller and smaller chunks, so the jobs that shared its chunk finish;
- a stage stuck in native code (the soft time limit's signal masked) while its lease keeper thread goes on
  renewing the jobs' leases is still ended by the stage's hard time limit;
- a pool process stuck while loading its models is reported (its stacks in the log) and replaced.

Each test has a database, a Redis key prefix and a worker of its own: the worker's beat runs the sweeper every
second over every job of its database, and must not meet another test's jobs or workers.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from bench._workers import WorkerProcess, clean_environ
from eta.settings import Settings
from eta.store import repository as repo
from eta.store import session_factory
from eta.store.models import Job
from eta.store.repository import NewJob
from tests.integration.conftest import fresh_postgres_database, migrated_engine
from workers.app import create_celery_app
from workers.enqueue import enqueue_jobs

from .conftest import REDIS_URL, WORKER_ENV, flush_prefix, wait_until_terminal

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

MARKER = "[planted-fault]"


@dataclass
class FaultyWorker:
    worker: WorkerProcess
    sessions: sessionmaker[Session]
    settings: Settings

    def submit(self, prompts: list[str]) -> list[uuid.UUID]:
        """A batch of text-only jobs, enqueued as the API would (chunks of ETA_CHUNK_SIZE, in order)."""
        with self.sessions() as session, session.begin():
            tenant = repo.create_tenant(session=session, name=f"faults-{uuid.uuid4().hex[:8]}")
            batch = repo.create_batch_with_jobs(
                session=session, tenant_id=tenant.id,
                jobs=[NewJob(prompt=p, image_sha256=None, custom_id=f"item-{i}", params={"max_new_tokens": 8})
                      for i, p in enumerate(prompts)])
        enqueue_jobs(batch.job_ids, app=create_celery_app(self.settings))
        return list(batch.job_ids)

    def outcomes(self, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str | None]]:
        with self.sessions() as session:
            rows = session.execute(sa.select(Job.id, Job.status, Job.error_code).where(Job.id.in_(job_ids)))
            return {job_id: (str(status), code) for job_id, status, code in rows}


def _faulty_worker(tmp_path: Path, fault: str, *, start: bool = True, **overrides: str) -> Iterator[FaultyWorker]:
    prefix = f"eta-test-{secrets.token_hex(4)}:"
    # The data directory does not exist yet, as on a first start: `eta worker --beat` must make the folder of
    # beat's schedule file itself.
    with fresh_postgres_database("eta_faults") as url, migrated_engine(url) as engine:
        env = {**clean_environ(), **WORKER_ENV, "DATABASE_URL": url, "REDIS_URL": REDIS_URL,
               "ETA_BROKER_KEY_PREFIX": prefix, "ETA_DATA_DIR": str(tmp_path / "data"), "ETA_MODELS": "instant",
               "ETA_INSTANT_FAULT": fault if fault == "hang_load" or ":" in fault else f"{fault}:{MARKER}",
               "ETA_LEASE_S": "3", "ETA_SWEEP_INTERVAL_S": "1",
               "ETA_MAX_STAGE_ATTEMPTS": "1", **overrides}
        settings = Settings(database_url=url, redis_url=REDIS_URL,
                            **{k.lower(): v for k, v in env.items() if k.startswith("ETA_") and k != "ETA_MODELS"
                               and k != "ETA_INSTANT_FAULT"})
        worker = WorkerProcess(env, tmp_path / "worker.log")
        if start:
            worker.start()
        try:
            yield FaultyWorker(worker=worker, sessions=session_factory(engine), settings=settings)
        finally:
            worker.stop()
            flush_prefix(prefix)


@pytest.fixture
def poison_worker(tmp_path: Path) -> Iterator[FaultyWorker]:
    yield from _faulty_worker(tmp_path, "kill")


@pytest.fixture
def hanging_worker(tmp_path: Path) -> Iterator[FaultyWorker]:
    yield from _faulty_worker(tmp_path, "hang", ETA_GENERATE_SOFT_TIME_LIMIT_S="2", ETA_GENERATE_TIME_LIMIT_S="4")


@pytest.fixture
def unready_worker(tmp_path: Path) -> Iterator[FaultyWorker]:
    # Long enough for a pool process to import torch on a loaded machine (it takes seconds) and hang where planted.
    yield from _faulty_worker(tmp_path, "hang_load", ETA_WORKER_READY_TIMEOUT_S="12")


def test_a_poison_job_fails_alone_and_its_chunk_mates_succeed(poison_worker: FaultyWorker):
    # Eight jobs in chunks of four (ETA_CHUNK_SIZE): the poison sits in the first chunk, with three innocent jobs.
    prompts = [f"Describe picture {i}." for i in range(8)]
    prompts[1] = f"Describe picture 1. {MARKER}"
    ids = poison_worker.submit(prompts)
    wait_until_terminal(poison_worker.sessions, ids, worker=poison_worker.worker, timeout=150)
    outcomes = poison_worker.outcomes(ids)
    log = poison_worker.worker.log()
    assert outcomes[ids[1]] == ("failed", "stalled"), log[-3000:]
    assert {outcomes[i] for i in ids if i != ids[1]} == {("succeeded", None)}, (outcomes, log[-3000:])
    # It did kill its pool process, more than once (the first chunk of four, then a pair, then alone), and the
    # pool replaced it each time.
    assert log.count("exited with 'signal 9 (SIGKILL)'") >= 3, log[-3000:]


@pytest.fixture
def slow_loading_worker(tmp_path: Path) -> Iterator[FaultyWorker]:
    yield from _faulty_worker(tmp_path, "slow_load:4", start=False)


def test_the_worker_consumes_only_once_its_pool_process_has_loaded_its_models(slow_loading_worker: FaultyWorker):
    # Jobs wait in the queues before the worker starts; its pool process takes 4 s to load its models. A message
    # the main process took meanwhile would sit there unstarted, its jobs unleased: stranded until the broker's
    # visibility timeout if the broker restarted then (the chaos test lost jobs this way).
    ids = slow_loading_worker.submit([f"Describe picture {i}." for i in range(3)])
    worker = slow_loading_worker.worker.start()
    wait_until_terminal(slow_loading_worker.sessions, ids, worker=worker, timeout=120)
    log = worker.log()
    assert {outcome for outcome in slow_loading_worker.outcomes(ids).values()} == {("succeeded", None)}, log[-3000:]
    ready = log.index("pool process ready")
    assert log.index("waiting for 1 pool process(es)") < ready < log.index("ready after") < log.index("] received"), \
        log[-3000:]


def test_a_stuck_stage_whose_lease_is_renewed_is_ended_by_its_time_limit(hanging_worker: FaultyWorker):
    ids = hanging_worker.submit([f"Hold on. {MARKER}"])
    # While the stage hangs, the worker's lease keeper thread keeps pushing the lease back: alive, not swept.
    leases: list[datetime] = []
    deadline = time.monotonic() + 30
    while len(set(leases)) < 2 and time.monotonic() < deadline:
        with hanging_worker.sessions() as session:
            status, lease = session.execute(sa.select(Job.status, Job.lease_expires_at).where(Job.id == ids[0])).one()
        if str(status) == "generating" and lease is not None:
            leases.append(lease)
        time.sleep(0.2)
    assert len(set(leases)) >= 2 and leases[-1] > leases[0], hanging_worker.worker.log()[-3000:]
    # The soft limit cannot reach it (its signal is masked); the hard limit (4 s) kills the process, the lease
    # lapses with its thread, and the sweeper's last try (alone: ETA_CHUNK_SIZE 4 -> 2 -> 1) fails it.
    wait_until_terminal(hanging_worker.sessions, ids, worker=hanging_worker.worker, timeout=150)
    log = hanging_worker.worker.log()
    assert hanging_worker.outcomes(ids)[ids[0]] == ("failed", "stalled"), log[-3000:]
    # Each of the three tries ran until the hard limit, and no longer.
    tries = _stage_durations(log, "generate")
    assert len(tries) == 3 and all(4 <= t < 4 + 2 for t in tries), (tries, log[-3000:])


def _stage_durations(log: str, stage: str) -> list[float]:
    """Seconds from each "stage STAGE started" line to the next "Hard time limit" line of the worker log."""
    durations = []
    started: datetime | None = None
    for line in log.splitlines():
        if not line.startswith("[20"):
            continue
        at = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
        if f"stage {stage} started" in line:
            started = at
        elif "Hard time limit (" in line and started is not None:
            durations.append((at - started).total_seconds())
            started = None
    return durations


def test_a_pool_process_not_ready_by_its_deadline_is_reported_and_replaced(unready_worker: FaultyWorker):
    worker = unready_worker.worker
    # Every pool process hangs while loading its models: after ETA_WORKER_READY_TIMEOUT_S its stacks are in the
    # log (where it was stuck, down from the process-start hook) and it exits; the pool starts another, which is
    # reported and replaced in turn. Past twice that deadline the worker takes messages with what is up.
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        log = worker.log()
        exited = set(re.findall(r"Process '(ForkPoolWorker-\d+)' pid:\d+ exited with 'exitcode 1'", log))
        if len(exited) >= 2 and log.count("Timeout (0:00:12)!") >= 2 and "taking messages anyway" in log:
            break
        time.sleep(0.2)
    assert len(exited) >= 2 and log.count("Timeout (0:00:12)!") >= 2, log[-3000:]
    assert "only 0 of 1 pool processes ready after" in log, log[-3000:]
    assert "in on_worker_process_init" in log, log[-3000:]
    assert "pool process ready" not in log
    assert worker.running
