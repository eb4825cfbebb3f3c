"""Conditional GETs of job and batch documents: `ETag` on every answer, `304 Not Modified` when the client's
`If-None-Match` names the current version.

A polling client that sends back the tag it got pays for one small indexed query (the document's version)
and an empty answer until the document changes; the full document (result, trace, fingerprint) is read and
serialised only when it did.
"""

from __future__ import annotations

import hashlib
from typing import Any

from flask import Response, request


def make_etag(*parts: Any) -> str:
    """A strong entity tag from the parts that determine a document (a version, the caller's view of it)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()
    return f'"{digest}"'


def client_has(etag: str) -> bool:
    """Whether the request's If-None-Match names `etag` (or `*`)."""
    header = request.if_none_match
    return bool(header) and (header.star_tag or header.contains(etag.strip('"')))


def not_modified(etag: str) -> Response:
    response = Response(status=304)
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "private, no-cache"
    return response


def tagged(doc: dict[str, Any], etag: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    return doc, 200, {"ETag": etag, "Cache-Control": "private, no-cache"}
