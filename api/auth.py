"""API keys: `Authorization: Bearer <key>`; roles submit, review and admin; one tenant per key."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from flask import g, request

from api.problems import Problem
from api.state import state
from eta.store import repository as repo

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# What each role may do. Admin may do everything.
SUBMIT, READ, REVIEW, MANAGE = "submit", "read", "review", "manage"
_ROLE_GRANTS = {
    "submit": {SUBMIT, READ},
    "review": {READ, REVIEW},
    "admin": {SUBMIT, READ, REVIEW, MANAGE},
}


@dataclass(frozen=True)
class Principal:
    key_id: uuid.UUID
    tenant_id: uuid.UUID
    role: str
    prefix: str

    def can(self, permission: str) -> bool:
        return permission in _ROLE_GRANTS.get(self.role, set())


def _unauthorized(detail: str) -> Problem:
    problem = Problem(401, "unauthorized", "Unauthorized", detail)
    problem.headers["WWW-Authenticate"] = 'Bearer realm="eta"'
    return problem


def authenticate() -> Principal:
    """The request's key (401 when there is none or it is not live; 429 once an address failed too often)."""
    limits = state().rate_limits()
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
    # A session of its own, closed before the view reads the body: no connection or transaction (on SQLite,
    # no lock) is held while a slow client uploads.
    with state().read_sessions() as session:
        key = repo.authenticate_api_key(session=session, token=token.strip())
        if key is None:
            raise _unauthorized("the API key is not valid or has been revoked")
        principal = Principal(key.id, key.tenant_id, str(key.role.value), key.prefix)
    g.principal = principal
    return principal


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
