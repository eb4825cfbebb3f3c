"""One tenant's slow upload must not delay another tenant's polls: no database session, transaction or
(SQLite) lock is held while a request body trickles in. On SQLite and on Postgres, through a real threaded
HTTP server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from werkzeug.serving import make_server

from api import create_app
from eta.settings import Settings
from eta.store import repository as repo
from eta.store import session_factory
from eta.store.models import ApiKeyRole

from .conftest import TEST_LIMITS

ETA = str(Path(sys.executable).with_name("eta"))
# A poll normally answers in milliseconds; a held lock or pool slot would make it wait seconds.
POLL_BUDGET_S = 1.0
UPLOAD_SECONDS = 4.0


def _key(engine: Engine) -> str:
    with session_factory(engine)() as session, session.begin():
        tenant = repo.create_tenant(session=session, name=f"slow-{uuid.uuid4().hex[:8]}")
        return repo.create_api_key(session=session, tenant_id=tenant.id, role=ApiKeyRole.ADMIN)[1]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request, tmp_path) -> Iterator[tuple[str, Engine]]:
    if request.param == "sqlite":
        url, engine = request.getfixturevalue("sqlite_url"), request.getfixturevalue("sqlite_engine")
    else:
        url, engine = request.getfixturevalue("postgres_url"), request.getfixturevalue("postgres_engine")
    # The poller asks as fast as the server answers (hundreds of polls a second on an idle machine): its key's
    # request limit is lifted, this test is about locks, not rates.
    app = create_app(Settings(database_url=url, eta_data_dir=tmp_path, eta_rate_limit_admin="1000000/minute",
                              **TEST_LIMITS), engine=engine, enqueue=lambda ids: None)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{http.server_port}", engine
    finally:
        http.shutdown()


def _poll(address: str, key: str, job_id: str) -> float:
    started = time.perf_counter()
    request = urllib.request.Request(f"http://{address}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - a local URL
        assert response.status == 200
    return time.perf_counter() - started


def _slow_upload(address: str, key: str, done: threading.Event, expect: bytes = b"HTTP/1.1 202") -> None:
    """A multipart job submission (read after authentication) whose body arrives a few bytes at a time over
    UPLOAD_SECONDS."""
    boundary = "slow-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n'.encode() + b"x" * 400
            + f"\r\n--{boundary}--\r\n".encode())
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n"
                     f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        chunks = [body[i:i + 10] for i in range(0, len(body), 10)]
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered early and closed: read what it said
            time.sleep(UPLOAD_SECONDS / len(chunks))  # the client's own pace, not a wait on the server
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b"(connection reset)"
    assert answer.startswith(expect), answer
    done.set()


def test_a_slow_upload_does_not_delay_another_tenants_poll(server):
    address, engine = server
    slow_key, poll_key = _key(engine), _key(engine)
    submit = urllib.request.Request(f"http://{address}/v1/jobs", data=b'{"prompt": "Poll me"}', method="POST",
                                    headers={"Authorization": f"Bearer {poll_key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(submit, timeout=30) as response:  # noqa: S310 - a local URL
        job_id = json.loads(response.read())["id"]
    baseline = max(_poll(address, poll_key, job_id) for _ in range(5))

    done = threading.Event()
    uploader = threading.Thread(target=_slow_upload, args=(address, slow_key, done))
    uploader.start()
    latencies = []
    while not done.is_set() and uploader.is_alive():
        latencies.append(_poll(address, poll_key, job_id))
    uploader.join(timeout=60)
    assert done.is_set(), "the slow upload did not complete"
    assert len(latencies) >= 5, latencies
    assert max(latencies) < max(POLL_BUDGET_S, 10 * baseline), (baseline, sorted(latencies)[-5:])


def test_under_eta_serve_an_upload_slower_than_the_body_timeout_gets_408(tmp_path):
    """Through gunicorn, as deployed: the read side is cut at ETA_BODY_TIMEOUT_S, the thread answers 408."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("ETA_") or k in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY"))}
    env.update({"ETA_DATA_DIR": str(tmp_path), "ETA_BODY_TIMEOUT_S": "1.5"})
    subprocess.run([ETA, "db", "upgrade"], env=env, check=True, capture_output=True)
    key = subprocess.run([ETA, "keys", "create", "--tenant", "slow", "--role", "submit"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([ETA, "serve", "--port", str(port), "--workers", "1", "--threads", "4"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):  # noqa: S310
                    break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "eta serve did not start"
                time.sleep(0.2)
        started = time.monotonic()
        _slow_upload(f"127.0.0.1:{port}", key, threading.Event(), expect=b"HTTP/1.1 408")
        assert time.monotonic() - started < UPLOAD_SECONDS
    finally:
        server.terminate()
        server.wait(timeout=20)
