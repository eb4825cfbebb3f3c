"""Request-level guards: what every route gets before its own validation.

- Bodies: JSON (and multipart/form-data where a route takes uploads) only; anything else is a 415. JSON in
  UTF-8 only (UTF-16/32 or another declared charset: 415); no content coding (`Content-Encoding: gzip`: 415).
- Multipart: a single-valued part sent twice, or two uploaded files of one name, is a 422 naming the part.
- JSON: nesting deeper than `MAX_JSON_DEPTH` is refused as malformed (a deep document would otherwise
  exhaust the parser's recursion, and is never a valid request).
- Strict UTF-8: the query string must be valid UTF-8, and invalid bytes in a multipart or urlencoded text
  field reach the text check (which refuses them) instead of being replaced with U+FFFD (or kept as `%FF`
  text) and stored.
"""

from __future__ import annotations

import codecs
import json
import socket
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl

from flask import Flask, Request, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestTimeout
from werkzeug.formparser import FormDataParser, MultiPartParser

from api.problems import Problem

MAX_JSON_DEPTH = 32
JSON, MULTIPART = "application/json", "multipart/form-data"
# Endpoints that take multipart uploads besides JSON.
_UPLOAD_ENDPOINTS = frozenset({"jobs.submit_job", "batches.submit_batch"})
_STRICT_UTF8 = "eta-strict-utf-8"


def _strict_search(name: str) -> codecs.CodecInfo | None:
    # Werkzeug decodes multipart text with errors="replace", losing what was sent. This codec ignores the
    # errors argument and keeps bad bytes as lone surrogates (surrogateescape): the text check refuses them
    # in every text field, and a binary part sent without a file name can be turned back into its bytes.
    if name.replace("_", "-") != _STRICT_UTF8:
        return None
    return codecs.CodecInfo(name=_STRICT_UTF8, encode=codecs.utf_8_encode,
                            decode=lambda data, errors="strict": codecs.utf_8_decode(data, "surrogateescape", True))


def field_bytes(value: str) -> bytes:
    """The bytes of a multipart field as sent (a binary part that came without a file name)."""
    return value.encode("utf-8", "surrogateescape")


codecs.register(_strict_search)


