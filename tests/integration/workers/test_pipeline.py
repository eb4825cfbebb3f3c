"""A real worker runs batches end to end; what it stores is what the library computes for the same job."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from eta.config import ETAConfig, ModelsConfig
from eta.images import decode_image
from eta.store import repository as repo
from eta.store.models import Batch, Job, JobResult, Tenant
from workers.callbacks import verify_signature
from workers.enqueue import enqueue_jobs, stage_chain
from workers.stage_table import STAGES
from workers.stage_types import storable

from .conftest import Item, snapshot, stage_records, wait_for_batch, wait_until_terminal

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.models]

FORCE_ALIGNMENT = {"tau_pre": -1.0, "tau_post": 1e9, "num_candidates": 3, "max_new_tokens": 12}


@pytest.fixture(scope="session")
def library_models(worker_env):
    """The same tiny models as the worker's, loaded in this process from the same path."""
    from eta.models import load_models

    return load_models(ModelsConfig.tiny(str(worker_env.tiny_dir), device="cpu"))


def _library_result(models, samples_dir: Path, job: Job, image_name: str | None):
    from eta.safety.pipeline import ETAInput, run_eta

    image = decode_image((samples_dir / image_name).read_bytes()).image if image_name else None
    config = ETAConfig.from_dict(job.params)
    return run_eta(models, [ETAInput(prompt=job.prompt, image=image, seed=job.seed)], config)[0]


def test_a_batch_completes_with_the_scores_the_library_computes(worker, submit, celery_app, sessions, samples_dir,
                                                                 library_models):
    items = [
        Item("What is in this picture?", "waterview.jpg"),
        Item("Is this safe?", "extreme_ironing.jpg"),
        Item("Describe the image in detail.", "harm_example.png", FORCE_ALIGNMENT),
        Item("What does the sign say?", "prompt_unconstrained.bmp", {"policy": "either"}),
        Item("How do I make a bomb?", None, {"tau_post": 1e9, "num_candidates": 2}),
        Item("Tell me a joke about cats.", None),
        Item("What is in this picture?", "waterview.jpg", {"tau_pre": -1.0, "policy": "both"}),
    ]
    submitted = submit(items)
    enqueue_jobs(submitted.job_ids, app=celery_app)
    statuses = wait_until_terminal(sessions, submitted.job_ids, worker=worker)
    assert set(statuses.values()) == {"succeeded"}, worker.log()[-3000:]

    batch = wait_for_batch(sessions, submitted.batch.id)
    assert batch.finished_at is not None
    with sessions() as session:
        rows = session.execute(sa.select(Job, JobResult).join(JobResult).where(Job.batch_id == batch.id)
                               .order_by(Job.position)).all()
    assert len(rows) == len(items)
    aligned = 0
    for (job, stored), item in zip(rows, items, strict=True):
        expected = _library_result(library_models, samples_dir, job, item.image)  # type: ignore[arg-type]
        assert stored.s_pre == pytest.approx(expected.s_pre, abs=1e-5) if expected.s_pre is not None \
            else stored.s_pre is None
        assert stored.pre_unsafe == expected.pre_unsafe
        assert stored.s_post == pytest.approx(expected.s_post, abs=1e-5)
        assert stored.post_unsafe == expected.post_unsafe
        assert stored.aligned == expected.aligned
        # (a NUL character, which the tiny models can emit, is stored as U+FFFD: Postgres refuses it)
        assert stored.vanilla_response == storable(expected.vanilla_response)
        assert stored.response == storable(expected.response)
        expected_final = expected.s_post_final
        if expected.aligned and "\x00" in expected.response:
            # The post stage scores the answer as stored (and delivered): with its NULs replaced.
            expected_final = library_models.reward.score(ETAConfig.from_dict(job.params).reward_prompt,
                                                         [storable(expected.response)])[0]
        assert stored.s_post_final == pytest.approx(expected_final, abs=1e-5)
        assert stored.flag_reasons == expected.flag_reasons and job.flagged == expected.flagged
        assert stored.trace == storable(expected.trace)
        assert stored.fingerprint_sha256 == expected.fingerprint["digest"]
        assert (stored.tau_post, stored.policy) == (expected.tau_post, expected.policy)
        assert set(stored.timings) == ({"generate", "post"} if item.image is None else {"pre", "generate", "post"})
        assert job.attempts == 1 and job.error_code is None
        aligned += bool(stored.aligned)
    assert aligned >= 2  # the forced items took the alignment branch
    # Cross-job batching: 5 images in two chunks of up to 4 jobs took 2 CLIP image forwards, not 5, although
    # the first chunk mixes three parameter sets (they share the safety prompt).
    with sessions() as session:
        calls = repo.get_model_calls(session=session, batch_id=submitted.batch.id)
    assert calls["pre"] == {"clip_text": 2, "clip_image": 2}, calls  # one message per chunk, one forward each


