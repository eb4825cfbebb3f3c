"""The pipeline client and the `eta` client commands against a live server, a real worker, Postgres and Redis."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest
import sqlalchemy as sa

from eta.client import BatchItem, ETAAPIError, ETAClient
from eta.store.models import Batch, Job
from tests.integration.client.conftest import ALIGN_ALL, FAST_PARAMS, DroppingProxy, LiveStack, header

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.models]

IMAGES = ["extreme_ironing.jpg", "harm_example.png", "waterview.jpg"]


def _set_params(params: dict) -> list[str]:
    return [arg for name, value in params.items() for arg in ("--set", f"{name}={json.dumps(value)}")]


def test_cli_submits_a_folder_waits_and_exports_the_results(live_stack: LiveStack, image_folder):
    submitted = live_stack.eta("submit", str(image_folder), "--prompt", "What is in this picture?",
                               *_set_params(FAST_PARAMS))
    batch_id = submitted.stdout.strip()
    assert str(uuid.UUID(batch_id)) == batch_id, submitted.stdout
    assert "submitting 3 item(s)" in submitted.stderr

    waited = live_stack.eta("status", batch_id, "--wait", "--timeout", "120")
    assert f"batch {batch_id}  completed  3/3 finished (100%)" in waited.stdout
    assert "succeeded 3" in waited.stdout

    as_csv = live_stack.eta("results", batch_id, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [row["custom_id"] for row in rows] == IMAGES  # submission order: the folder's sorted file names
    for row in rows:
        assert row["status"] == "succeeded" and row["error_code"] == ""
        assert row["flagged"] in ("True", "False") and row["aligned"] in ("True", "False")
        assert float(row["s_pre"]) == pytest.approx(float(row["s_pre"]))  # a number, not empty
        float(row["s_post"]), float(row["s_post_final"])
    assert "3 job(s) of batch" in as_csv.stderr

    as_jsonl = live_stack.eta("results", batch_id, "--format", "jsonl")
    jobs = [json.loads(line) for line in as_jsonl.stdout.splitlines()]
    assert [job["custom_id"] for job in jobs] == IMAGES
    assert all(job["params"]["max_new_tokens"] == 8 and job["result"]["fingerprint"] for job in jobs)
    assert {job["id"] for job in jobs} == {row["job_id"] for row in rows}

    one = live_stack.eta("status", jobs[0]["id"], "--json")
    assert json.loads(one.stdout)["result"]["response"] == jobs[0]["result"]["response"]


def test_submit_retried_after_a_dropped_connection_yields_one_batch(live_stack: LiveStack, image_folder):
    items = [BatchItem("Describe the image.", image=image_folder / name, custom_id=name) for name in IMAGES]
    is_submit = lambda head: head.startswith(b"POST /v1/batches ")  # noqa: E731
    with DroppingProxy(int(live_stack.url.rsplit(":", 1)[1]), drop=is_submit) as proxy, \
            ETAClient(proxy.url, live_stack.api_key, progress=False) as eta:
        batch = eta.submit_batch(items, params=FAST_PARAMS)

    posts = [head for head in proxy.heads if is_submit(head)]
    assert proxy.dropped == 1 and len(posts) == 2, "the first response was lost and the client tried again"
    keys = {header(head, "Idempotency-Key") for head in posts}
    assert keys == {batch["idempotency_key"]} and None not in keys
    assert batch["submission"]["dispatch"] == "replayed" and batch["total"] == 3

    with live_stack.engine.connect() as db:
        batches = db.scalars(sa.select(Batch.id).where(Batch.idempotency_key == batch["idempotency_key"])).all()
        jobs = db.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.batch_id == batches[0]))
    assert [str(b) for b in batches] == [batch["id"]] and jobs == 3

    with ETAClient(live_stack.url, live_stack.api_key, progress=False) as eta:
        final = eta.wait(batch["id"], timeout=120, poll_initial_s=0.2, poll_max_s=1.0)
        results = list(eta.iter_results(batch["id"], page_size=2))
    assert final["status"] == "completed" and final["counts"]["succeeded"] == 3
    assert sorted(job["custom_id"] for job in results) == sorted(IMAGES)


def test_the_same_key_with_other_items_is_refused_with_its_code(live_stack: LiveStack):
    key = f"pipeline-run-{uuid.uuid4()}"
    with ETAClient(live_stack.url, live_stack.api_key, progress=False) as eta:
        first = eta.submit_batch([{"prompt": "a text-only question", "custom_id": "q", "params": FAST_PARAMS}], key)
        again = eta.submit_batch([{"prompt": "a text-only question", "custom_id": "q", "params": FAST_PARAMS}], key)
        assert again["id"] == first["id"] and again["submission"]["dispatch"] == "replayed"
        with pytest.raises(ETAAPIError) as caught:
            eta.submit_batch([{"prompt": "another question", "custom_id": "q"}], key)
        assert (caught.value.status, caught.value.code) == (409, "idempotency_key_reused")
        with pytest.raises(ETAAPIError) as invalid:
            eta.submit_batch([{"prompt": "ok"}, {"prompt": "bad", "params": {"temperature": 0}}])
        assert invalid.value.code == "batch_invalid"
        assert [(e["index"], e["code"]) for e in invalid.value.errors] == [(1, "params_invalid")]
        assert "item 1: params params_invalid" in str(invalid.value)


def test_cli_errors_are_one_line_with_the_problem_code(live_stack: LiveStack, image_folder):
    missing = live_stack.eta("status", str(uuid.uuid4()), check=False)
    assert missing.returncode == 1 and "404 not_found: no batch or job" in missing.stderr
    assert "Traceback" not in missing.stderr

    wrong_key = live_stack.eta("status", str(uuid.uuid4()), check=False, ETA_API_KEY="eta_not_a_real_key")
    assert wrong_key.returncode == 1 and "401 unauthorized" in wrong_key.stderr

    bad_params = live_stack.eta("submit", str(image_folder), "--prompt", "?", "--set", "temperature=0", check=False)
    assert bad_params.returncode == 1 and "422 batch_invalid" in bad_params.stderr and bad_params.stdout == ""
    for name in IMAGES:  # every bad item named by its file
        assert f"{image_folder / name}: params params_invalid" in bad_params.stderr



def test_cli_submits_a_manifest_and_audits_the_flagged_jobs(live_stack: LiveStack, image_folder, tmp_path):
    with ETAClient(live_stack.url, live_stack.api_key, progress=False) as eta:
        paths = eta.openapi()["paths"]
    assert "/v1/audit/flagged" in paths and "/v1/audit/export" in paths

    manifest = tmp_path / "batch.jsonl"
    # A relative image path is relative to the manifest's folder.
    (tmp_path / "ironing.jpg").write_bytes((image_folder / "extreme_ironing.jpg").read_bytes())
    lines = [{"custom_id": "ironing", "prompt": "What is he doing?", "image": "ironing.jpg"},
             {"custom_id": "text", "prompt": "A question without an image."}]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    submitted = live_stack.eta("submit", str(manifest), "--wait", "--timeout", "120", "--json",
                               "--params", json.dumps({**FAST_PARAMS, **ALIGN_ALL}))
    batch = json.loads(submitted.stdout)
    assert batch["status"] == "completed" and batch["total"] == 2

    table = live_stack.eta("audit", "--batch", batch["id"])
    rows = [line.split("\t") for line in table.stdout.splitlines()]
    assert sorted(row[2] for row in rows) == ["ironing", "text"]
    assert all("aligned=True" in row for row in rows)

    exported = live_stack.eta("audit", "--batch", batch["id"], "--aligned", "--format", "csv")
    records = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert sorted(record["custom_id"] for record in records) == ["ironing", "text"]

    as_jsonl = live_stack.eta("audit", "--batch", batch["id"], "--custom-id", "text", "--format", "jsonl")
    [record] = [json.loads(line) for line in as_jsonl.stdout.splitlines()]
    assert record["custom_id"] == "text" and record["result"]["aligned"] is True
    assert record["result"]["s_pre"] is None  # text-only: no pre-evaluation
