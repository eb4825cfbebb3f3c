"""A small client of the ETA API for batch pipelines.

    from eta.client import ETAClient, BatchItem

    with ETAClient.from_env() as eta:                     # ETA_URL, ETA_API_KEY
        batch = eta.submit_batch([BatchItem("What is in this picture?", image="cat.jpg", custom_id="cat")])
        eta.wait(batch["id"])
        for job in eta.iter_results(batch["id"]):
            print(job["custom_id"], job["result"]["flagged"], job["result"]["response"])

Every request is retried with exponential backoff and full jitter on connection errors, timeouts and
502/503/504 (also 500 and 429) when retrying cannot do anything twice: reads, and batch submissions, which
always carry an `Idempotency-Key` (made here when the caller gives none) that is reused on every retry of the
same submission, so the server answers a retry with the batch it already made. Errors the API reports raise
`ETAAPIError` carrying the problem document's stable `code`.

This module needs only httpx and tqdm: it does not import the rest of the service.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

import httpx
from tqdm import tqdm

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
# Batch statuses after which nothing changes any more.
TERMINAL_BATCH_STATUSES = frozenset({"completed", "failed", "cancelled"})
TERMINAL_JOB_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# Statuses that say "try again": the server or a proxy in front of it is restarting or overloaded.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_UPLOAD_CHUNK = 256 * 1024


# ------------------------------------------------------------------------------------------ errors
class ETAClientError(Exception):
    """Base of every error this client raises."""


class ETAConnectionError(ETAClientError):
    """The server could not be reached (or stopped answering) and retries were exhausted."""


class ETAWaitTimeout(ETAClientError):
    """`wait` gave up before the batch ended; `batch` is the last document seen."""

    def __init__(self, message: str, batch: dict[str, Any]) -> None:
        super().__init__(message)
        self.batch = batch


class ETAAPIError(ETAClientError):
    """The API answered with an error: an RFC 9457 problem document, or (from a proxy) anything else.

    Attributes:
        status: HTTP status.
        code: the problem's stable machine-readable code (e.g. `batch_invalid`, `unauthorized`);
            `http_<status>` when the body was not a problem document.
        title, detail: the problem's human text.
        errors: per-item errors of a rejected batch (each with `index`, `field`, `code`, `message`).
        problem: the whole problem document.
    """

    def __init__(self, status: int, code: str, title: str, detail: str | None = None,
                 errors: list[dict[str, Any]] | None = None, problem: dict[str, Any] | None = None) -> None:
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.problem = problem or {}
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.status} {self.code}: {self.detail or self.title}"
        if self.errors:
            shown = "; ".join(_describe_item_error(e) for e in self.errors[:5])
            more = f" (+{len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
            text += f" [{shown}{more}]"
        return text

    @classmethod
    def from_response(cls, response: httpx.Response) -> ETAAPIError:
        problem: dict[str, Any] = {}
        try:
            body = response.json()
            if isinstance(body, dict):
                problem = body
        except ValueError:
            pass
        code = problem.get("code") if isinstance(problem.get("code"), str) else f"http_{response.status_code}"
        title = str(problem.get("title") or response.reason_phrase or "HTTP error")
        detail = problem.get("detail")
        if detail is None and not problem:
            detail = response.text[:200].strip() or None
        errors = problem.get("errors") if isinstance(problem.get("errors"), list) else None
        return cls(response.status_code, str(code), title, detail if detail is None else str(detail), errors, problem)


def _describe_item_error(error: Mapping[str, Any]) -> str:
    where = f"line {error['line']}" if "line" in error else f"item {error.get('index')}"
    if error.get("custom_id"):
        where += f" ({error['custom_id']})"
    return f"{where}: {error.get('field', '?')} {error.get('code', '?')} {error.get('message', '')}".rstrip()


# ------------------------------------------------------------------------------------------- items
ImageSource = str | os.PathLike[str] | bytes


@dataclass
class BatchItem:
    """One item of a batch.

    Attributes:
        prompt: the user's question to the VLM.
        image: a file path or the encoded image bytes; None for a text-only job.
        custom_id: your id for the item, echoed in results (unique within the batch).
        params: ETA parameters for this item (tau_pre, tau_post, policy, seed, max_new_tokens, ...).
        image_url: the image by reference instead (an https URL the server fetches, or a data: URL).
        preset: a stored preset, `name` or `name@version` (the item's params win over it).
    """

    prompt: str
    image: ImageSource | None = None
    custom_id: str | None = None
    params: dict[str, Any] | None = None
    image_url: str | None = None
    preset: str | None = None

    @classmethod
    def coerce(cls, value: BatchItem | Mapping[str, Any]) -> BatchItem:
        """A `BatchItem` from itself or a mapping with the same keys (`image_base64` is accepted too)."""
        if isinstance(value, BatchItem):
            return value
        unknown = set(value) - {"prompt", "image", "image_base64", "image_url", "custom_id", "params", "preset"}
        if unknown:
            raise ValueError(f"unknown item field(s): {', '.join(sorted(unknown))}")
        image = value.get("image")
        if value.get("image_base64") is not None:
            if image is not None:
                raise ValueError("give either image or image_base64, not both")
            image = _decode_base64(str(value["image_base64"]))
        if value.get("image_url") is not None and image is not None:
            raise ValueError("give the image once: image (or image_base64) or image_url, not both")
        return cls(prompt=value.get("prompt"), image=image, custom_id=value.get("custom_id"),  # type: ignore[arg-type]
                   params=value.get("params"), image_url=value.get("image_url"), preset=value.get("preset"))


def _decode_base64(value: str) -> bytes:
    if value.startswith("data:"):
        value = value.partition(",")[2]
    return base64.b64decode("".join(value.split()), validate=True)


def _read_image(image: ImageSource) -> tuple[bytes, str]:
    """The bytes of an item's image and a file-name suffix for the upload."""
    if isinstance(image, bytes):
        return image, ""
    path = Path(image)
    return path.read_bytes(), path.suffix.lower()


@dataclass
class _EncodedBody:
    """A request body built once, so every retry sends the very same bytes."""

    content: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def encode_batch(items: Iterable[BatchItem | Mapping[str, Any]], *, params: Mapping[str, Any] | None = None,
                 callback_url: str | None = None, preset: str | None = None) -> _EncodedBody:
    """The multipart body of a batch: a JSONL manifest plus each distinct image once (named by its hash)."""
    lines: list[str] = []
    files: dict[str, bytes] = {}
    for item in map(BatchItem.coerce, items):
        line: dict[str, Any] = {"custom_id": item.custom_id, "prompt": item.prompt}
        if item.params:
            line["params"] = item.params
        if item.preset is not None:
            line["preset"] = item.preset
        if item.image_url is not None:
            line["image_url"] = item.image_url
        if item.image is not None:
            image, suffix = _read_image(item.image)
            name = hashlib.sha256(image).hexdigest()[:32] + suffix
            files.setdefault(name, image)
            line["image"] = name
        lines.append(json.dumps(line, ensure_ascii=False))
    manifest = ("\n".join(lines) + "\n").encode()
    upload: list[tuple[str, tuple[str, BinaryIO, str]]] = [
        ("manifest", ("manifest.jsonl", io.BytesIO(manifest), "application/x-ndjson"))]
    upload += [("files", (name, io.BytesIO(image), "application/octet-stream")) for name, image in files.items()]
    fields: dict[str, str] = {}
    if params:
        fields["params"] = json.dumps(params)
    if callback_url:
        fields["callback_url"] = callback_url
    if preset:
        fields["preset"] = preset
    request = httpx.Request("POST", "http://eta.invalid/", data=fields, files=upload)
    return _EncodedBody(request.read(), request.headers["Content-Type"])


# ------------------------------------------------------------------------------------------ client
@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter: attempt n sleeps uniform(0, min(cap, base * 2**n)).

    Attributes:
        max_attempts: tries of one request in all (the first included).
        backoff_base_s: the first backoff ceiling, in seconds.
        backoff_max_s: the largest backoff ceiling (a server's Retry-After is honoured up to this too).
    """

    max_attempts: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)
        jittered = random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography
        if retry_after is not None:
            return min(self.backoff_max_s, max(retry_after, jittered))
        return jittered


class ETAClient:
    """Client of one ETA server.

    Args:
        base_url: the server, e.g. `https://eta.example.com` (default `$ETA_URL`, else http://127.0.0.1:8000).
        api_key: an API key (default `$ETA_API_KEY`); sent as `Authorization: Bearer <key>`.
        timeout: seconds per request (connect, read, write each).
        retry: how often and how long to retry.
        progress: show progress bars on stderr; None shows them only when stderr is a terminal.
        transport: an httpx transport (tests).
        sleep: the sleeping function used between retries and polls (tests).
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0,
                 retry: RetryPolicy | None = None, progress: bool | None = None,
                 transport: httpx.BaseTransport | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = (base_url or os.environ.get("ETA_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("ETA_API_KEY")
        self.retry = retry or RetryPolicy()
        self.progress = progress
        self._sleep = sleep
        headers = {"User-Agent": "eta-client/1", "Accept": "application/json, application/problem+json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    @classmethod
    def from_env(cls, **kwargs: Any) -> ETAClient:
        """A client for `$ETA_URL` with `$ETA_API_KEY`."""
        return cls(os.environ.get("ETA_URL"), os.environ.get("ETA_API_KEY"), **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ETAClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------- batches and jobs
    def submit_batch(self, items: Iterable[BatchItem | Mapping[str, Any]], idempotency_key: str | None = None, *,
                     params: Mapping[str, Any] | None = None, callback_url: str | None = None,
                     preset: str | None = None) -> dict[str, Any]:
        """Submit a batch (a JSONL manifest plus the images, uploaded with a progress bar).

        Args:
            items: `BatchItem`s or mappings with the same keys.
            idempotency_key: identifies this submission; a fresh UUID when None. Submitting again with the same
                key and the same items returns the batch made the first time (the response then has
                `submission.dispatch == "replayed"`); with other items the API answers 409
                `idempotency_key_reused`.
            params: ETA parameters for every item (an item's own params win).
            callback_url: the server POSTs a signed summary there when the batch ends.
            preset: a stored preset (`name` or `name@version`) for every item that names none; batch and item
                params win over it.
        Returns:
            The batch document (`id`, `status`, `total`, `counts`, `idempotency_key`, ...).
        Raises:
            ETAAPIError: e.g. `batch_invalid` (422; `errors` names every bad item by its `index` in `items`),
                `idempotency_key_reused` (409), `payload_too_large` (413).
            ETAConnectionError: the server stayed unreachable through every retry.
            OSError: an image file could not be read.
        """
        key = idempotency_key or str(uuid.uuid4())
        body = encode_batch(items, params=params, callback_url=callback_url, preset=preset)
        logger.info("submitting a batch of %d bytes with Idempotency-Key %s", len(body.content), key)
        try:
            response = self._request("POST", "/v1/batches", body=body, headers={"Idempotency-Key": key},
                                     idempotent=True, upload_progress=True)
        except ETAAPIError as exc:
            # The manifest is ours, one line per item: name the caller's items, not our manifest's lines.
            for error in exc.errors:
                if "line" in error and "index" not in error:
                    error["index"] = error.pop("line") - 1
            if exc.errors:
                exc.args = (exc._message(),)
            raise
        return _json(response)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        """The batch with its job counts per status and its progress."""
        return _json(self._request("GET", f"/v1/batches/{batch_id}"))

    def get_job(self, job_id: str) -> dict[str, Any]:
        """One job with its status, scores and answer."""
        return _json(self._request("GET", f"/v1/jobs/{job_id}"))

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel the batch's jobs that have not ended (409 `batch_not_cancellable` once it ended)."""
        return _json(self._request("POST", f"/v1/batches/{batch_id}/cancel", idempotent=False))

    def wait(self, batch_id: str, *, timeout: float | None = None, poll_initial_s: float = 0.5,
             poll_max_s: float = 15.0) -> dict[str, Any]:
        """Poll the batch until it ends, with a progress bar of finished jobs.

        The poll interval starts at `poll_initial_s`, grows by half each time nothing finished, up to
        `poll_max_s`, and drops back when jobs finish.

        Returns:
            The final batch document (status `completed`, `failed` or `cancelled`).
        Raises:
            ETAWaitTimeout: `timeout` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = poll_initial_s
        batch = self.get_batch(batch_id)
        last = batch["finished"]
        with tqdm(total=batch["total"], initial=last, desc=f"batch {batch_id[:8]}", unit="job",
                  disable=self._no_bar(), dynamic_ncols=True) as bar:
            while batch["status"] not in TERMINAL_BATCH_STATUSES:
                if deadline is not None and time.monotonic() + interval > deadline:
                    raise ETAWaitTimeout(f"batch {batch_id} still {batch['status']} after {timeout} s", batch)
                self._sleep(interval)
                batch = self.get_batch(batch_id)
                bar.update(batch["finished"] - last)
                bar.set_postfix_str(_counts_text(batch["counts"]), refresh=False)
                interval = poll_initial_s if batch["finished"] > last else min(poll_max_s, interval * 1.5)
                last = batch["finished"]
        return batch

    def iter_results(self, batch_id: str, *, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every job of the batch in submission order, with its result once it has one (pages fetched lazily)."""
        yield from self._pages(f"/v1/batches/{batch_id}/results", {"limit": page_size})

    # -------------------------------------------------------------------------------------- audit
    def flagged(self, *, page_size: int = 100, **filters: Any) -> Iterator[dict[str, Any]]:
        """Flagged jobs of your tenant, newest first, following `next_cursor` (any key; `vanilla_response` only for
        review and admin keys).

        Args:
            filters: query parameters of `GET /v1/audit/flagged` (see the OpenAPI document), e.g. `batch_id`,
                `aligned=True`, `reviewed=False`, `created_from="2025-01-01T00:00:00Z"`, `s_pre_min=0.2`.
                None values are left out; booleans are sent as `true` / `false`.
        """
        yield from self._pages("/v1/audit/flagged", {"limit": page_size, **filters})

    def export(self, format: str = "jsonl", *, out: IO[bytes] | None = None,  # noqa: A002 - the API's name
               **filters: Any) -> Iterator[bytes] | int:
        """Stream `GET /v1/audit/export` (`format` jsonl or csv) with the same filters as `flagged`.

        Returns:
            With `out`: the number of bytes written to it. Without: an iterator of the body's chunks.
        """
        query = _query({"format": format, **filters})
        if out is None:
            return self._stream("/v1/audit/export", query)
        written = 0
        for chunk in self._stream("/v1/audit/export", query):
            out.write(chunk)
            written += len(chunk)
        return written

    def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document."""
        return _json(self._request("GET", "/v1/openapi.json"))

    # ----------------------------------------------------------------------------------- plumbing
    def _no_bar(self) -> bool | None:
        # tqdm: disable=None means "only when the output is a terminal".
        return None if self.progress is None else not self.progress

    def _pages(self, path: str, query: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        params = _query(query)
        while True:
            page = _json(self._request("GET", path, params=params))
            yield from page.get("data", [])
            cursor = page.get("next_cursor")
            if not cursor:
                return
            params = {**params, "cursor": cursor}

    def _stream(self, path: str, params: Mapping[str, str]) -> Iterator[bytes]:
        # Only opening the stream is retried: once bytes have been handed out, a retry would repeat them.
        for attempt in range(self.retry.max_attempts):
            handed_out = False
            try:
                with self._http.stream("GET", path, params=params) as response:
                    if response.status_code >= 400:
                        response.read()
                        if self._should_retry_status(response, attempt, idempotent=True):
                            continue
                        raise ETAAPIError.from_response(response)
                    for chunk in response.iter_bytes():
                        handed_out = True
                        yield chunk
                    return
            except httpx.TransportError as exc:
                if handed_out:
                    raise ETAConnectionError(f"GET {self.base_url}{path}: the stream broke off after part of it "
                                             f"was delivered ({type(exc).__name__}: {exc})") from exc
                self._after_transport_error(exc, "GET", path, attempt, idempotent=True)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                 body: _EncodedBody | None = None, headers: Mapping[str, str] | None = None,
                 idempotent: bool | None = None, upload_progress: bool = False) -> httpx.Response:
        """Send with retries. `idempotent` defaults to True for GET; a POST that may not be repeated is False."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        request_headers = dict(headers or {})
        if body is not None:
            request_headers["Content-Type"] = body.content_type
            request_headers["Content-Length"] = str(len(body.content))
        for attempt in range(self.retry.max_attempts):
            content: Iterator[bytes] | None = None
            bar = None
            if body is not None:
                bar = tqdm(total=len(body.content), desc="upload", unit="B", unit_scale=True, unit_divisor=1024,
                           disable=self._no_bar() if upload_progress else True, dynamic_ncols=True)
                content = _chunks(body.content, bar)
            try:
                response = self._http.request(method, path, params=params, content=content, headers=request_headers)
            except httpx.TransportError as exc:
                self._after_transport_error(exc, method, path, attempt, idempotent=idempotent)
                continue
            finally:
                if bar is not None:
                    bar.close()
            if response.status_code < 400:
                return response
            if self._should_retry_status(response, attempt, idempotent=idempotent):
                continue
            raise ETAAPIError.from_response(response)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _should_retry_status(self, response: httpx.Response, attempt: int, *, idempotent: bool) -> bool:
        status = response.status_code
        # 429: the request was refused before it ran; 5xx from a proxy or a restarting server may have run it.
        retryable = status == 429 or (idempotent and (status in _RETRY_STATUSES or status == 500))
        if not retryable or attempt + 1 >= self.retry.max_attempts:
            return False
        delay = self.retry.delay(attempt, _retry_after(response))
        logger.warning("%s %s answered %d; retry %d/%d in %.1f s", response.request.method, response.request.url.path,
                       status, attempt + 1, self.retry.max_attempts - 1, delay)
        self._sleep(delay)
        return True

    def _after_transport_error(self, exc: httpx.TransportError, method: str, path: str, attempt: int, *,
                               idempotent: bool) -> None:
        """Sleep before the next try, or raise `ETAConnectionError` when no retry is allowed or left."""
        # A request that never reached the server can always be sent again.
        never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        if (not idempotent and not never_sent) or attempt + 1 >= self.retry.max_attempts:
            raise ETAConnectionError(f"{method} {self.base_url}{path} failed after {attempt + 1} attempt(s): "
                                     f"{type(exc).__name__}: {exc or 'connection lost'}") from exc
        delay = self.retry.delay(attempt)
        logger.warning("%s %s: %s (%s); retry %d/%d in %.1f s", method, path, type(exc).__name__, exc,
                       attempt + 1, self.retry.max_attempts - 1, delay)
        self._sleep(delay)


def _chunks(content: bytes, bar: tqdm[Any]) -> Iterator[bytes]:
    for start in range(0, len(content), _UPLOAD_CHUNK):
        chunk = content[start:start + _UPLOAD_CHUNK]
        yield chunk
        bar.update(len(chunk))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _query(values: Mapping[str, Any]) -> dict[str, str]:
    query = {}
    for name, value in values.items():
        if value is None:
            continue
        query[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return query


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ETAClientError(f"{response.request.method} {response.request.url} answered {response.status_code} "
                             f"with a body that is not JSON") from exc


def _counts_text(counts: Mapping[str, int]) -> str:
    return " ".join(f"{status}={n}" for status, n in counts.items() if n)
