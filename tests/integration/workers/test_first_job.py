"""`eta worker` started the way a user starts it, with its defaults (every queue, the prefork pool, one process),
completes its first job: `eta db upgrade`, `eta keys create`, `eta serve`, `eta worker`, `eta submit FOLDER`,
`eta status --wait`, every step a subprocess of the real command.

The other worker tests start the worker with tiny models that are already built; a worker on a fresh data
directory builds them itself before it forks its pool, and that is what hung (the pool process waited for ever
in its first torch operation). Here the worker starts on the embedded default (database and broker in the data
directory) and on Postgres + Redis, each with a fresh data directory and with the models built beforehand
(`eta models build-tiny`).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._workers import ETA, clean_environ
from tests.integration.conftest import fresh_postgres_database

from .conftest import REDIS_URL, flush_prefix

pytestmark = [pytest.mark.models]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """The commands of one user session, with its environment, and the long-running ones it started."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.children: list[subprocess.Popen[bytes]] = []

    def run(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([ETA, *args], env=self.env, capture_output=True, timeout=timeout, check=False)
        assert done.returncode == 0, (args, done.returncode, done.stderr.decode()[-3000:], self.tails())
        return done.stdout.decode().strip()

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            child = subprocess.Popen([ETA, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.children.append(child)
        return child

    def tails(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in self.logs.glob("*.log"))

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=30)


def _wait_healthy(url: str, api: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert api.poll() is None, f"the API exited with {api.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:  # noqa: S310 - our own API
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the API at {url} did not answer within {timeout}s")


@pytest.fixture
def user(tmp_path: Path) -> Iterator[Service]:
    data = tmp_path / "data"
    (tmp_path / "logs").mkdir()
    # Torch's own thread count, as on a user's machine (at least two threads: one thread starts no pool to break),
    # whatever this test session was told to use.
    env = {**{k: v for k, v in clean_environ().items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
           "OMP_NUM_THREADS": "2", "ETA_DATA_DIR": str(data), "ETA_DEVICE": "cpu"}
    service = Service(env, tmp_path / "logs")
    try:
        yield service
    finally:
        service.stop()


def _first_job(user: Service, photos: Path) -> None:
    user.run("db", "upgrade")
    key = user.run("keys", "create", "--tenant", "first-start", "--role", "admin")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    api = user.start("api", "serve", "--port", str(port), "--workers", "1")
    worker = user.start("worker", "worker")
    user.env.update(ETA_URL=url, ETA_API_KEY=key)
    _wait_healthy(url, api)
    batch = user.run("submit", str(photos), "--prompt", "What is in this picture?")
    # A hang was for ever; the first job here waits for the models to build and load on a busy machine.
    user.run("status", batch, "--wait", timeout=420)
    results = [json.loads(line) for line in user.run("results", batch, "--format", "jsonl").splitlines()]
    assert [job["status"] for job in results] == ["succeeded"], results
    assert worker.poll() is None
    log = (user.logs / "worker.log").read_text(errors="replace")
    assert "pool process ready" in log and "ForkPoolWorker" in log, log[-3000:]


@pytest.fixture
def photos(tmp_path: Path, samples_dir: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes((samples_dir / "waterview.jpg").read_bytes())
    return folder


def _build_models(user: Service) -> None:
    user.run("models", "build-tiny", str(Path(user.env["ETA_DATA_DIR"]) / "tiny-models"))


@pytest.mark.parametrize("models_built", [False, True], ids=["fresh-data-directory", "models-built-beforehand"])
def test_the_default_worker_completes_its_first_job_on_the_embedded_default(user: Service, photos: Path,
                                                                            models_built: bool):
    # Fresh: nothing built, the worker builds the tiny models itself (in its preflight child) before its pool starts.
    if models_built:
        _build_models(user)
    _first_job(user, photos)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("models_built", [False, True], ids=["fresh-data-directory", "models-built-beforehand"])
def test_the_default_worker_completes_its_first_job_on_postgres_and_redis(user: Service, photos: Path,
                                                                         models_built: bool):
    prefix = f"eta-test-{secrets.token_hex(4)}:"
    with fresh_postgres_database("eta_first_job") as url:
        user.env.update(DATABASE_URL=url, REDIS_URL=REDIS_URL, ETA_BROKER_KEY_PREFIX=prefix)
        try:
            if models_built:
                _build_models(user)
            _first_job(user, photos)
        finally:
            user.stop()
            flush_prefix(prefix)
