"""Submission against a real Redis broker, including one that is stopped while the API keeps running."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from api import create_app
from eta.settings import Settings
from eta.store.models import Job

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own, so stopping it disturbs nothing else."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.tmp)], stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def keys(self) -> list[bytes]:
        return list(redis.Redis.from_url(self.url).scan_iter())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def broker_client(broker, postgres_url, postgres_engine, tmp_path):
    settings = Settings(database_url=postgres_url, redis_url=broker.url, eta_data_dir=tmp_path)
    return create_app(settings, engine=postgres_engine).test_client()  # the real enqueue


def test_jobs_reach_the_broker_then_survive_its_outage(broker, broker_client, tenant, postgres_engine):
    first = broker_client.post("/v1/batches", headers=tenant.auth(),
                               json={"items": [{"prompt": "a"}, {"prompt": "b"}]})
    assert first.status_code == 202 and first.json["submission"] == {"dispatch": "dispatched"}
    assert any(b"eta.pre" in key for key in broker.keys())  # the first stage's message is waiting
    assert broker_client.get("/readyz").status_code == 200

    broker.stop()
    start = time.perf_counter()
    second = broker_client.post("/v1/batches", headers=tenant.auth(),
                                json={"items": [{"prompt": "c"}, {"prompt": "d"}]})
    waited = time.perf_counter() - start
    assert second.status_code == 202, second.json
    assert second.json["status"] == "in_progress" and second.json["counts"]["queued"] == 2
    assert second.json["submission"] == {"dispatch": "deferred"}
    assert waited < 30  # bounded by the broker connect timeout, not hanging
    with postgres_engine.connect() as c:
        stored = c.execute(sa.select(Job.status).where(Job.batch_id == uuid.UUID(second.json["id"]))).scalars()
        assert [s.value for s in stored] == ["queued", "queued"]  # kept for the sweeper
    ready = broker_client.get("/readyz")
    assert ready.status_code == 503 and ready.mimetype == "application/problem+json"
    assert ready.json["checks"]["database"] == {"ok": True} and not ready.json["checks"]["broker"]["ok"]

    broker.start()
    assert broker_client.get("/readyz").status_code == 200