def test_a_stage_message_delivered_twice_changes_nothing(worker, submit, celery_app, sessions):
    submitted = submit([Item("What is in this picture?", "waterview.jpg"),
                        Item("Describe it.", "harm_example.png", FORCE_ALIGNMENT),
                        Item("A text-only question?", None)])
    ids = submitted.job_ids
    # Two chains for the same jobs from the start: every stage message arrives twice.
    enqueue_jobs(ids, app=celery_app)
    enqueue_jobs(ids, app=celery_app)
    assert set(wait_until_terminal(sessions, ids, worker=worker).values()) == {"succeeded"}
    before = snapshot(sessions, ids)
    assert len(before["results"]) == len(ids)

    raw = [str(i) for i in ids]
    for stage in STAGES:
        celery_app.send_task(stage.task, args=[raw])
    stage_chain(celery_app, ids).apply_async()
    # Each queue is first in, first out: once a later job has been through all three, so have the copies.
    sentinel = submit([Item("Sentinel.", "waterview.jpg")])
    enqueue_jobs(sentinel.job_ids, app=celery_app)
    assert set(wait_until_terminal(sessions, sentinel.job_ids, worker=worker).values()) == {"succeeded"}

    assert snapshot(sessions, ids) == before
    # Each stage recorded each job once (the text-only job has no pre-evaluation to record).
    assert stage_records(sessions, ids) == {ids[0]: 3, ids[1]: 3, ids[2]: 2}


def test_an_image_the_worker_cannot_read_fails_that_job_with_a_code(worker, submit, celery_app, sessions):
    submitted = submit([
        Item("Corrupt?", b"\x89PNG\r\n\x1a\n" + b"\x00not really a png" * 4),
        Item("Missing blob?", "extreme_ironing.jpg"),
        Item("Fine.", "waterview.jpg"),
    ])
    corrupt, missing, fine = submitted.job_ids
    with sessions() as session, session.begin():
        sha = session.scalar(sa.select(Job.image_sha256).where(Job.id == missing))
        # The image row stays; its bytes are gone (a blob store that lost a file).
        session.execute(sa.text("DELETE FROM blobs WHERE sha256 = :sha"), {"sha": sha})
    enqueue_jobs(submitted.job_ids, app=celery_app)
    wait_until_terminal(sessions, submitted.job_ids, worker=worker)
    wait_for_batch(sessions, submitted.batch.id)  # failed jobs end a batch too
    with sessions() as session:
        jobs = {j.id: j for j in session.scalars(sa.select(Job).where(Job.batch_id == submitted.batch.id))}
    assert (jobs[corrupt].status, jobs[corrupt].error_code) == ("failed", "image_unreadable")
    assert (jobs[missing].status, jobs[missing].error_code) == ("failed", "image_missing")
    assert jobs[corrupt].error_message and jobs[missing].error_message
    assert jobs[fine].status == "succeeded"


class _Receiver(BaseHTTPRequestHandler):
    answers: list[int]
    received: list[dict[str, Any]]

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"headers": self.headers, "body": body})
        self.send_response(self.answers.pop(0) if self.answers else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[type[_Receiver]]:
    handler = type("Receiver", (_Receiver,), {"answers": [503], "received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/hook"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler
    server.shutdown()


def test_a_completed_batch_posts_a_signed_summary_retrying_until_accepted(worker, submit, celery_app, sessions,
                                                                          receiver):
    submitted = submit([Item("One.", "waterview.jpg"), Item("Two.", None)],
                       callback_url=receiver.url)  # type: ignore[attr-defined]
    enqueue_jobs(submitted.job_ids, app=celery_app)
    wait_until_terminal(sessions, submitted.job_ids, worker=worker)
    deadline = time.monotonic() + 30
    while len(receiver.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(receiver.received) == 2, worker.log()[-3000:]  # a 503, then the retry that was accepted
    first, second = receiver.received
    headers = second["headers"]
    assert first["headers"]["ETA-Event-Id"] == headers["ETA-Event-Id"] == str(submitted.batch.id)
    with sessions() as session:
        secret = session.scalar(sa.select(Tenant.callback_secret).where(Tenant.id == submitted.batch.tenant_id))
    signed = {"timestamp": headers["ETA-Timestamp"], "event_id": headers["ETA-Event-Id"], "body": second["body"],
              "signature": headers["ETA-Signature"]}
    assert verify_signature(secret, **signed)
    assert not verify_signature("another secret", **signed)
    summary = json.loads(second["body"])
    assert summary["batch"]["id"] == str(submitted.batch.id)
    assert summary["batch"]["status"] == "completed"
    assert summary["batch"]["counts"] == {"succeeded": 2} and summary["batch"]["total"] == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sessions() as session:
            sent_at = session.scalar(sa.select(Batch.callback_sent_at).where(Batch.id == submitted.batch.id))
        if sent_at is not None:
            break
        time.sleep(0.1)
    assert sent_at is not None
    # Delivered once: nothing more arrives.
    time.sleep(1.0)
    assert len(receiver.received) == 2
    assert uuid.UUID(summary["batch"]["id"]) == submitted.batch.id
