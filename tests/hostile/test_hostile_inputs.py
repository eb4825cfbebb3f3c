"""Hostile input on every route: each case must get a 4xx problem document with a `code`, never a 5xx,
store nothing, and leave the server healthy.

Each case is a request a client could send on purpose: broken encodings, nesting bombs, numbers and dates
at the edges, texts the database cannot hold, wrong content types, oversized parameters, internal callback
targets, forged cursors. Routes that take an id get a real job or batch of the tenant, so the request
reaches validation rather than a 404.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from eta.store.models import Batch, Blob, Job, Review, Tenant
from eta.store.models import Image as ImageRow

pytestmark = pytest.mark.postgres

PROBLEM = "application/problem+json"
LIMITS = {"max_prompt_chars": 2000, "max_batch_items": 1500, "max_request_bytes": 8 * 1024 * 1024}


def _png(width: int = 4, height: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def _png_header_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass
class Case:
    """One bad request. `path` may hold {job} and {batch}; `role` is the key's role."""

    name: str
    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    role: str = "admin"
    status: int | None = None  # the exact status, when it matters


def json_raw(text: str | bytes) -> dict[str, Any]:
    return {"data": text if isinstance(text, bytes) else text.encode(), "content_type": "application/json"}


def job(prompt: Any = "What is in the picture?", **fields: Any) -> dict[str, Any]:
    return {"json": {"prompt": prompt, **fields}}


def params(**values: Any) -> dict[str, Any]:
    return job(params=values)


def form(**fields: Any) -> dict[str, Any]:
    return {"data": fields, "content_type": "multipart/form-data"}


def raw_form(**fields: bytes) -> dict[str, Any]:
    """A multipart body written byte by byte (the test client would encode text fields as UTF-8)."""
    boundary = "hostile-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
             for name, value in fields.items()]
    return {"data": b"".join(parts) + f"--{boundary}--\r\n".encode(),
            "content_type": f"multipart/form-data; boundary={boundary}"}


def repeated_parts(*parts: tuple[str, bytes] | tuple[str, bytes, str]) -> dict[str, Any]:
    """A multipart body whose parts may share a name: (name, value) or (name, value, file name)."""
    boundary = "hostile-boundary"
    chunks = [f'--{boundary}\r\nContent-Disposition: form-data; name="{part[0]}"'.encode()
              + (f'; filename="{part[2]}"'.encode() if len(part) == 3 else b"") + b"\r\n\r\n" + part[1] + b"\r\n"
              for part in parts]
    return {"data": b"".join(chunks) + f"--{boundary}--\r\n".encode(),
            "content_type": f"multipart/form-data; boundary={boundary}"}


def manifest(content: bytes, **files: bytes) -> dict[str, Any]:
    data: dict[str, Any] = {"manifest": (io.BytesIO(content), "manifest.jsonl")}
    if files:
        data["files"] = [(io.BytesIO(b), name) for name, b in files.items()]
    return form(**data)


def batch(*items: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"json": {"items": list(items) or [{"prompt": "Hi?"}], **fields}}


