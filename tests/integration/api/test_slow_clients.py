"""One tenant's slow upload must not delay another tenant's polls: no database session, transaction or
(SQLite) lock is held while a request body trickles in. On SQLite and on Postgres, through a real threaded
HTTP server."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine
from werkzeug.serving import make_server

from api import create_app
from eta.settings import Settings
from eta.store import repository as repo
from eta.store import session_factory
from eta.store.models import ApiKeyRole

from .conftest import TEST_LIMITS

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
    app = create_app(Settings(database_url=url, eta_data_dir=tmp_path, **TEST_LIMITS), engine=engine,
                     enqueue=lambda ids: None)
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


def _slow_upload(address: str, key: str, done: threading.Event) -> None:
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
            sock.sendall(chunk)
            time.sleep(UPLOAD_SECONDS / len(chunks))  # the client's own pace, not a wait on the server
        answer = sock.recv(100)
    assert answer.startswith(b"HTTP/1.1 202"), answer
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
