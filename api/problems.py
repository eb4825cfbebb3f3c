"""RFC 9457 problem details: every 4xx/5xx of the API is `application/problem+json` with a stable `code`."""

from __future__ import annotations

import logging
from typing import Any, cast

from flask import Flask, Response, json, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"

# Stable codes for the errors Flask and Werkzeug raise themselves.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document.

    Args:
        status: HTTP status.
        code: stable machine-readable code (snake_case); clients branch on it.
        title: short human summary of the kind of problem.
        detail: what exactly was wrong with this request.
        extra: further members (e.g. `errors`, a list naming each bad item).
    """

    def __init__(self, status: int, code: str, title: str, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or title)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


def problem_response(status: int, code: str, title: str, detail: str | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"type": f"urn:eta:problem:{code}", "title": title, "status": status, "code": code}
    if detail:
        body["detail"] = detail
    body["instance"] = request.path
    body.update(extra)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def install_problem_handlers(app: Flask) -> None:
    """Turn `Problem`, every Werkzeug HTTP error and unexpected exceptions into problem documents."""

    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return problem_response(exc.status, exc.code, exc.title, exc.detail, headers=exc.headers, **exc.extra)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        # A response built by an extension (e.g. validation) that is already a problem passes through.
        if exc.response is not None and exc.response.mimetype == PROBLEM_MIMETYPE:
            return cast(Response, exc.response)
        headers = {}
        if status == 405 and exc.get_headers():
            headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        detail = exc.description
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"the request body is larger than the limit of {limit} bytes"
        return problem_response(status, _HTTP_CODES.get(status, f"http_{status}"), exc.name, detail, headers=headers)

    @app.errorhandler(DBAPIError)
    def _database(exc: DBAPIError) -> Response:
        # A lost connection (a database restart, a failover) is the client's to retry; the pool has already
        # dropped the dead connections. Any other database error is a defect: a 500, logged.
        if not exc.connection_invalidated:
            return _unexpected(exc)
        logger.warning("database unreachable on %s %s: %s", request.method, request.path, exc.orig)
        return problem_response(503, "database_unavailable", "Service Unavailable",
                                "the database could not be reached; retry shortly", headers={"Retry-After": "1"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(500, "internal_error", "Internal Server Error",
                                "the server failed to handle this request; it has been logged")
