"""Hostile requests beyond one bad field (issue 26): parameter domains, the review page under header
splitting, NUL and invalid UTF-8, duplicate multipart parts, non-UTF-8 JSON and content encodings.

Each runs against SQLite and Postgres where something could be stored, and checks that nothing was: the
database's row counts before and after are the oracle, not the answer alone.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlalchemy.engine import Engine

from api import create_app
from eta.settings import Settings
from eta.store import repository as repo
from eta.store import session_factory
from eta.store.models import ApiKeyRole, Batch, Job, Review, ReviewSession
from tests.integration.api.conftest import TEST_LIMITS, Tenant
from tests.integration.audit.seed import Scores, seed_job

pytestmark = pytest.mark.postgres

PROBLEM = "application/problem+json"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture
def settings(engine: Engine, tmp_path: Path) -> Settings:
    return Settings(database_url=engine.url.render_as_string(hide_password=False), eta_data_dir=tmp_path,
                    **TEST_LIMITS)


@pytest.fixture
def app(settings: Settings, engine: Engine, enqueue):
    return create_app(settings, engine=engine, enqueue=enqueue)


@pytest.fixture
def make_tenant(engine: Engine) -> Callable[[], Tenant]:
    sessions = session_factory(engine)

    def make() -> Tenant:
        with sessions() as session, session.begin():
            tenant = repo.create_tenant(session=session, name=f"t-{uuid.uuid4().hex[:10]}")
            keys = {role.value: repo.create_api_key(session=session, tenant_id=tenant.id, role=role)[1]
                    for role in ApiKeyRole}
            return Tenant(tenant.id, keys)

    return make


@pytest.fixture
def flagged_job(engine: Engine, tenant: Tenant) -> str:
    with session_factory(engine)() as session, session.begin():
        return str(seed_job(session, tenant.id, scores=Scores(s_pre=None, s_post=0.01)))


def _counts(engine: Engine) -> tuple[int, ...]:
    with engine.connect() as connection:
        return tuple(connection.scalar(sa.select(sa.func.count()).select_from(model))
                     for model in (Job, Batch, Review, ReviewSession))


@pytest.fixture
def unchanged(engine: Engine) -> Iterator[Callable[[], None]]:
    """Nothing may be stored after the last call of the returned mark (the test's start by default)."""
    marks = [_counts(engine)]
    yield lambda: marks.append(_counts(engine))
    assert _counts(engine) == marks[-1], "a refused request stored something"


def _csrf(page: str) -> str:
    match = CSRF.search(page)
    assert match, "no CSRF field on the page"
    return match.group(1)


def _sign_in(client, key: str) -> str:
    """Sign in through the form; the session's CSRF token."""
    token = _csrf(client.get("/review/login").get_data(as_text=True))
    signed = client.post("/review/login", data={"csrf_token": token, "api_key": key, "next": ""})
    assert signed.status_code == 302, signed.get_data()[:300]
    return _csrf(client.get("/review/").get_data(as_text=True))


def _multipart(*parts: tuple[str, bytes] | tuple[str, bytes, str]) -> dict[str, Any]:
    """A multipart body written byte by byte: (name, value) or (name, value, filename), repeats allowed."""
    boundary = "hostile-boundary"
    chunks = []
    for part in parts:
        name, value = part[0], part[1]
        filename = f'; filename="{part[2]}"' if len(part) == 3 else ""
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode()
                      + value + b"\r\n")
    return {"data": b"".join(chunks) + f"--{boundary}--\r\n".encode(),
            "content_type": f"multipart/form-data; boundary={boundary}"}


def _assert_review_400(response, *words: str) -> None:
    assert response.status_code == 400, (response.status_code, response.get_data()[:500])
    text = response.get_data(as_text=True)
    for word in words:
        assert word in text, (word, text[:800])
    assert not any("x=1" in value for value in response.headers.getlist("Set-Cookie")), response.headers


