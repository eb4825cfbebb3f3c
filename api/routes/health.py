"""Liveness, readiness and metrics (no authentication)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify

from api.problems import problem_response
from api.state import state
from eta.store import check_schema_current
from eta.store.db import ping

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up."""
    return jsonify(status="ok")


def _check_database() -> str | None:
    try:
        ping(state().engine)
        check_schema_current(state().engine)
    except Exception as exc:  # any failure means not ready; say which
        return str(exc).splitlines()[0]
    return None


def _check_broker() -> str | None:
    try:
        with state().celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreachable'}"
    return None


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Database reachable with the schema at head, and broker reachable."""
    checks: dict[str, Any] = {}
    for name, check in (("database", _check_database), ("broker", _check_broker)):
        problem = check()
        checks[name] = {"ok": problem is None, **({"error": problem} if problem else {})}
    if all(c["ok"] for c in checks.values()):
        return jsonify(status="ready", checks=checks), 200
    failing = ", ".join(name for name, c in checks.items() if not c["ok"])
    return problem_response(503, "not_ready", "Service Unavailable", f"not ready: {failing}", checks=checks), 503


@bp.get("/v1/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document of this API, with this server's limits."""
    from flask import current_app

    doc = current_app.extensions.get("eta_openapi")
    if doc is None:
        from api.openapi import document
        from api.spec import spec

        doc = current_app.extensions["eta_openapi"] = document(spec.spec, state().settings)
    return jsonify(doc)


@bp.get("/metrics")
def metrics() -> Response:
    return state().metrics.render()
