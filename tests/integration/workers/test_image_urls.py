"""Images by reference and presets, through the API to a real worker on Postgres + Redis: the pre-evaluation
stage fetches each image under the outbound policy and the fetch limits, stores it content-addressed, and
judges exactly those bytes; a failed fetch fails only its job, with `image_fetch_failed` and the cause."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from api import create_app
from eta.store import make_blob_store
from eta.store import repository as repo
from eta.store.models import ApiKeyRole, Job
from tests.image_server import ImageServer, image_server
from workers.enqueue import enqueue_jobs

from .conftest import wait_for_batch, wait_until_terminal

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.models]

# The worker's fetch limits (tests/integration/workers/conftest.py): 2 attempts of at most 2 s each.
FETCH_TIMEOUT_S, FETCH_ATTEMPTS = 2.0, 2


@pytest.fixture
def api(worker_env, engine, celery_app, sessions) -> Iterator[tuple[Any, dict[str, str]]]:
    app = create_app(worker_env.settings, engine=engine,
                     enqueue=lambda ids: enqueue_jobs(ids, app=celery_app))
    with sessions() as session, session.begin():
        tenant = repo.create_tenant(session=session, name=f"refs-{uuid.uuid4().hex[:8]}")
        _, token = repo.create_api_key(session=session, tenant_id=tenant.id, role=ApiKeyRole.ADMIN)
    yield app.test_client(), {"Authorization": f"Bearer {token}"}


@pytest.fixture
def image(samples_dir: Path) -> bytes:
    return (samples_dir / "waterview.jpg").read_bytes()


@pytest.fixture
def server(image) -> Iterator[ImageServer]:
    with image_server("127.0.0.1", image) as s:
        yield s


@pytest.fixture
def victim(image) -> Iterator[ImageServer]:
    with image_server("127.0.0.2", image) as s:
        yield s


def _jobs(sessions, batch_id) -> dict[str, Job]:
    with sessions() as session:
        return {j.custom_id: j for j in session.scalars(sa.select(Job).where(Job.batch_id == batch_id))}


def test_images_by_reference_are_fetched_checked_and_judged(api, server, victim, image, sessions, worker,
                                                            worker_env):
    client, auth = api
    server.redirect_to = victim.url("/image.jpg")
    server.failures_left["/flaky.jpg"] = 1
    items = [
        {"custom_id": "ok", "prompt": "What is in this picture?", "image_url": server.url("/image.jpg?v=1")},
        {"custom_id": "flaky", "prompt": "And this one?", "image_url": server.url("/flaky.jpg")},
        {"custom_id": "redirect", "prompt": "p", "image_url": server.url("/redirect")},
        {"custom_id": "stall", "prompt": "p", "image_url": server.url("/stall")},
        {"custom_id": "endless", "prompt": "p", "image_url": server.url("/endless")},
        {"custom_id": "missing", "prompt": "p", "image_url": server.url("/missing.jpg")},
    ]
    r = client.post("/v1/batches", headers=auth, json={"items": items, "params": {"max_new_tokens": 8}})
    assert r.status_code == 202, r.json
    started = time.monotonic()
    batch_id = uuid.UUID(r.json["id"])
    ids = [j.id for j in _jobs(sessions, batch_id).values()]
    wait_until_terminal(sessions, ids, worker=worker, timeout=120)
    elapsed = time.monotonic() - started
    jobs = _jobs(sessions, batch_id)

    # Fetched, stored content-addressed, judged: the sha256 is that of the bytes the server sent.
    ok = jobs["ok"]
    assert ok.status == "succeeded", (ok.error_code, ok.error_message)
    assert ok.image_sha256 == hashlib.sha256(image).hexdigest() and ok.image_url == server.url("/image.jpg?v=1")
    with sessions() as session:
        assert make_blob_store(session=session, settings=worker_env.settings).get(ok.image_sha256) == image
    doc = client.get(f"/v1/jobs/{ok.id}", headers=auth).json
    assert doc["image_sha256"] == ok.image_sha256 and doc["result"]["s_pre"] is not None
    # A transient failure (503) was retried.
    assert jobs["flaky"].status == "succeeded" and server.hits.count("/flaky.jpg") == 2

    failed = {name: (jobs[name].status, jobs[name].error_code, jobs[name].error_message)
              for name in ("redirect", "stall", "endless", "missing")}
    assert {v[:2] for v in failed.values()} == {("failed", "image_fetch_failed")}, failed
    assert "loopback" in failed["redirect"][2] and victim.hits == []  # the redirect was never followed
    assert "time limit" in failed["stall"][2]
    assert "exceeds" in failed["endless"][2]
    assert "HTTP 404" in failed["missing"][2]
    # The stall cost its attempts, not a worker: everything ended well within a few fetch limits.
    assert elapsed < FETCH_TIMEOUT_S * FETCH_ATTEMPTS + 30
    assert server.hits.count("/stall") == FETCH_ATTEMPTS
    wait_for_batch(sessions, batch_id)


def test_a_stored_preset_is_applied_recorded_and_overridden_by_item_params(api, sessions, worker, image):
    client, auth = api
    put = client.put("/v1/presets/nightly", headers=auth, json={"params": {"tau_pre": -1.0, "max_new_tokens": 6,
                                                                           "policy": "either"}})
    assert put.status_code == 200 and put.json["version"] == 1
    image = base64.b64encode(image).decode()
    r = client.post("/v1/batches", headers=auth, json={"items": [
        {"custom_id": "preset", "prompt": "Describe it.", "image_base64": image, "preset": "nightly"},
        {"custom_id": "own", "prompt": "Describe it.", "image_base64": image, "preset": "nightly",
         "params": {"tau_pre": 2.0}},
        {"custom_id": "none", "prompt": "Describe it.", "image_base64": image,
         "params": {"tau_pre": -1.0, "max_new_tokens": 6, "policy": "either"}},
    ]})
    assert r.status_code == 202, r.json
    batch_id = uuid.UUID(r.json["id"])
    wait_until_terminal(sessions, [j.id for j in _jobs(sessions, batch_id).values()], worker=worker)
    results = {j["custom_id"]: j for j in client.get(f"/v1/batches/{batch_id}/results", headers=auth).json["data"]}
    preset, own, none = results["preset"], results["own"], results["none"]
    assert {j["status"] for j in results.values()} == {"succeeded"}
    assert preset["result"]["preset"] == {"name": "nightly", "version": 1}
    assert preset["result"]["fingerprint"]["preset"] == {"name": "nightly", "version": 1}
    assert preset["result"]["pre_unsafe"] is True and preset["result"]["tau_pre"] == -1.0
    # The item's own threshold won over the preset's.
    assert own["result"]["tau_pre"] == 2.0 and own["result"]["pre_unsafe"] is False
    assert own["result"]["preset"] == {"name": "nightly", "version": 1}
    # The same parameters without the preset: the same scores, another fingerprint digest.
    assert none["result"]["preset"] is None and "preset" not in none["result"]["fingerprint"]
    assert none["result"]["fingerprint"]["params"] == preset["result"]["fingerprint"]["params"]
    assert none["result"]["fingerprint"]["digest"] != preset["result"]["fingerprint"]["digest"]
    events = client.get("/v1/admin/events", headers=auth, query_string={"action": "preset_put"}).json["data"]
    assert [e["subject"] for e in events] == ["nightly@1"]