# ------------------------------------------------------------------------- item 5: parameter domains
@pytest.mark.parametrize(("name", "value"), [
    ("temperature", 1e-320), ("temperature", 1e-3), ("temperature", 1e6), ("alpha", 1e300), ("alpha", -0.5),
    ("tau_pre", 1e308), ("tau_post", -1e300), ("tau_pre", -101.0),
])
def test_numeric_parameters_outside_their_domain_are_refused_naming_the_field(client, tenant, unchanged, name,
                                                                              value):
    for path, body in (("/v1/jobs", {"prompt": "Hi?", "params": {name: value}}),
                       ("/v1/batches", {"items": [{"prompt": "Hi?"}], "params": {name: value}}),
                       ("/v1/batches", {"items": [{"prompt": "Hi?", "params": {name: value}}]})):
        answer = client.post(path, headers=tenant.auth(), json=body)
        assert answer.status_code == 422, (path, answer.get_json())
        assert answer.mimetype == PROBLEM
        assert name in json.dumps(answer.get_json()), answer.get_json()


def test_parameters_at_the_edges_of_their_domain_are_accepted(client, tenant):
    params = {"temperature": 0.01, "alpha": 0.0, "tau_pre": -1.0, "tau_post": 1e9}
    answer = client.post("/v1/jobs", headers=tenant.auth(), json={"prompt": "Hi?", "params": params})
    assert answer.status_code == 202, answer.get_json()
    assert {k: answer.get_json()["params"][k] for k in params} == params


def test_the_openapi_document_states_the_parameter_domains(client):
    document = client.get("/v1/openapi.json").get_json()
    found = [schema for schema in _walk(document) if isinstance(schema, dict)
             and isinstance(schema.get("properties"), dict) and "temperature" in schema["properties"]]
    assert found
    for schema in found:
        temperature = schema["properties"]["temperature"]
        assert temperature["minimum"] > 0 and temperature["maximum"] <= 1000, temperature
        assert 1e-320 < temperature["minimum"]
        assert schema["properties"]["alpha"]["maximum"] < 1e38  # summed in float32


def _walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _walk(child)


# ------------------------------------------------------------------- item 6: the review page, no 5xx
def test_a_header_splitting_next_while_signed_in_is_a_400(client, tenant, unchanged):
    _sign_in(client, tenant.keys["review"])
    unchanged()
    answer = client.get("/review/login?next=/review%0d%0aSet-Cookie:x=1")
    _assert_review_400(answer, "next", "line break")


def test_a_header_splitting_next_at_sign_in_creates_no_session(client, tenant, engine, unchanged):
    token = _csrf(client.get("/review/login").get_data(as_text=True))
    answer = client.post("/review/login", data={"csrf_token": token, "api_key": tenant.keys["review"],
                                                "next": "/review\r\nSet-Cookie:x=1"})
    _assert_review_400(answer, "next")
    assert client.get("/review/").status_code == 302  # not signed in


@pytest.mark.parametrize("target", [
    "https://evil.test/review/", "//evil.test/review", "/review/../v1/jobs", "/review/%2e%2e/v1/jobs",
    "/reviewer", "/review\\..\\v1", "/review/%0d%0aSet-Cookie:x=1", "javascript:alert(1)//review",
])
def test_next_only_ever_points_inside_the_review_pages(client, tenant, target):
    _sign_in(client, tenant.keys["review"])
    answer = client.get("/review/login", query_string={"next": target})
    assert answer.status_code == 302, answer.get_data()[:300]
    assert answer.headers["Location"].endswith("/review/"), answer.headers["Location"]


def test_a_next_inside_the_review_pages_is_followed(client, tenant, flagged_job):
    _sign_in(client, tenant.keys["review"])
    answer = client.get("/review/login", query_string={"next": f"/review/jobs/{flagged_job}?back=/review/"})
    assert answer.status_code == 302
    assert answer.headers["Location"].endswith(f"/review/jobs/{flagged_job}?back=/review/")


@pytest.mark.parametrize("back", ["//evil.test/review/", "/review/../v1/jobs", "https://evil.test/"])
def test_the_job_page_links_back_only_inside_the_review_pages(client, tenant, flagged_job, back):
    _sign_in(client, tenant.keys["review"])
    page = client.get(f"/review/jobs/{flagged_job}", query_string={"back": back})
    assert page.status_code == 200
    links = re.findall(r'href="([^"]*)" id="back"', page.get_data(as_text=True))
    assert links == ["/review/"], links


