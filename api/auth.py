"""API keys: `Authorization: Bearer <key>`; roles submit, review and admin; one tenant per key."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, request

from api.principal import MANAGE, READ, REVIEW, SUBMIT, KeyCache, Principal  # noqa: F401 - re-exported
from api.problems import Problem
from api.state import state
from eta.store import repository as repo

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

def _unauthorized(detail: str) -> Problem:
    problem = Problem(401, "unauthorized", "Unauthorized", detail)
    problem.headers["WWW-Authenticate"] = 'Bearer realm="eta"'
    return problem


def authenticate() -> Principal:
    """The request's key (401 when there is none or it is not live; 429 once an address failed too often)."""
    limits = state().rate_limits
    address = request.remote_addr or "unknown"
    limits.check_address(address)
    try:
        principal = _authenticate()
    except Problem:
        limits.failed_authentication(address)
        raise
    limits.check_key(principal.key_id, principal.role)
    return principal


def _authenticate() -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise _unauthorized("missing Authorization header (expected: Bearer <API key>)")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("the Authorization header must be: Bearer <API key>")
    reading = request.method in ("GET", "HEAD")
    cache = state().key_cache
    digest = repo.hash_api_key(token.strip())
    principal = cache.get(digest) if reading else None
    if principal is None:
        principal = _look_up(digest, keep_session=reading)
        cache.put(digest, principal)
    g.principal = principal
    return principal


def _look_up(key_hash: str, *, keep_session: bool) -> Principal:
    # The request's read session: a GET then looks up its key and reads its document on one connection. A
    # request with a body gives the connection back before the view reads the body: no connection or
    # transaction (on SQLite, no lock) is held while a slow client uploads.
    with state().read() as session:
        try:
            key = repo.live_key(session=session, key_hash=key_hash)
            if key is None:
                raise _unauthorized("the API key is not valid or has been revoked")
            return Principal(key.id, key.tenant_id, str(key.role.value), key.prefix)
        finally:
            if not keep_session:
                session.close()


def requires(permission: str) -> Callable[[F], F]:
    """Authenticate the request and check that the key's role grants `permission` (else 401 / 403)."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = authenticate()
            if not principal.can(permission):
                raise Problem(403, "forbidden", "Forbidden",
                              f"a key with role {principal.role!r} may not {permission}")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def current_principal() -> Principal:
    return g.principal
