"""Real Celery workers (subprocesses of `eta worker`, driven by bench/_workers.py, the harness the chaos bench
uses too) against real Redis and a Postgres database of their own.

One worker process serves every test where it can (it starts in a few seconds and loads the tiny
models once). Redis is the server on 127.0.0.1:6379; every key this session writes carries its own prefix,
and only those keys are ever deleted. The worker gets short time limits and sweeper timeouts, and the
tests call the sweeper with a `now` in the future instead of waiting.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from bench._workers import WorkerProcess, clean_environ
from eta.images import decode_image
from eta.settings import Settings
from eta.store import make_blob_store, session_factory
from eta.store import repository as repo
from eta.store.lifecycle import TERMINAL_JOB_STATUSES
from eta.store.models import Batch, Job, JobResult
from eta.store.repository import NewJob
from tests.integration.conftest import fresh_postgres_database, migrated_engine

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.models]

REDIS_URL = os.environ.get("ETA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# Worker settings for tests: small chunks (several chains per batch) and short limits.
WORKER_ENV = {
    "ETA_DEVICE": "cpu",
    "ETA_CHUNK_SIZE": "4",
    "ETA_GENERATE_BATCH_SIZE": "4",
    "ETA_CLIP_BATCH_SIZE": "4",
    "ETA_REWARD_BATCH_SIZE": "4",
    "ETA_PRE_SOFT_TIME_LIMIT_S": "60",
    "ETA_PRE_TIME_LIMIT_S": "70",
    "ETA_GENERATE_SOFT_TIME_LIMIT_S": "120",
    "ETA_GENERATE_TIME_LIMIT_S": "130",
    "ETA_POST_SOFT_TIME_LIMIT_S": "60",
    "ETA_POST_TIME_LIMIT_S": "70",
    "ETA_SWEEP_QUEUED_AFTER_S": "300",
    "ETA_SWEEP_PRE_EVALUATING_AFTER_S": "300",
    "ETA_SWEEP_GENERATING_AFTER_S": "300",
    "ETA_SWEEP_POST_EVALUATING_AFTER_S": "300",
    "ETA_MAX_STAGE_ATTEMPTS": "20",
    "ETA_RETRY_BACKOFF_MAX_S": "2",
    # The callback receiver of the tests listens on 127.0.0.1, which callbacks may only reach when allowed.
    "ETA_CALLBACK_ALLOWED_NETWORKS": "127.0.0.1/32",
    "ETA_CALLBACK_TIMEOUT_S": "5",
    # Images by reference: short fetch limits, so a stalling server costs a test seconds (and, being the same
    # allow-list as callbacks', 127.0.0.1 is reachable).
    "ETA_IMAGE_FETCH_TIMEOUT_S": "2",
    "ETA_IMAGE_FETCH_ATTEMPTS": "2",
    # The worker runs the beat schedule; sweeping every second finds what a test leaves stalled on purpose.
    "ETA_SWEEP_INTERVAL_S": "1",
}


@dataclass
class WorkerEnv:
    """Everything a worker process and the test process agree on."""

    database_url: str
    data_dir: Path
    key_prefix: str
    env: dict[str, str]
    settings: Settings

    @property
    def tiny_dir(self) -> Path:
        return self.data_dir / "tiny-models"


@pytest.fixture(scope="session")
def worker_database() -> Iterator[str]:
    """A Postgres database for the worker tests only (the sweeper looks at every job of its database)."""
    with fresh_postgres_database("eta_workers") as url, migrated_engine(url):
        yield url


@pytest.fixture(scope="session")
def worker_env(worker_database: str, tiny_models_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerEnv]:
    data_dir = tmp_path_factory.mktemp("worker-data")
    # The worker builds its tiny models into the data directory on first use; the session's are the same.
    (data_dir / "tiny-models").symlink_to(tiny_models_dir, target_is_directory=True)
    prefix = f"eta-test-{secrets.token_hex(4)}:"
    env = {**clean_environ(), **WORKER_ENV, "DATABASE_URL": worker_database, "REDIS_URL": REDIS_URL,
           "ETA_BROKER_KEY_PREFIX": prefix, "ETA_DATA_DIR": str(data_dir)}
    settings = Settings(database_url=worker_database, redis_url=REDIS_URL,
                        **{k.lower(): v for k, v in env.items() if k.startswith("ETA_")})
    yield WorkerEnv(database_url=worker_database, data_dir=data_dir, key_prefix=prefix, env=env, settings=settings)
    flush_prefix(prefix)


def flush_prefix(prefix: str) -> int:
    """Delete every Redis key of this test session (and nothing else)."""
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


@pytest.fixture(scope="session")
def celery_app(worker_env: WorkerEnv) -> Any:
    """The test process's client of the workers' broker (sends messages; never runs a task)."""
    from workers.app import create_celery_app

    return create_celery_app(worker_env.settings)


@pytest.fixture(scope="session")
def engine(worker_database: str) -> Iterator[Engine]:
    from eta.store.db import make_engine

    engine = make_engine(worker_database)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture(scope="session")
def worker(worker_env: WorkerEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A worker on every queue, shared by every test (a test that kills it starts another in its place)."""
    process = WorkerProcess(worker_env.env, tmp_path_factory.mktemp("worker-log") / "worker.log").start()
    yield process
    process.stop()


