"""Single jobs: submission in both encodings, every validation branch, reading, cancelling, roles."""

from __future__ import annotations

import base64
import io
import struct
import uuid
import zlib

import pytest
import sqlalchemy as sa
from PIL import Image

from eta.store.models import Job

pytestmark = pytest.mark.postgres

PROBLEM = "application/problem+json"


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


def _jobs_of(engine, tenant_id) -> int:
    with engine.connect() as c:
        return c.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.tenant_id == tenant_id))


def test_submit_json_job_with_image_then_read_it(client, tenant, enqueue, sample_b64):
    r = client.post("/v1/jobs", headers=tenant.auth(), json={
        "prompt": "What is in this picture?", "image_base64": sample_b64("waterview.jpg"),
        "custom_id": "c-1", "params": {"tau_pre": 0.2, "seed": 42}})
    assert r.status_code == 202, r.json
    job = r.json
    assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["submission"] == {"dispatch": "dispatched"}
    assert job["seed"] == 42 and job["params"]["tau_pre"] == 0.2 and job["params"]["tau_post"] == 0.06
    assert "seed" not in job["params"]  # the seed lives on the job
    assert len(job["image_sha256"]) == 64
    assert enqueue.job_ids == [uuid.UUID(job["id"])]
    got = client.get(f"/v1/jobs/{job['id']}", headers=tenant.auth())
    assert got.status_code == 200 and got.json["custom_id"] == "c-1" and got.json["result"] is None


def test_submit_multipart_job_and_text_only(client, tenant, samples_dir):
    with open(samples_dir / "harm_example.png", "rb") as f:
        r = client.post("/v1/jobs", headers=tenant.auth(), content_type="multipart/form-data",
                        data={"prompt": "Describe it", "image": (f, "h.png"), "params": '{"policy": "either"}'})
    assert r.status_code == 202, r.json
    assert r.json["params"]["policy"] == "either" and r.json["image_sha256"]
    text = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "text only"})
    assert text.status_code == 202 and text.json["image_sha256"] is None


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"prompt": ""}, "prompt_invalid", "prompt"),
        ({"prompt": "x" * 2001}, "prompt_invalid", "prompt"),
        ({"prompt": "a\u0000b"}, "prompt_invalid", "prompt"),
        ({"prompt": "ok", "image_base64": "!!!not base64"}, "image_base64_invalid", "image_base64"),
        ({"prompt": "ok", "image_base64": base64.b64encode(b"hello").decode()}, "image_unreadable", "image"),
        ({"prompt": "ok", "image_base64": ""}, "image_empty", "image"),
        ({"prompt": "ok", "image_base64": base64.b64encode(_png_header_only(10_000, 10_000)).decode()},
         "image_too_many_pixels", "image"),
        ({"prompt": "ok", "params": {"tau_pree": 1}}, "params_invalid", "params"),
        ({"prompt": "ok", "params": {"num_candidates": 0}}, "params_invalid", "params"),
        ({"prompt": "ok", "params": {"policy": "never"}}, "params_invalid", "params"),
    ],
)
def test_invalid_job_is_422_naming_the_field_and_stores_nothing(client, tenant, postgres_engine, enqueue, body,
                                                                code, field):
    before = _jobs_of(postgres_engine, tenant.id)
    r = client.post("/v1/jobs", headers=tenant.auth(), json=body)
    assert r.status_code == 422 and r.mimetype == PROBLEM
    assert r.json["code"] == "job_invalid"
    assert r.json["errors"][0]["code"] == code and r.json["errors"][0]["field"] == field
    assert _jobs_of(postgres_engine, tenant.id) == before and enqueue.calls == []


def test_odd_json_inputs(client, tenant):
    lone = client.post("/v1/jobs", headers=tenant.auth(), data='{"prompt": "\\ud800"}', content_type="application/json")
    assert lone.status_code == 422 and "surrogate" in lone.json["detail"]
    nan = client.post("/v1/jobs", headers=tenant.auth(), data='{"prompt": "x", "params": {"tau_pre": NaN}}',
                      content_type="application/json")
    assert nan.status_code == 422 and "finite" in nan.json["detail"]
    broken = client.post("/v1/jobs", headers=tenant.auth(), data='{"prompt": ', content_type="application/json")
    assert broken.status_code == 400 and broken.json["code"] == "invalid_json"
    extra = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "x", "promt": "y"})
    assert extra.status_code == 422 and extra.json["code"] == "validation_failed"
    assert extra.json["errors"][0]["field"] == "promt"
    wrong_type = client.post("/v1/jobs", headers=tenant.auth(), data="prompt=x", content_type="text/plain")
    assert wrong_type.status_code == 415 and wrong_type.mimetype == PROBLEM
    unicode_ok = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "Qu'y a-t-il ? 画像 🙂 \u202e"})
    assert unicode_ok.status_code == 202


def test_disallowed_format_and_truncated_image(client, tenant, samples_dir):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")
    tiff = client.post("/v1/jobs", headers=tenant.auth(),
                       json={"prompt": "x", "image_base64": base64.b64encode(buf.getvalue()).decode()})
    assert tiff.json["errors"][0]["code"] == "image_format_not_allowed"
    jpeg = (samples_dir / "waterview.jpg").read_bytes()
    cut = client.post("/v1/jobs", headers=tenant.auth(),
                      json={"prompt": "x", "image_base64": base64.b64encode(jpeg[:5000]).decode()})
    assert cut.json["errors"][0]["code"] == "image_unreadable"


def test_cancel_job(client, tenant):
    job = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "x"}).json
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.auth())
    assert r.status_code == 200 and r.json["status"] == "cancelled" and r.json["finished_at"]
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.auth())
    assert again.status_code == 409 and again.json["code"] == "job_not_cancellable"


def test_broker_down_keeps_the_job_and_says_so(client, tenant, enqueue, postgres_engine):
    enqueue.fail = True
    r = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "x"})
    assert r.status_code == 202
    assert r.json["status"] == "queued" and r.json["submission"] == {"dispatch": "deferred"}
    with postgres_engine.connect() as c:
        status = c.scalar(sa.select(Job.status).where(Job.id == uuid.UUID(r.json["id"])))
    assert status.value == "queued"