J, B = "/v1/jobs", "/v1/batches"
PNG = _png()
CASES = [
    # ---- POST /v1/jobs (JSON): texts
    Case("prompt empty", "POST", J, job("")),
    Case("prompt blank", "POST", J, job(" \t\n ")),
    Case("prompt with NUL", "POST", J, job("what\x00now")),
    Case("prompt lone surrogate", "POST", J, json_raw('{"prompt": "bad \\ud800 text"}')),
    Case("prompt too long", "POST", J, job("x" * 2001)),
    Case("prompt a number", "POST", J, job(123)),
    Case("prompt missing", "POST", J, {"json": {"custom_id": "c"}}),
    Case("unknown top-level field", "POST", J, job(colour="red")),
    Case("custom_id too long", "POST", J, job(custom_id="c" * 256)),
    Case("custom_id with NUL", "POST", J, job(custom_id="a\x00b")),
    # ---- parameters
    Case("params a list", "POST", J, job(params=[1, 2])),
    Case("params unknown key", "POST", J, params(tau_pree=0.1)),
    Case("max_new_tokens over the limit", "POST", J, params(max_new_tokens=100_000)),
    Case("max_new_tokens oversized integer", "POST", J, params(max_new_tokens=10**30)),
    Case("num_candidates over the limit", "POST", J, params(num_candidates=10_000)),
    Case("top_k over the limit", "POST", J, params(top_k=10**6)),
    Case("max_sentence_tokens over the limit", "POST", J, params(max_sentence_tokens=10**5)),
    Case("max_new_tokens zero", "POST", J, params(max_new_tokens=0)),
    Case("safety_prompt too long", "POST", J, params(safety_prompt="s" * 2001)),
    Case("reward_prompt with NUL", "POST", J, params(reward_prompt="r\x00")),
    Case("safety_prefix lone surrogate", "POST", J,
         json_raw('{"prompt": "Hi?", "params": {"safety_prefix": "\\udfff"}}')),
    Case("temperature zero", "POST", J, params(temperature=0)),
    Case("temperature subnormal", "POST", J, params(temperature=1e-320)),
    Case("alpha beyond float32", "POST", J, params(alpha=1e300)),
    Case("tau_pre a string", "POST", J, params(tau_pre="high")),
    Case("seed negative", "POST", J, params(seed=-1)),
    Case("seed beyond 63 bits", "POST", J, params(seed=2**64)),
    Case("policy unknown", "POST", J, params(policy="never")),
    Case("params nested 50 deep", "POST", J, json_raw('{"prompt": "Hi?", "params": {"tau_pre": ' + _nested(50) + "}}")),
    # ---- images
    Case("image not base64", "POST", J, job(image_base64="!!!not base64!!!")),
    Case("image base64 of text", "POST", J, job(image_base64=_b64(b"hello, I am not an image"))),
    Case("image empty", "POST", J, job(image_base64="")),
    Case("image truncated PNG", "POST", J, job(image_base64=_b64(PNG[: len(PNG) // 2]))),
    Case("image decompression bomb", "POST", J, job(image_base64=_b64(_png_header_claiming(100_000, 100_000)))),
    Case("image polyglot GIF/HTML", "POST", J, job(image_base64=_b64(b"GIF89a<script>alert(1)</script>"))),
    Case("image data URL not base64", "POST", J, job(image_base64="data:image/png,rawbytes")),
    # ---- bodies
    Case("JSON nesting bomb", "POST", J, json_raw(_nested(100_000)), status=400),
    Case("JSON malformed", "POST", J, json_raw('{"prompt": "Hi?"'), status=400),
    Case("JSON null", "POST", J, json_raw("null"), status=422),
    Case("JSON array", "POST", J, json_raw('[{"prompt": "Hi?"}]'), status=422),
    Case("JSON invalid UTF-8", "POST", J, json_raw(b'{"prompt": "\xff\xfe"}'), status=400),
    Case("urlencoded body", "POST", J, {"data": {"prompt": "Hi?"}}, status=415),
    Case("JSON in UTF-16", "POST", J, json_raw('{"prompt": "Hi?"}'.encode("utf-16")), status=415),
    Case("JSON in UTF-32", "POST", B, json_raw('{"items": [{"prompt": "Hi?"}]}'.encode("utf-32-be")), status=415),
    Case("JSON gzip-coded", "POST", J, {**json_raw(gzip.compress(b'{"prompt": "Hi?"}')),
                                        "headers": {"Content-Encoding": "gzip"}}, status=415),
    Case("text/plain body", "POST", J, {"data": b"prompt=Hi", "content_type": "text/plain"}, status=415),
    Case("body over the size limit", "POST", J, json_raw(b'{"prompt": "' + b"x" * (9 * 1024 * 1024) + b'"}'),
         status=413),
    # ---- POST /v1/jobs (multipart)
    Case("form prompt invalid UTF-8", "POST", J, raw_form(prompt=b"\xff\xfe bad")),
    Case("form custom_id invalid UTF-8", "POST", J, raw_form(prompt=b"Hi?", custom_id=b"id-\xc3")),
    Case("form params not JSON", "POST", J, form(prompt="Hi?", params="{tau_pre: 1")),
    Case("form params nested bomb", "POST", J, form(prompt="Hi?", params=_nested(5000))),
    Case("form image corrupt", "POST", J, form(prompt="Hi?", image=(io.BytesIO(b"\x89PNG\r\n garbage"), "x.png"))),
    Case("form prompt missing", "POST", J, form(image=(io.BytesIO(PNG), "x.png"))),
    Case("form unknown field", "POST", J, form(prompt="Hi?", colour="red")),
    # ---- POST /v1/batches (JSON)
    Case("batch without items", "POST", B, {"json": {"items": []}}),
    Case("batch over the item limit", "POST", B, batch(*[{"prompt": "Hi?"}] * 1501)),
    Case("batch item custom_id lone surrogate", "POST", B,
         json_raw('{"items": [{"prompt": "Hi?", "custom_id": "\\ud83d"}]}')),
    Case("batch duplicate custom_id", "POST", B, batch({"prompt": "A", "custom_id": "x"},
                                                       {"prompt": "B", "custom_id": "x"})),
    Case("batch params with NUL", "POST", B, batch(params={"safety_prompt": "a\x00b"})),
    Case("batch params nested bomb", "POST", B, json_raw('{"items": [{"prompt": "Hi"}], "params": '
                                                         + _nested(10_000) + "}"), status=400),
    Case("batch callback ftp", "POST", B, batch(callback_url="ftp://example.test/hook")),
    Case("batch callback loopback", "POST", B, batch(callback_url="http://127.0.0.1:9000/hook")),
    Case("batch callback cloud metadata", "POST", B, batch(callback_url="http://169.254.169.254/latest")),
    Case("batch callback IPv6 mapped loopback", "POST", B, batch(callback_url="http://[::ffff:127.0.0.1]/")),
    Case("batch callback with credentials", "POST", B, batch(callback_url="https://u:p@example.test/hook")),
    Case("batch callback unresolvable", "POST", B, batch(callback_url="https://nowhere.invalid/hook")),
    Case("batch Idempotency-Key too long", "POST", B, {**batch(), "headers": {"Idempotency-Key": "k" * 300}},
         status=400),
    Case("batch Idempotency-Key control characters", "POST", B,
         {**batch(), "headers": {"Idempotency-Key": "a\tb"}}, status=400),
    # ---- POST /v1/batches (multipart manifest)
    Case("manifest not UTF-8", "POST", B, manifest(b'{"prompt": "\xff"}\n')),
    Case("manifest line broken", "POST", B, manifest(b'{"prompt": "Hi?"\n')),
    Case("manifest line nested bomb", "POST", B, manifest(_nested(100_000).encode() + b"\n")),
    Case("manifest unknown field", "POST", B, manifest(b'{"prompt": "Hi?", "colour": "red"}\n')),
    Case("manifest names a missing file", "POST", B, manifest(b'{"prompt": "Hi?", "image": "nope.png"}\n')),
    Case("manifest missing", "POST", B, form(params="{}")),
    Case("manifest sent twice", "POST", B, repeated_parts(("manifest", b'{"prompt": "A?"}\n', "a.jsonl"),
                                                           ("manifest", b'{"prompt": "B?"}\n', "b.jsonl")),
         status=422),
    Case("form image sent twice", "POST", J, repeated_parts(("prompt", b"Hi?"), ("image", PNG, "a.png"),
                                                             ("image", PNG, "b.png")), status=422),
    Case("manifest prompt lone surrogate", "POST", B, manifest(b'{"prompt": "\\ud800"}\n')),
    Case("manifest line not an object", "POST", B, manifest(b'["Hi?"]\n')),
    Case("manifest files sent as text", "POST", B, form(manifest=(io.BytesIO(b'{"prompt": "Hi?"}\n'), "m.jsonl"),
                                                         files="not a file")),
    Case("manifest file corrupt", "POST", B, manifest(b'{"prompt": "Hi?", "image": "a.png"}\n', **{"a.png": b"junk"})),
    # ---- GET /v1/batches/{id}/results: cursors and limits
    Case("results cursor garbage", "GET", "/v1/batches/{batch}/results?cursor=!!garbage!!"),
    Case("results cursor huge position", "GET", "/v1/batches/{batch}/results?cursor=" + _cursor("p", 2**70)),
    Case("results cursor nested", "GET", "/v1/batches/{batch}/results?cursor="
         + base64.urlsafe_b64encode(_nested(50_000).encode()).decode()),
    Case("results cursor of another listing", "GET", "/v1/batches/{batch}/results?cursor="
         + _cursor("t", "2024-01-01T00:00:00+00:00", uuid.uuid4().hex)),
    Case("results cursor too long", "GET", "/v1/batches/{batch}/results?cursor=" + "A" * 10_000),
    Case("results limit zero", "GET", "/v1/batches/{batch}/results?limit=0"),
    Case("results limit oversized", "GET", "/v1/batches/{batch}/results?limit=" + "9" * 40),
    # ---- GET /v1/audit/flagged, /export, /summary
    Case("flagged cursor at the calendar's edge", "GET", "/v1/audit/flagged?cursor="
         + _cursor("t", "0001-01-01T00:00:00+14:00", uuid.uuid4().hex)),
    Case("flagged cursor year 9999 plus zone", "GET", "/v1/audit/flagged?cursor="
         + _cursor("t", "9999-12-31T23:59:59-14:00", uuid.uuid4().hex)),
    Case("flagged created_from not a date", "GET", "/v1/audit/flagged?created_from=yesterday"),
    Case("flagged created_from a bare number", "GET", "/v1/audit/flagged?created_from=1700000000"),
    Case("flagged s_pre_min NaN", "GET", "/v1/audit/flagged?s_pre_min=nan"),
    Case("flagged s_pre_min infinite", "GET", "/v1/audit/flagged?s_pre_min=1e400"),
    Case("flagged custom_id with NUL", "GET", "/v1/audit/flagged?custom_id=a%00b"),
    Case("flagged query invalid UTF-8", "GET", "/v1/audit/flagged?custom_id=%FF%FE", status=400),
    Case("flagged verdict unknown", "GET", "/v1/audit/flagged?verdict=maybe"),
    Case("flagged unknown filter", "GET", "/v1/audit/flagged?colour=red"),
    Case("export format unknown", "GET", "/v1/audit/export?format=xml"),
    Case("export batch_id not a uuid", "GET", "/v1/audit/export?batch_id=42"),
    Case("summary batch_id not a uuid", "GET", "/v1/audit/summary?batch_id=x"),
    # ---- reviews, images
    Case("review verdict unknown", "POST", "/v1/jobs/{job}/review", {"json": {"verdict": "unsafe"}}),
    Case("review note with NUL", "POST", "/v1/jobs/{job}/review", {"json": {"verdict": "false_positive",
                                                                             "note": "n\x00"}}),
    Case("review note lone surrogate", "POST", "/v1/jobs/{job}/review",
         json_raw('{"verdict": "false_positive", "note": "\\udc00"}')),
    Case("review note too long", "POST", "/v1/jobs/{job}/review", {"json": {"verdict": "false_positive",
                                                                             "note": "n" * 4001}}),
    Case("review as a form", "POST", "/v1/jobs/{job}/review", {"data": {"verdict": "false_positive"}}, status=415),
    Case("image size unknown", "GET", "/v1/jobs/{job}/image?size=huge"),
    # ---- tenant settings
    Case("rotate overlap negative", "POST", "/v1/tenant/callback-secret/rotate", {"json": {"overlap_hours": -1}}),
    Case("rotate overlap a string", "POST", "/v1/tenant/callback-secret/rotate", {"json": {"overlap_hours": "24"}}),
    Case("rotate overlap a boolean", "POST", "/v1/tenant/callback-secret/rotate", {"json": {"overlap_hours": True}}),
    Case("rotate body invalid JSON", "POST", "/v1/tenant/callback-secret/rotate", json_raw(b"\x00"), status=400),
    # ---- keys and methods
    Case("unknown key", "GET", "/v1/jobs/{job}", {"headers": {"Authorization": "Bearer eta_nope_nope"}},
         status=401),
    Case("Basic instead of Bearer", "GET", "/v1/jobs/{job}", {"headers": {"Authorization": "Basic YTpi"}},
         status=401),
    Case("review key submits", "POST", J, job(), role="review", status=403),
    Case("submit key reads the callback secret", "GET", "/v1/tenant/callback-secret", role="submit", status=403),
    Case("id not a uuid", "GET", "/v1/jobs/12345", status=404),
    Case("another tenant's job", "GET", "/v1/jobs/" + str(uuid.uuid4()), status=404),
    Case("made-up method", "BREW", J, status=405),
]


def _state(engine: sa.engine.Engine) -> tuple[Any, ...]:
    with engine.connect() as connection:
        counts = tuple(connection.scalar(sa.select(sa.func.count()).select_from(model))
                       for model in (Job, Batch, Review, ImageRow, Blob))
        secrets = tuple(connection.execute(sa.select(Tenant.callback_secret, Tenant.previous_callback_secret)
                                           .order_by(Tenant.id)).all())
    return counts, secrets


@pytest.fixture
def seeded(client, tenant) -> dict[str, str]:
    made = client.post(J, headers=tenant.auth(), json={"prompt": "Seed job", "image_base64": _b64(PNG)})
    assert made.status_code == 202, made.json
    batch_made = client.post(B, headers=tenant.auth(), json={"items": [{"prompt": "Seed item"}]})
    assert batch_made.status_code == 202, batch_made.json
    return {"job": made.json["id"], "batch": batch_made.json["id"]}


def test_there_are_at_least_sixty_distinct_cases():
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)) and len(names) >= 60, len(names)
    routes = {case.path.split("?")[0] for case in CASES}
    assert len(routes) >= 12, routes


@pytest.fixture
def settings(postgres_url, tmp_path):  # the limits the cases are written against
    from eta.settings import Settings

    return Settings(database_url=postgres_url, eta_data_dir=tmp_path, **LIMITS)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_gets_a_4xx_problem_and_changes_nothing(case: Case, client, tenant, seeded, postgres_engine):
    before = _state(postgres_engine)
    kwargs = dict(case.kwargs)
    headers = {**tenant.auth(case.role), **kwargs.pop("headers", {})}
    path = case.path.format(**seeded)
    response = client.open(path, method=case.method, headers=headers, **kwargs)

    assert 400 <= response.status_code < 500, (response.status_code, response.get_data()[:500])
    if case.status is not None:
        assert response.status_code == case.status, response.get_data()[:500]
    assert response.mimetype == PROBLEM, response.get_data()[:300]
    problem = response.get_json()
    assert isinstance(problem.get("code"), str) and problem["code"], problem
    assert problem["status"] == response.status_code
    assert _state(postgres_engine) == before, "a refused request stored something"
    # Healthy afterwards: liveness, and a normal authenticated read.
    assert client.get("/healthz").status_code == 200
    assert client.get(f"/v1/jobs/{seeded['job']}", headers=tenant.auth()).status_code == 200