# ------------------------------------------------------------------------------------------ job data
@dataclass
class Item:
    prompt: str
    image: str | bytes | None = None  # a sample file name, raw bytes (stored unchecked), or no image
    params: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="session")
def tenant_id(sessions: sessionmaker[Session]) -> uuid.UUID:
    with sessions() as session, session.begin():
        return repo.create_tenant(session=session, name=f"workers-{uuid.uuid4().hex[:8]}").id


@pytest.fixture
def submit(sessions: sessionmaker[Session], tenant_id: uuid.UUID, samples_dir: Path,
           worker_env: WorkerEnv) -> Callable[..., repo.SubmittedBatch]:
    """Store a batch the way the API does (images in the blob store, jobs queued); enqueue nothing."""

    def make(items: list[Item], *, callback_url: str | None = None, now: datetime | None = None
             ) -> repo.SubmittedBatch:
        with sessions() as session, session.begin():
            blobs = make_blob_store(session=session, settings=worker_env.settings)
            jobs = []
            for i, item in enumerate(items):
                sha = None
                if isinstance(item.image, str):
                    data = (samples_dir / item.image).read_bytes()
                    decoded = decode_image(data)
                    sha = repo.store_image(session=session, blobs=blobs, data=data, mime=decoded.mime,
                                           width=decoded.width, height=decoded.height)
                elif isinstance(item.image, bytes):
                    sha = repo.store_image(session=session, blobs=blobs, data=item.image, mime="image/png",
                                           width=1, height=1)
                jobs.append(NewJob(prompt=item.prompt, image_sha256=sha, custom_id=f"item-{i}",
                                   params={"max_new_tokens": 8, **item.params}))
            return repo.create_batch_with_jobs(session=session, tenant_id=tenant_id, jobs=jobs,
                                               callback_url=callback_url, now=now)

    return make


def wait_until_terminal(sessions: sessionmaker[Session], job_ids: list[uuid.UUID], *, timeout: float = 90,
                        worker: WorkerProcess | None = None) -> dict[uuid.UUID, str]:
    deadline = time.monotonic() + timeout
    statuses: dict[uuid.UUID, str] = {}
    while time.monotonic() < deadline:
        statuses = job_statuses(sessions, job_ids)
        if all(s in {str(t) for t in TERMINAL_JOB_STATUSES} for s in statuses.values()):
            return statuses
        time.sleep(0.1)
    tail = worker.log()[-4000:] if worker else ""
    raise TimeoutError(f"jobs not finished after {timeout}s: {statuses}\n{tail}")


def wait_for_batch(sessions: sessionmaker[Session], batch_id: uuid.UUID, *, status: str = "completed",
                   timeout: float = 30) -> Batch:
    """The batch once it has `status` (it completes in its own transaction, just after its last job's)."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            batch = session.get(Batch, batch_id)
        if batch is not None and str(batch.status) == status:
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} is {batch.status if batch else 'missing'}, not {status}")
        time.sleep(0.1)


def job_statuses(sessions: sessionmaker[Session], job_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    with sessions() as session:
        rows = session.execute(sa.select(Job.id, Job.status).where(Job.id.in_(job_ids)))
        return {job_id: str(status) for job_id, status in rows}


def stage_records(sessions: sessionmaker[Session], job_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """How many stage results each job's row has recorded: one per stage it went through, when exactly once."""
    with sessions() as session:
        rows = session.execute(sa.select(JobResult.job_id, JobResult.stage_records)
                               .where(JobResult.job_id.in_(job_ids)))
        return {job_id: int(n) for job_id, n in rows}


def expected_stage_records(sessions: sessionmaker[Session], job_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Three stages for a job with an image, two for a text-only one (it skips pre-evaluation)."""
    with sessions() as session:
        rows = session.execute(sa.select(Job.id, Job.image_sha256).where(Job.id.in_(job_ids)))
        return {job_id: 3 if sha is not None else 2 for job_id, sha in rows}


def snapshot(sessions: sessionmaker[Session], job_ids: list[uuid.UUID]) -> dict[str, Any]:
    """Every stored column of the jobs and their results."""
    with sessions() as session:
        jobs = session.execute(sa.select(Job.__table__).where(Job.id.in_(job_ids)).order_by(Job.id)).mappings().all()
        results = session.execute(sa.select(JobResult.__table__).where(JobResult.job_id.in_(job_ids))
                                  .order_by(JobResult.job_id)).mappings().all()
    return {"jobs": [dict(r) for r in jobs], "results": [dict(r) for r in results]}
