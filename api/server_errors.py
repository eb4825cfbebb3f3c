"""gunicorn's own refusals as problem documents.

gunicorn refuses some requests before the application sees them: a malformed request line or header (400),
a request line over `limit_request_line` (414), too many or too large header fields (431), a transfer
coding it does not implement (501). It answers those with an HTML page. `eta serve` runs this worker
class instead of plain `gthread`, so that these answers are `application/problem+json` with a stable
`code`, like every other error of the API. Everything else (server errors, TLS) stays gunicorn's own.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from gunicorn import util
from gunicorn.http import errors
from gunicorn.workers.gthread import ThreadWorker

logger = logging.getLogger(__name__)


def _classes(*names: str) -> tuple[type[BaseException], ...]:
    # Some of these exceptions exist only in newer gunicorn releases.
    return tuple(getattr(errors, name) for name in names if hasattr(errors, name))


# (exception classes, status, reason phrase, problem code), the first match wins.
_REFUSALS: tuple[tuple[tuple[type[BaseException], ...], int, str, str], ...] = (
    (_classes("InvalidResponseHeader", "InvalidResponseHeaderName"), 0, "", ""),  # the application's fault
    (_classes("LimitRequestLine"), 414, "URI Too Long", "uri_too_long"),
    (_classes("LimitRequestHeaders"), 431, "Request Header Fields Too Large", "header_fields_too_large"),
    (_classes("UnsupportedTransferCoding"), 501, "Not Implemented", "unsupported_transfer_coding"),
    (_classes("ExpectationFailed"), 417, "Expectation Failed", "expectation_failed"),
    (_classes("ForbiddenProxyRequest"), 403, "Forbidden", "forbidden"),
    (_classes("InvalidRequestLine", "InvalidRequestMethod", "InvalidHTTPVersion", "InvalidHeader",
              "InvalidHeaderName", "ObsoleteFolding", "InvalidProxyLine", "InvalidProxyHeader",
              "InvalidSchemeHeaders", "InvalidChunkSize", "ChunkMissingTerminator", "InvalidChunkExtension"),
     400, "Bad Request", "bad_request"),
)
_MAX_DETAIL_CHARS = 200


def refusal_for(exc: BaseException) -> tuple[int, str, str] | None:
    """(status, reason, code) of gunicorn's refusal of a request for `exc`, or None when it is no refusal of
    the client's request (gunicorn's own handling applies)."""
    for classes, status, reason, code in _REFUSALS:
        if classes and isinstance(exc, classes):
            return (status, reason, code) if status else None
    return None


def problem_answer(status: int, reason: str, code: str, detail: str) -> bytes:
    """A complete HTTP/1.1 answer holding a problem document; the connection is closed after it."""
    body = json.dumps({"type": f"urn:eta:problem:{code}", "title": reason, "status": status, "code": code,
                       "detail": detail[:_MAX_DETAIL_CHARS]}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class ProblemThreadWorker(ThreadWorker):
    """gunicorn's `gthread` worker, answering its own refusals with problem documents."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        refusal = refusal_for(exc)
        if refusal is None:
            super().handle_error(req, client, addr, exc)
            return
        status, reason, code = refusal
        address = addr[0] if addr else ""
        self.log.warning("Invalid request from ip=%s: %s", address, exc)
        try:
            util.write_nonblock(client, problem_answer(status, reason, code, str(exc)))
        except Exception:  # noqa: BLE001 - the client may be gone already; nothing more to tell it
            self.log.debug("Failed to send error message.")
