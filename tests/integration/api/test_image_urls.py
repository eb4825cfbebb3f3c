"""Images by reference at submission: URLs on internal addresses refused with a 422 naming the item, allowed
ones stored for the pre-evaluation stage to fetch, `data:` URLs taken like `image_base64`."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest

from api import create_app

from .conftest import TEST_LIMITS

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(("url", "code", "why"), [
    ("http://169.254.169.254/latest/meta-data/iam", "image_url_forbidden", "link-local"),
    ("https://metadata.test/computeMetadata/v1/", "image_url_forbidden", "link-local"),
    ("http://127.0.0.1:8080/a.jpg", "image_url_forbidden", "loopback"),
    ("https://[::1]/a.jpg", "image_url_forbidden", "loopback"),
    ("https://10.0.0.7/a.jpg", "image_url_forbidden", "private"),
    ("http://example.test/a.jpg", "image_url_forbidden", "must be https"),
    ("file:///etc/passwd", "image_url_invalid", "http or https"),
    ("https://nowhere.test/a.jpg", "image_url_unresolvable", "does not resolve"),
])
def test_internal_and_malformed_urls_are_refused_naming_the_item(client, tenant, fake_dns, enqueue, url, code, why):
    fake_dns["metadata.test"] = ["169.254.169.254"]
    r = client.post("/v1/batches", headers=tenant.auth(), json={"items": [
        {"custom_id": "fine", "prompt": "p", "image_url": "https://example.test/a.jpg"},
        {"custom_id": "bad", "prompt": "p", "image_url": url}]})
    assert r.status_code == 422, r.json
    [error] = r.json["errors"]
    assert (error["index"], error["custom_id"], error["field"], error["code"]) == (1, "bad", "image_url", code)
    assert why in error["message"] and "item 1" in r.json["detail"]
    assert enqueue.job_ids == []
    job = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "p", "image_url": url})
    assert job.status_code == 422 and job.json["errors"][0]["code"] == code


def test_an_accepted_url_is_recorded_for_the_fetch_and_a_data_url_is_an_inline_image(client, tenant, sample_b64):
    r = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "p",
                                                             "image_url": "https://example.test/a.jpg?sig=1"})
    assert r.status_code == 202, r.json
    assert r.json["image_url"] == "https://example.test/a.jpg?sig=1" and r.json["image_sha256"] is None
    encoded = sample_b64("waterview.jpg")
    inline = client.post("/v1/jobs", headers=tenant.auth(), json={
        "prompt": "p", "image_url": f"data:image/jpeg;base64,{encoded}"})
    assert inline.status_code == 202, inline.json
    assert inline.json["image_sha256"] == hashlib.sha256(base64.b64decode(encoded)).hexdigest()
    assert inline.json["image_url"] is None
    bad_data = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "p", "image_url": "data:,hello"})
    assert bad_data.status_code == 422 and bad_data.json["errors"][0]["code"] == "image_url_invalid"


def test_an_item_gives_its_image_once(client, tenant, sample_b64):
    r = client.post("/v1/jobs", headers=tenant.auth(), json={
        "prompt": "p", "image_base64": sample_b64("waterview.jpg"), "image_url": "https://example.test/a.jpg"})
    assert r.status_code == 422 and r.json["errors"][0]["code"] == "image_conflict"


def test_manifest_lines_take_urls_and_presets(client, tenant):
    client.put("/v1/presets/nightly", headers=tenant.auth("admin"), json={"params": {"tau_pre": 0.2}})
    manifest = (b'{"custom_id": "a", "prompt": "p", "image_url": "https://example.test/a.jpg", "preset": "nightly"}\n'
                b'{"custom_id": "b", "prompt": "p", "image_url": "http://127.0.0.1/b.jpg"}\n')
    r = client.post("/v1/batches", headers=tenant.auth(), content_type="multipart/form-data",
                    data={"manifest": (io.BytesIO(manifest), "m.jsonl")})
    assert r.status_code == 422
    assert [(e["line"], e["code"]) for e in r.json["errors"]] == [(2, "image_url_forbidden")]
    ok = client.post("/v1/batches", headers=tenant.auth(), content_type="multipart/form-data",
                     data={"manifest": (io.BytesIO(manifest.splitlines()[0]), "m.jsonl")})
    assert ok.status_code == 202, ok.json
    [job] = client.get(f"/v1/batches/{ok.json['id']}/results", headers=tenant.auth()).json["data"]
    assert job["image_url"] == "https://example.test/a.jpg" and job["preset"] == {"name": "nightly", "version": 1}


def test_the_operator_may_allow_a_network_where_plain_http_is_accepted(settings, postgres_engine, enqueue, tenant):
    app = create_app(settings.with_values(eta_outbound_allowed_networks="127.0.0.1/32", **TEST_LIMITS),
                     engine=postgres_engine, enqueue=enqueue)
    r = app.test_client().post("/v1/jobs", headers=tenant.auth(), json={"prompt": "p",
                                                                        "image_url": "http://127.0.0.1:9/a.png"})
    assert r.status_code == 202, r.json
    refused = app.test_client().post("/v1/jobs", headers=tenant.auth(),
                                     json={"prompt": "p", "image_url": "http://127.0.0.2:9/a.png"})
    assert refused.status_code == 422