def test_a_verdict_note_with_a_nul_byte_is_refused_on_every_database(client, tenant, flagged_job, unchanged):
    token = _sign_in(client, tenant.keys["review"])
    unchanged()
    answer = client.post(f"/review/jobs/{flagged_job}/verdict",
                         data={"csrf_token": token, "verdict": "false_positive", "note": "before\x00after"})
    _assert_review_400(answer, "note", "NUL")


def test_a_multi_line_note_is_still_recorded(client, tenant, flagged_job, engine):
    token = _sign_in(client, tenant.keys["review"])
    answer = client.post(f"/review/jobs/{flagged_job}/verdict",
                         data={"csrf_token": token, "verdict": "false_positive", "note": "line one\r\nline two\tend"})
    assert answer.status_code == 302
    with engine.connect() as connection:
        assert connection.scalar(sa.select(Review.note).where(Review.job_id == uuid.UUID(flagged_job))) == (
            "line one\r\nline two\tend")


@pytest.mark.parametrize("field", ["api_key", "next", "csrf_token"])
def test_invalid_utf8_in_a_multipart_sign_in_form_is_a_400(client, tenant, field, unchanged):
    token = _csrf(client.get("/review/login").get_data(as_text=True)).encode()
    fields = {"csrf_token": token, "api_key": tenant.keys["review"].encode(), "next": b"/review/"}
    fields[field] = fields[field][:8] + b"\xff\xc3"
    answer = client.post("/review/login", **_multipart(*fields.items()))
    _assert_review_400(answer, field, "UTF-8")
    assert client.get("/review/").status_code == 302  # not signed in


@pytest.mark.parametrize("field", ["note", "back", "csrf_token", "verdict"])
def test_invalid_utf8_in_a_multipart_verdict_form_is_a_400(client, tenant, flagged_job, field, unchanged):
    token = _sign_in(client, tenant.keys["review"]).encode()
    unchanged()
    fields = {"csrf_token": token, "verdict": b"false_positive", "note": b"fine", "back": b"/review/"}
    fields[field] = fields[field] + b"\xed\xa0\x80"  # an encoded surrogate: invalid UTF-8
    answer = client.post(f"/review/jobs/{flagged_job}/verdict", **_multipart(*fields.items()))
    _assert_review_400(answer, field, "UTF-8")


@pytest.mark.parametrize("body", [b"note=%FF%FE", b"note=\xff"])
def test_invalid_utf8_in_a_urlencoded_verdict_form_is_a_400(client, tenant, flagged_job, body, unchanged):
    token = _sign_in(client, tenant.keys["review"])
    unchanged()
    answer = client.post(f"/review/jobs/{flagged_job}/verdict",
                         data=f"csrf_token={token}&verdict=false_positive&".encode() + body,
                         content_type="application/x-www-form-urlencoded")
    _assert_review_400(answer, "note", "UTF-8")


@pytest.mark.parametrize("forged", ["%C3%A9", "%C3%A9" * 30, "%E2%82%AC"])
def test_a_non_ascii_csrf_token_is_a_400_not_a_crash(client, tenant, flagged_job, forged, unchanged):
    _sign_in(client, tenant.keys["review"])
    unchanged()
    answer = client.post(f"/review/jobs/{flagged_job}/verdict",
                         data=f"csrf_token={forged}&verdict=false_positive".encode(),
                         content_type="application/x-www-form-urlencoded")
    _assert_review_400(answer, "expired")
    answer = client.post("/review/login", data=f"csrf_token={forged}&api_key=x".encode(),
                         content_type="application/x-www-form-urlencoded")
    _assert_review_400(answer, "expired")


@pytest.mark.parametrize("field", ["api_key", "csrf_token", "verdict", "back"])
def test_line_breaks_in_one_line_fields_are_a_400(client, tenant, flagged_job, field, unchanged):
    token = _sign_in(client, tenant.keys["review"])
    unchanged()
    fields = {"csrf_token": token, "verdict": "false_positive", "back": "/review/", "api_key": "k"}
    fields[field] += "\r\nSet-Cookie: x=1"
    answer = client.post(f"/review/jobs/{flagged_job}/verdict", data=fields)
    _assert_review_400(answer, field, "line break")


