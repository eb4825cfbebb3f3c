"""A live ETA stack for the client tests: `eta serve` (gunicorn) and `eta worker` as real processes, on a
Postgres database of their own and the local Redis (keys under a prefix of this session, deleted after).

The client and the CLI talk to it over TCP exactly as a pipeline would: through ETA_URL and ETA_API_KEY.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy.engine import Engine

from tests.integration.conftest import fresh_postgres_database, migrated_engine

REDIS_URL = os.environ.get("ETA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ETA = str(Path(sys.executable).with_name("eta"))
# Small jobs: a few tokens per answer, two candidates per sentence when aligning.
FAST_PARAMS = {"max_new_tokens": 8, "num_candidates": 2}
# Thresholds that flag and align every job (s_pre >= -1 always; s_post <= 1e9 always).
ALIGN_ALL = {"tau_pre": -1.0, "tau_post": 1e9}


@dataclass
class LiveStack:
    url: str
    api_key: str
    engine: Engine
    env: dict[str, str]
    logs: Path

    def cli_env(self, **extra: str) -> dict[str, str]:
        """The environment of a pipeline calling the `eta` client commands."""
        return {**_clean_environ(), "ETA_URL": self.url, "ETA_API_KEY": self.api_key, **extra}

    def eta(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        """Run `eta ARGS` as a pipeline would; with `check`, fail the test with its stderr on a non-zero exit."""
        done = subprocess.run([ETA, *args], env=self.cli_env(**env), capture_output=True, text=True, timeout=180,
                              check=False)
        if check and done.returncode != 0:
            pytest.fail(f"eta {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done


def _clean_environ() -> dict[str, str]:
    """This process's environment without anything that would point the stack elsewhere."""
    return {k: v for k, v in os.environ.items()
            if not (k.startswith("ETA_") or k in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "BLOB_BACKEND"))}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until(ready: Callable[[], bool], *, what: str, timeout: float, procs: list[subprocess.Popen[bytes]],
                log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited {proc.returncode} before {what}:\n{_tail(log)}")
        time.sleep(0.1)
    raise TimeoutError(f"no {what} after {timeout} s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def live_stack(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    logs = tmp_path_factory.mktemp("client-stack")
    data_dir = logs / "data"
    data_dir.mkdir()
    # The worker would build the tiny models into its data directory; give it the session's.
    (data_dir / "tiny-models").symlink_to(tiny_models_dir, target_is_directory=True)
    prefix = f"eta-client-test-{secrets.token_hex(4)}:"
    port = _free_port()
    with fresh_postgres_database("eta_client") as database_url, migrated_engine(database_url) as engine:
        env = {**_clean_environ(), "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
               "ETA_BROKER_KEY_PREFIX": prefix, "ETA_DATA_DIR": str(data_dir), "ETA_DEVICE": "cpu",
               "SECRET_KEY": secrets.token_hex(16), "ETA_CHUNK_SIZE": "4"}
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for name, argv in (
                ("api", [ETA, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                         "--threads", "8"]),
                ("worker", [ETA, "worker", "--queues", "pre,generate,post,control", "--concurrency", "1",
                            "--loglevel", "info"]),
            ):
                with open(logs / f"{name}.log", "wb") as log:
                    procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True))
            url = f"http://127.0.0.1:{port}"

            def api_up() -> bool:
                try:
                    return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait_until(api_up, what="API", timeout=60, procs=procs, log=logs / "api.log")
            _wait_until(lambda: " ready." in _tail(logs / "worker.log"), what="worker", timeout=120, procs=procs,
                        log=logs / "worker.log")
            created = subprocess.run([ETA, "keys", "create", "--tenant", f"pipeline-{prefix}", "--role", "admin"],
                                     env=env, capture_output=True, text=True, check=True, timeout=60)
            yield LiveStack(url=url, api_key=created.stdout.strip(), engine=engine, env=env, logs=logs)
        finally:
            for proc in procs:
                _stop(proc)
            _flush_prefix(prefix)


def _flush_prefix(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def image_folder(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of images as a pipeline would have it (with a non-image file that must be left out)."""
    folder = tmp_path_factory.mktemp("images")
    for name in ("waterview.jpg", "extreme_ironing.jpg", "harm_example.png"):
        shutil.copy(samples_dir / name, folder / name)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


# ------------------------------------------------------------------------------------- the proxy
class DroppingProxy:
    """An HTTP/1.1 relay on 127.0.0.1 that loses the response of the first request `drop` picks.

    It forwards that request, reads the server's whole response (so the server has handled it), then closes
    the client's connection without sending a byte of it: a connection dropped by a load balancer at the
    worst moment. Every other request is relayed as is. Bodies are framed by Content-Length (what both the
    client and gunicorn send for these requests).
    """

    def __init__(self, upstream_port: int, drop: Callable[[bytes], bool]) -> None:
        self.upstream_port = upstream_port
        self.drop = drop
        self.heads: list[bytes] = []
        self.dropped = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> DroppingProxy:
        accept = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._server.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            relay = threading.Thread(target=self._relay, args=(conn,), name="proxy-relay", daemon=True)
            relay.start()
            self._threads.append(relay)

    def _relay(self, client: socket.socket) -> None:
        client.settimeout(30)
        with client, socket.create_connection(("127.0.0.1", self.upstream_port), timeout=60) as upstream:
            from_client, from_upstream = client.makefile("rb"), upstream.makefile("rb")
            while not self._stopping.is_set():
                request = _read_message(from_client)
                if request is None:
                    return
                upstream.sendall(request)
                response = _read_message(from_upstream)
                if response is None:
                    return
                head = request.split(b"\r\n\r\n", 1)[0]
                with self._lock:
                    self.heads.append(head)
                    lose = self.dropped == 0 and self.drop(head)
                    if lose:
                        self.dropped += 1
                if lose:
                    client.shutdown(socket.SHUT_RDWR)
                    return
                client.sendall(response)


def _read_message(stream) -> bytes | None:  # noqa: ANN001 - a socket file
    """One HTTP/1.1 message (head and a Content-Length body) from `stream`; None at end of stream."""
    lines = []
    while True:
        line = stream.readline(65536)
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            break
    head = b"".join(lines)
    length = 0
    for line in lines[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        if name.strip().lower() == "transfer-encoding":
            raise AssertionError("the proxy frames messages by Content-Length only")
    return head + stream.read(length) if length else head


def header(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None
