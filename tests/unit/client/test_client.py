"""The pipeline client against a scripted transport: retries, idempotency keys, problem documents, paging."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from eta.client import (
    BatchItem,
    ETAAPIError,
    ETAClient,
    ETAConnectionError,
    ETAWaitTimeout,
    RetryPolicy,
    encode_batch,
)

PROBLEM = "application/problem+json"


def _client(handler: Callable[[httpx.Request], httpx.Response], *, attempts: int = 4) -> tuple[ETAClient, list]:
    sleeps: list[float] = []
    client = ETAClient("http://eta.test", "eta_key", transport=httpx.MockTransport(handler), progress=False,
                       retry=RetryPolicy(max_attempts=attempts, backoff_base_s=0.1, backoff_max_s=1.0),
                       sleep=sleeps.append)
    return client, sleeps


def _batch(**overrides) -> dict:
    doc = {"id": "b1", "object": "batch", "status": "in_progress", "total": 2, "counts": {"queued": 2},
           "finished": 0, "progress": 0.0, "created_at": "2025-01-01T00:00:00+00:00", "finished_at": None}
    return {**doc, **overrides}


def test_submit_retries_dropped_connections_and_5xx_with_one_idempotency_key():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        if len(seen) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if len(seen) == 2:
            return httpx.Response(503, headers={"Retry-After": "0.5"}, json={"code": "not_ready"})
        return httpx.Response(202, json=_batch(submission={"dispatch": "replayed"}))

    client, sleeps = _client(handler)
    batch = client.submit_batch([BatchItem("what is this?", image=b"\x89PNG fake", custom_id="a")])
    assert batch["id"] == "b1"
    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(seen) == 3 and len(keys) == 1
    assert len({request.content for request in seen}) == 1, "every retry must send the very same body"
    assert all(request.headers["Authorization"] == "Bearer eta_key" for request in seen)
    assert len(sleeps) == 2 and sleeps[1] >= 0.5  # Retry-After honoured


def test_a_given_idempotency_key_is_sent_as_is():
    keys = []

    def handler(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers["Idempotency-Key"])
        return httpx.Response(202, json=_batch())

    client, _ = _client(handler)
    client.submit_batch([{"prompt": "hi"}], "pipeline-run-42")
    assert keys == ["pipeline-run-42"]


def test_retries_are_bounded_and_end_in_a_connection_error():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("connection refused")

    client, sleeps = _client(handler, attempts=3)
    with pytest.raises(ETAConnectionError, match="after 3 attempt"):
        client.get_batch("b1")
    assert len(calls) == 3 and len(sleeps) == 2 and all(0 <= s <= 1.0 for s in sleeps)


def test_a_post_that_may_not_repeat_is_not_retried_after_it_was_sent():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("timed out")

    client, _ = _client(handler)
    with pytest.raises(ETAConnectionError):
        client.cancel_batch("b1")
    assert len(calls) == 1


def test_problem_documents_become_api_errors_with_their_code():
    problem = {"type": "urn:eta:problem:batch_invalid", "title": "Unprocessable", "status": 422,
               "code": "batch_invalid", "detail": "2 items are invalid",
               "errors": [{"index": 1, "field": "prompt", "code": "prompt_invalid", "message": "empty"}]}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, headers={"Content-Type": PROBLEM}, content=json.dumps(problem).encode())

    client, sleeps = _client(handler)
    with pytest.raises(ETAAPIError) as caught:
        client.submit_batch([{"prompt": "a"}, {"prompt": " "}])
    error = caught.value
    assert (error.status, error.code, error.detail) == (422, "batch_invalid", "2 items are invalid")
    assert error.errors[0]["code"] == "prompt_invalid" and "prompt_invalid" in str(error)
    assert sleeps == []  # a 4xx is never retried


def test_a_proxy_error_page_still_gives_a_code():
    client, _ = _client(lambda request: httpx.Response(502, text="<html>bad gateway</html>"), attempts=2)
    with pytest.raises(ETAAPIError) as caught:
        client.get_job("j1")
    assert caught.value.code == "http_502" and caught.value.status == 502


def test_iter_results_follows_next_cursor():
    pages = {None: {"data": [{"id": "1"}, {"id": "2"}], "next_cursor": "c2"},
             "c2": {"data": [{"id": "3"}], "next_cursor": None}}
    queries = []

    def handler(request: httpx.Request) -> httpx.Response:
        queries.append(dict(request.url.params))
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    client, _ = _client(handler)
    assert [job["id"] for job in client.iter_results("b1", page_size=2)] == ["1", "2", "3"]
    assert queries == [{"limit": "2"}, {"limit": "2", "cursor": "c2"}]


def test_flagged_sends_filters_as_query_parameters():
    queries = []

    def handler(request: httpx.Request) -> httpx.Response:
        queries.append(dict(request.url.params))
        return httpx.Response(200, json={"data": [], "next_cursor": None})

    client, _ = _client(handler)
    assert list(client.flagged(aligned=True, batch_id="b1", verdict=None)) == []
    assert queries == [{"limit": "100", "aligned": "true", "batch_id": "b1"}]


def test_wait_polls_with_backoff_until_the_batch_ends():
    docs = iter([_batch(), _batch(), _batch(), _batch(finished=1, counts={"queued": 1, "succeeded": 1}),
                 _batch(status="completed", finished=2, progress=1.0, counts={"succeeded": 2})])
    client, sleeps = _client(lambda request: httpx.Response(200, json=next(docs)))
    assert client.wait("b1", poll_initial_s=1.0, poll_max_s=2.0)["status"] == "completed"
    # No progress: the interval grows (capped); progress: it drops back.
    assert sleeps == [1.0, 1.5, 2.0, 1.0]


def test_wait_gives_up_after_its_timeout():
    client, _ = _client(lambda request: httpx.Response(200, json=_batch()))
    with pytest.raises(ETAWaitTimeout) as caught:
        client.wait("b1", timeout=0.0)
    assert caught.value.batch["status"] == "in_progress"


def test_encode_batch_uploads_each_distinct_image_once(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"same bytes")
    (tmp_path / "b.jpg").write_bytes(b"same bytes")
    body = encode_batch([BatchItem("q", image=tmp_path / "a.jpg", custom_id="a"),
                         BatchItem("q", image=tmp_path / "b.jpg", custom_id="b"),
                         {"prompt": "text only", "custom_id": "c", "params": {"seed": 1}}], params={"policy": "either"})
    assert body.content_type.startswith("multipart/form-data; boundary=")
    assert body.content.count(b"same bytes") == 1
    assert body.content.count(b'name="files"') == 1 and b'{"policy": "either"}' in body.content


def test_items_reject_unknown_fields():
    with pytest.raises(ValueError, match="unknown item field"):
        BatchItem.coerce({"prompt": "x", "imgae": "typo.jpg"})


class _BreakingStream(httpx.SyncByteStream):
    def __iter__(self):
        yield b'{"id": "1"}\n'
        raise httpx.ReadError("connection reset")


def test_export_retries_opening_the_stream_but_never_repeats_delivered_bytes():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(dict(request.url.params))
        if len(calls) == 1:
            return httpx.Response(503, json={"code": "not_ready"})
        return httpx.Response(200, stream=_BreakingStream())

    client, _ = _client(handler)
    received = []
    with pytest.raises(ETAConnectionError, match="broke off"):
        for chunk in client.export("jsonl", aligned=False):
            received.append(chunk)
    assert received == [b'{"id": "1"}\n'] and len(calls) == 2
    assert calls[0] == {"format": "jsonl", "aligned": "false"}


def test_items_by_reference_and_presets_reach_the_manifest_the_server_reads(tmp_path):
    import io

    from werkzeug.wrappers import Request

    from api.intake import parse_manifest

    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG fake")
    body = encode_batch([BatchItem("p", image_url="https://bucket.test/a.jpg", custom_id="u", preset="nightly@2"),
                         {"prompt": "q", "image": str(image), "custom_id": "f"}], preset="nightly")
    request = Request.from_values(input_stream=io.BytesIO(body.content), content_length=len(body.content),
                                  content_type=body.content_type, method="POST")
    assert request.form["preset"] == "nightly"
    files = {f.filename: f.read() for f in request.files.getlist("files")}
    items, errors = parse_manifest(request.files["manifest"].read(), files)
    assert errors == []
    assert (items[0].image_url, items[0].preset, items[0].image) == ("https://bucket.test/a.jpg", "nightly@2", None)
    assert (items[1].image, items[1].preset) == (b"\x89PNG fake", None)
    with pytest.raises(ValueError, match="not both"):
        BatchItem.coerce({"prompt": "p", "image": "a.jpg", "image_url": "https://bucket.test/a.jpg"})