# ------------------------------------------------------------------ item 7: duplicate multipart parts
def _png(colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, "PNG")
    return buffer.getvalue()


MANIFEST_A = b'{"prompt": "First?", "image": "a.png"}\n'
MANIFEST_B = b'{"prompt": "Second?"}\n{"prompt": "Third?"}\n'


@pytest.mark.parametrize(("path", "parts", "field"), [
    ("/v1/batches", [("manifest", MANIFEST_A, "m1.jsonl"), ("manifest", MANIFEST_B, "m2.jsonl"),
                     ("files", _png(), "a.png")], "manifest"),
    ("/v1/batches", [("manifest", MANIFEST_A, "m1.jsonl"), ("manifest", MANIFEST_B), ("files", _png(), "a.png")],
     "manifest"),
    ("/v1/batches", [("manifest", MANIFEST_A, "m.jsonl"), ("files", _png(), "a.png"),
                     ("files", _png((1, 2, 3)), "a.png")], "files"),
    ("/v1/batches", [("manifest", MANIFEST_B, "m.jsonl"), ("params", b"{}"), ("params", b'{"tau_pre": 1}')],
     "params"),
    ("/v1/batches", [("manifest", MANIFEST_B, "m.jsonl"), ("callback_url", b"https://example.test/a"),
                     ("callback_url", b"https://example.test/b")], "callback_url"),
    ("/v1/jobs", [("prompt", b"Hi?"), ("image", _png(), "a.png"), ("image", _png((1, 2, 3)), "b.png")], "image"),
    ("/v1/jobs", [("prompt", b"Hi?"), ("image", _png(), "a.png"), ("image", _png())], "image"),
    ("/v1/jobs", [("prompt", b"Hi?"), ("prompt", b"Other?")], "prompt"),
    ("/v1/jobs", [("prompt", b"Hi?"), ("custom_id", b"a"), ("custom_id", b"b")], "custom_id"),
])
def test_a_repeated_part_is_a_422_naming_it(client, tenant, unchanged, path, parts, field):
    answer = client.post(path, headers=tenant.auth(), **_multipart(*parts))
    assert answer.status_code == 422, answer.get_json()
    problem = answer.get_json()
    assert problem["code"] == "duplicate_part" and answer.mimetype == PROBLEM
    assert [e["field"] for e in problem["errors"]] == [field], problem


def test_several_files_of_distinct_names_are_still_one_batch(client, tenant):
    manifest = b'{"prompt": "A?", "image": "a.png"}\n{"prompt": "B?", "image": "b.png"}\n'
    answer = client.post("/v1/batches", headers=tenant.auth(), **_multipart(
        ("manifest", manifest, "m.jsonl"), ("files", _png(), "a.png"), ("files", _png((1, 2, 3)), "b.png")))
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["total"] == 2


def test_duplicate_parts_are_not_parsed_for_an_anonymous_client(client, unchanged):
    answer = client.post("/v1/jobs", **_multipart(("prompt", b"Hi?"), ("prompt", b"Other?")))
    assert answer.status_code == 401


# --------------------------------------------------------- item 7: JSON in UTF-8 only, no content coding
JOB = json.dumps({"prompt": "What is this?"})


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_a_json_body_not_in_utf8_is_refused(client, tenant, unchanged, encoding):
    for path, body in (("/v1/jobs", JOB), ("/v1/batches", json.dumps({"items": [{"prompt": "Hi?"}]}))):
        answer = client.post(path, headers=tenant.auth(), data=body.encode(encoding), content_type="application/json")
        assert answer.status_code == 415, (path, answer.get_data()[:300])
        assert answer.get_json()["code"] == "unsupported_charset"
        assert "UTF-8" in answer.get_json()["detail"]