def json_depth_exceeded(text: str | bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the brackets of a JSON text nest deeper than `limit` (strings are skipped)."""
    data = text.encode() if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def loads_bounded(text: str | bytes, **kwargs: Any) -> Any:
    """json.loads that refuses deep nesting with a ValueError instead of a RecursionError."""
    if json_depth_exceeded(text):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, **kwargs)
    except RecursionError as exc:  # pragma: no cover - the depth check comes first
        raise ValueError("JSON nested too deeply") from exc


def _default(value: Any) -> Any:
    try:
        return DefaultJSONProvider.default(value)
    except TypeError:
        # e.g. an uploaded file inside a validation error report: name its type, never fail the answer.
        return f"<{type(value).__name__}>"


class BoundedJSONProvider(DefaultJSONProvider):
    default = staticmethod(_default)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads_bounded(s, **kwargs)


class _StrictMultiPartParser(MultiPartParser):
    def get_part_charset(self, headers: Headers) -> str:
        return _STRICT_UTF8


class _StrictFormDataParser(FormDataParser):
    def _parse_multipart(self, stream: Any, mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> Any:
        parser = _StrictMultiPartParser(stream_factory=self.stream_factory,
                                        max_form_memory_size=self.max_form_memory_size,
                                        max_form_parts=self.max_form_parts, cls=self.cls)
        boundary = options.get("boundary", "").encode("ascii", "replace")
        if not boundary:
            raise ValueError("Missing boundary")
        form, files = parser.parse(stream, boundary, content_length)
        return stream, form, files

    def _parse_urlencoded(self, stream: Any, mimetype: str, content_length: int | None,
                          options: dict[str, str]) -> Any:
        # Werkzeug leaves an invalid percent-encoded sequence as its literal `%FF` text (and a raw invalid
        # byte fails the whole decode): keep invalid bytes as lone surrogates instead, for the text check.
        text = stream.read().decode("utf-8", "surrogateescape")
        items = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="surrogateescape")
        return stream, self.cls(items), self.cls()


class StrictRequest(Request):
    form_data_parser_class = _StrictFormDataParser


def _check_body_encoding() -> None:
    """No content coding is supported: a gzip (or any other) coded body would be read as if it were plain.
    Nor is a transfer coding but chunked: gunicorn passes a `gzip, chunked` body on still compressed."""
    transfer = [c.strip().lower() for c in request.headers.get("Transfer-Encoding", "").split(",") if c.strip()]
    if unknown := [c for c in transfer if c not in ("chunked", "identity")]:
        raise Problem(501, "unsupported_transfer_coding", "Not Implemented",
                      f"Transfer-Encoding {', '.join(unknown)[:80]} is not supported; send the body plain or chunked")
    codings = [c.strip().lower() for c in request.headers.get("Content-Encoding", "").split(",") if c.strip()]
    unsupported = [c for c in codings if c != "identity"]
    if unsupported:
        problem = Problem(415, "unsupported_content_encoding", "Unsupported Media Type",
                          f"Content-Encoding {', '.join(unsupported)} is not supported; send the body uncompressed")
        problem.headers["Accept-Encoding"] = "identity"
        raise problem


def _check_json_charset() -> None:
    """JSON bodies are UTF-8 (RFC 8259 section 8.1); a UTF-16 or UTF-32 body (which Python's JSON parser
    would quietly decode) or another declared charset is refused."""
    charset = request.mimetype_params.get("charset", "").strip().lower()
    if charset and charset not in ("utf-8", "utf8"):
        raise Problem(415, "unsupported_charset", "Unsupported Media Type",
                      f"JSON bodies must be UTF-8, not {charset[:40]!r}")
    encoding = json.detect_encoding(request.get_data()[:4])
    if encoding not in ("utf-8", "utf-8-sig"):
        raise Problem(415, "unsupported_charset", "Unsupported Media Type",
                      f"the JSON body is {encoding.upper()}; JSON bodies must be UTF-8")


# Multipart parts that may come more than once, per endpoint; any other part sent twice is refused (the second
# would otherwise be dropped without a word).
_REPEATABLE_PARTS = {"batches.submit_batch": frozenset({"files"})}


def refuse_duplicate_parts() -> None:
    """422 naming the part when a multipart form repeats a single-valued part, or uploads two files of one
    name (the manifest names its images by file name). Called after authentication, by the routes' validation
    hook: parsing a form is work an anonymous client should not get."""
    if request.mimetype != MULTIPART:
        return
    repeatable = _REPEATABLE_PARTS.get(request.endpoint or "", frozenset())
    counts = Counter(name for name, _ in request.form.items(multi=True))
    counts.update(name for name, _ in request.files.items(multi=True))
    errors = [{"field": name, "code": "duplicate_part",
               "message": f"the form has {count} parts named {name!r}; send it once"}
              for name, count in counts.items() if count > 1 and name not in repeatable]
    for name in sorted(repeatable):
        names = Counter(upload.filename for upload in request.files.getlist(name) if upload.filename)
        errors += [{"field": name, "code": "duplicate_part",
                    "message": f"{count} `{name}` parts are named {filename!r}; file names must be unique"}
                   for filename, count in names.items() if count > 1]
    if errors:
        raise Problem(422, "duplicate_part", "Request validation failed",
                      "; ".join(e["message"] for e in errors[:5]), errors=errors)


def _check_request() -> None:
    try:
        parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise Problem(400, "invalid_utf8", "Bad Request", "the query string is not valid UTF-8") from exc
    has_body = bool(request.content_length) or "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not has_body:
        return
    _check_body_encoding()
    if not request.path.startswith("/v1/") or request.method not in ("POST", "PUT", "PATCH"):
        return
    allowed = (JSON, MULTIPART) if request.endpoint in _UPLOAD_ENDPOINTS else (JSON,)
    if request.mimetype not in allowed:
        raise Problem(415, "unsupported_media_type", "Unsupported Media Type",
                      f"send {' or '.join(allowed)}, not {request.mimetype or 'no content type'}")
    if request.mimetype == JSON:
        _check_json_charset()
        body = request.get_json(silent=True)
        if body is None and request.get_data().strip() != b"null":
            raise Problem(400, "invalid_json", "Malformed JSON",
                          f"the request body is not valid JSON (or nested deeper than {MAX_JSON_DEPTH} levels)")
        if not isinstance(body, dict):
            message = "the body must be a JSON object"
            raise Problem(422, "validation_failed", "Request validation failed", message,
                          errors=[{"field": "", "code": "model_type", "message": message}])


# Seconds one read of the body may wait for the client, under gunicorn (which hands the socket over).
SOCKET_READ_TIMEOUT_S = 30.0


class _DeadlineInput:
    """`wsgi.input` with a deadline for the whole body: a client that trickles its upload gets 408 instead
    of holding a server thread for as long as it likes."""

    def __init__(self, stream: Any, deadline: float, timeout_s: float) -> None:
        self._stream, self._deadline, self._timeout_s = stream, deadline, timeout_s

    def _late(self) -> RequestTimeout:
        return RequestTimeout(f"the request body did not arrive within {self._timeout_s:g} s")

    def _guarded(self, read: Any, *args: Any) -> Any:
        if time.monotonic() > self._deadline:
            raise self._late()
        try:
            data = read(*args)
        except OSError as exc:  # the read side was cut at the deadline, or one read waited too long
            if isinstance(exc, TimeoutError) or time.monotonic() >= self._deadline:
                raise self._late() from exc
            raise
        if not data and time.monotonic() >= self._deadline:
            raise self._late()  # the cut read side reads as end of file: the body is late, not short
        return data

    def read(self, *args: Any) -> bytes:
        return self._guarded(self._stream.read, *args)

    def readline(self, *args: Any) -> bytes:
        return self._guarded(self._stream.readline, *args)

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def _cut_reading(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RD)  # a blocked read returns at once; the answer can still be written
    except OSError:
        pass


class BodyDeadline:
    """WSGI middleware bounding how long a request body may take. Under gunicorn (whose socket is in the
    environ) the read side of the connection is cut at the deadline, so even one long blocking read ends;
    every read also checks the deadline."""

    def __init__(self, app: Any, timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        # The deadline is taken before the timer starts, so the cut never comes before the deadline: a read
        # that the cut ends finds the deadline passed and answers 408.
        deadline = time.monotonic() + self.timeout_s
        sock = environ.get("gunicorn.socket")
        timer = None
        if sock is not None and (environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING")):
            sock.settimeout(SOCKET_READ_TIMEOUT_S)
            timer = threading.Timer(self.timeout_s, _cut_reading, args=(sock,))
            timer.daemon = True
            timer.start()
        environ["wsgi.input"] = _DeadlineInput(environ["wsgi.input"], deadline, self.timeout_s)
        try:
            return self.app(environ, start_response)
        finally:
            if timer is not None:
                timer.cancel()


def install_guards(app: Flask, *, body_timeout_s: float = 300.0) -> None:
    app.request_class = StrictRequest
    app.json = BoundedJSONProvider(app)
    app.before_request(_check_request)
    app.wsgi_app = BodyDeadline(app.wsgi_app, body_timeout_s)  # type: ignore[method-assign]
