"""A pipeline written against the Python client that openapi-python-client generates from the ETA API's document.

Run by tests/integration/client/test_generated_clients.py with the generator's own interpreter
(tests/clients/.venv, where the client's runtime dependencies are): `python use_python_client.py URL KEY PACKAGE_DIR`.
It submits a job and polls it, submits a batch and pages its results, lists the flagged jobs, records a verdict
and reads it back, all through the generated methods and models only; then prints what it saw as one JSON object
for the test to check against the server's own answers.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import sys
import time
import uuid
from typing import Any

DONE = {"succeeded", "failed", "cancelled"}
PARAMS = {"max_new_tokens": 8, "num_candidates": 2, "tau_pre": -1.0, "tau_post": 1e9}  # small, flag everything


def _png() -> str:
    from struct import pack
    from zlib import compress, crc32

    def chunk(kind: bytes, data: bytes) -> bytes:
        return pack(">I", len(data)) + kind + data + pack(">I", crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([200, 30, 30] * 8) for _ in range(8))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)) + chunk(
        b"IDAT", compress(rows)) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def _wait(read: Any, done: Any, *, what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not finish in {timeout} s: {value}")
        time.sleep(0.2)


def main(url: str, key: str, package: str) -> None:
    api = importlib.import_module(package)
    models = importlib.import_module(f"{package}.models")
    types = importlib.import_module(f"{package}.types")
    jobs = {name: importlib.import_module(f"{package}.api.jobs.{name}") for name in ("create_job", "get_job")}
    batches = {name: importlib.import_module(f"{package}.api.batches.{name}")
               for name in ("create_batch", "get_batch", "list_batch_results")}
    audit = {name: importlib.import_module(f"{package}.api.audit.{name}")
             for name in ("list_flagged", "record_review", "list_reviews", "get_job_image")}
    client = api.AuthenticatedClient(base_url=url, token=key, raise_on_unexpected_status=True)
    seen: dict[str, Any] = {}

    # One job, JSON body with an image; polled until it ends.
    body = models.JobCreate(prompt="What is in this picture?", image_base64=_png(), custom_id="generated-client",
                            params=models.ETAParams.from_dict(PARAMS))
    submitted = jobs["create_job"].sync(client=client, body=body)
    seen["submitted_type"] = type(submitted).__name__
    job = _wait(lambda: jobs["get_job"].sync(job_id=submitted.id, client=client),
                lambda j: str(j.status.value) in DONE, what="the job")
    seen["job_type"], seen["job"] = type(job).__name__, job.to_dict()
    seen["result_type"] = type(job.result).__name__
    image = audit["get_job_image"].sync_detailed(job_id=submitted.id, client=client)
    seen["image_bytes"] = len(image.content)

    # The same through a multipart form: a prompt and an image file.
    png = base64.b64decode(_png())
    form = models.CreateJobFilesJobCreateForm(prompt="And this one?", image=types.File(
        payload=io.BytesIO(png), file_name="red.png", mime_type="image/png"))
    seen["form_job_type"] = type(jobs["create_job"].sync(client=client, body=form)).__name__

    # A batch of three, polled until complete, its results read two per page.
    items = [models.BatchItem(prompt=f"Question {i}", custom_id=f"item-{i}") for i in range(3)]
    batch = batches["create_batch"].sync(client=client, body=models.BatchCreate(
        items=items, params=models.ETAParams.from_dict(PARAMS)))
    seen["batch_type"], seen["batch_id"] = type(batch).__name__, str(batch.id)
    final = _wait(lambda: batches["get_batch"].sync(batch_id=batch.id, client=client),
                  lambda b: str(b.status.value) in {"completed", "failed", "cancelled"}, what="the batch")
    seen["batch_status"] = str(final.status.value)
    pages, cursor = [], None
    while True:
        page = batches["list_batch_results"].sync(batch_id=batch.id, client=client, limit=2,
                                                  cursor=cursor if cursor else types.UNSET)
        pages.append([(str(j.id), j.custom_id, str(j.status.value)) for j in page.data])
        seen["page_type"] = type(page).__name__
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    seen["pages"] = pages

    # The flagged jobs of the batch; a verdict on one of them, read back.
    flagged = audit["list_flagged"].sync(client=client, batch_id=batch.id, limit=10)
    seen["flagged_type"] = type(flagged).__name__
    seen["flagged"] = sorted(str(record.id) for record in flagged.data)
    target = flagged.data[0].id
    verdict = models.ReviewCreate(verdict=models.ReviewVerdict.CONFIRMED_UNSAFE, note="seen by the generated client")
    review = audit["record_review"].sync(job_id=target, client=client, body=verdict)
    seen["review_type"], seen["review"] = type(review).__name__, review.to_dict()
    history = audit["list_reviews"].sync(job_id=target, client=client)
    seen["reviews_type"] = type(history).__name__
    seen["reviews"] = [str(r.id) for r in history.data]

    # An error is a parsed problem document, not an exception or a None.
    missing = jobs["get_job"].sync(job_id=uuid.uuid4(), client=client)
    seen["missing_type"], seen["missing_code"] = type(missing).__name__, missing.code
    print(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:4])