@pytest.mark.parametrize("charset", ["utf-16", "latin-1", "UTF-32"])
def test_a_json_body_declaring_another_charset_is_refused(client, tenant, unchanged, charset):
    answer = client.post("/v1/jobs", headers=tenant.auth(), data=JOB.encode(),
                         content_type=f"application/json; charset={charset}")
    assert answer.status_code == 415, answer.get_data()[:300]
    assert answer.get_json()["code"] == "unsupported_charset"


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/json; charset=UTF-8",
                                          "application/json"])
def test_a_utf8_json_body_is_accepted(client, tenant, content_type):
    answer = client.post("/v1/jobs", headers=tenant.auth(), data=JOB.encode(), content_type=content_type)
    assert answer.status_code == 202, answer.get_data()[:300]


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "identity, gzip"])
def test_a_content_coded_body_is_refused(client, tenant, flagged_job, unchanged, coding):
    compressed = gzip.compress(JOB.encode())
    for path, body, content_type in (
            ("/v1/jobs", compressed, "application/json"),
            ("/v1/batches", gzip.compress(json.dumps({"items": [{"prompt": "Hi?"}]}).encode()), "application/json"),
            (f"/v1/jobs/{flagged_job}/review", gzip.compress(b'{"verdict": "false_positive"}'), "application/json"),
            ("/v1/jobs", gzip.compress(_multipart(("prompt", b"Hi?"))["data"]),
             _multipart(("prompt", b"Hi?"))["content_type"])):
        answer = client.post(path, headers={**tenant.auth("admin"), "Content-Encoding": coding}, data=body,
                             content_type=content_type)
        assert answer.status_code == 415, (path, answer.get_data()[:300])
        assert answer.get_json()["code"] == "unsupported_content_encoding"
        assert answer.headers["Accept-Encoding"] == "identity"


def test_an_identity_content_coding_is_plain(client, tenant):
    answer = client.post("/v1/jobs", headers={**tenant.auth(), "Content-Encoding": "identity"}, json={"prompt": "Hi?"})
    assert answer.status_code == 202


# ------------------------------------------------------------ item 7: gunicorn's refusals as problems
ETA = str(Path(sys.executable).with_name("eta"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`eta serve` as a user starts it (gunicorn, its embedded SQLite database); yields the port."""
    data_dir = tmp_path_factory.mktemp("served")
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("ETA_") or k in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY"))}
    env["ETA_DATA_DIR"] = str(data_dir)
    subprocess.run([ETA, "db", "upgrade"], env=env, check=True, capture_output=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (data_dir / "serve.log").open("wb")
    server = subprocess.Popen([ETA, "serve", "--port", str(port), "--workers", "1", "--threads", "2"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):  # noqa: S310
                    break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "eta serve did not start"
                time.sleep(0.2)  # polling the server's readiness, not waiting for a fixed time
        yield port
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(("name", "request_bytes", "status", "code"), [
    ("request line over the limit", b"GET /v1/jobs?cursor=" + b"A" * 6000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     414, "uri_too_long"),
    ("header field over the limit", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
     431, "header_fields_too_large"),
    ("too many header fields", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
     + b"".join(b"X-H%d: v\r\n" % i for i in range(120)) + b"\r\n", 431, "header_fields_too_large"),
    ("malformed request line", b"GARBAGE\r\n\r\n", 400, "bad_request"),
    ("invalid header name", b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400, "bad_request"),
    ("unknown transfer coding", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo, chunked\r\n"
     b"Content-Type: application/json\r\n\r\n0\r\n\r\n", 501, "unsupported_transfer_coding"),
    # gunicorn itself passes a gzip transfer-coded body on, still compressed: the application refuses it.
    ("gzip transfer coding", b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n"
     b"Content-Type: application/json\r\n\r\n0\r\n\r\n", 501, "unsupported_transfer_coding"),
])
def test_gunicorns_own_refusals_are_problem_documents(served, name, request_bytes, status, code):
    answered, headers, body = _raw(served, request_bytes)
    assert answered == status, (name, answered, body[:300])
    assert headers["content-type"] == PROBLEM, headers
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (status, code), problem
    assert problem["detail"]
    # The server is still there for the next client.
    assert _raw(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200
