"""Sign-in to the review page with an API key, and CSRF protection of its forms.

The key is checked once at sign-in and never stored: the signed session cookie holds the key's id, the
sign-in time and a CSRF token. Every request re-reads the key by id, so revoking it (or its tenant losing
it) ends the session at the next click. The cookie is HttpOnly, SameSite=Lax, scoped to /review, Secure in
production, and expires after `eta_review_session_hours`.

CSRF: one random token per session, put in a hidden field of every form and compared (in constant time)
on every POST, the sign-in form included (no signing someone into an attacker's session).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, abort, g, request, session

from api.state import state
from eta.store import repository as repo
from eta.store.models import ApiKey, ApiKeyRole

logger = logging.getLogger(__name__)

REVIEWER_ROLES = frozenset({ApiKeyRole.REVIEW, ApiKeyRole.ADMIN})
CSRF_FIELD = "csrf_token"
_KEY_ID, _SIGNED_IN_AT, _CSRF = "key_id", "signed_in_at", "csrf"


@dataclass(frozen=True)
class Reviewer:
    key_id: uuid.UUID
    tenant_id: uuid.UUID
    tenant_name: str
    prefix: str
    role: str


def configure_cookie(app: Flask) -> None:
    """Session cookie settings for the review page (the JSON API uses bearer keys, never this cookie)."""
    settings = app.extensions["eta"].settings
    if not settings.secret_key:
        logger.warning("SECRET_KEY is not set: review-page sign-ins last only as long as this process, and do not "
                       "carry across several API processes")
    app.config.update(
        SESSION_COOKIE_NAME="eta_review",
        SESSION_COOKIE_PATH="/review",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.env == "production",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.api.review_session_hours),
    )


def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    token = session.get(_CSRF)
    if not token:
        token = session[_CSRF] = secrets.token_urlsafe(32)
    return str(token)


def check_csrf() -> None:
    """Refuse a POST whose form does not carry this session's token (400)."""
    expected = session.get(_CSRF)
    sent = request.form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(str(expected), sent):
        logger.warning("review page: CSRF check failed on %s", request.path)
        abort(400, description="The form has expired or did not come from this site. Reload the page and retry.")


@dataclass(frozen=True)
class KeyRefusal:
    """Why a key may not sign in: the HTTP status of the answer and the message for the sign-in form."""

    status: int
    message: str


def check_key(token: str) -> tuple[ApiKey | None, KeyRefusal | None]:
    """The key for `token` if it may review, else why not (401: unknown or revoked; 403: not a reviewer's)."""
    key = repo.authenticate_api_key(session=state().session(), token=token.strip())
    if key is None:
        return None, KeyRefusal(401, "This API key is not valid or has been revoked.")
    if key.role not in REVIEWER_ROLES:
        return None, KeyRefusal(403, f"A {key.role.value} key cannot review: sign in with a review or admin key.")
    return key, None


def sign_in(key: ApiKey) -> None:
    # A fresh session: nothing from before sign-in (including its CSRF token) carries over.
    session.clear()
    session.permanent = True
    session[_KEY_ID] = str(key.id)
    session[_SIGNED_IN_AT] = int(time.time())
    session[_CSRF] = secrets.token_urlsafe(32)
    logger.info("review page: key %s of tenant %s signed in", key.prefix, key.tenant_id)


def sign_out() -> None:
    session.clear()


def current_reviewer() -> Reviewer | None:
    """The signed-in reviewer, re-checked against the database; None (and the session cleared) when the
    session expired, or the key was revoked or lost its review right."""
    if "reviewer" in g:
        cached: Reviewer | None = g.reviewer
        return cached
    reviewer = _load_reviewer()
    g.reviewer = reviewer
    return reviewer


def _load_reviewer() -> Reviewer | None:
    raw_id, signed_in_at = session.get(_KEY_ID), session.get(_SIGNED_IN_AT)
    if raw_id is None:
        return None
    lifetime = state().settings.api.review_session_hours * 3600
    try:
        key_id = uuid.UUID(str(raw_id))
        expired = time.time() - float(signed_in_at or 0) > lifetime
    except (TypeError, ValueError):
        expired = True
    if expired:
        session.clear()
        return None
    db = state().session()
    key = repo.get_live_api_key(session=db, key_id=key_id)
    if key is None or key.role not in REVIEWER_ROLES:
        logger.info("review page: session of key %s ended (revoked or no longer a reviewer)", key_id)
        session.clear()
        return None
    tenant = repo.get_tenant(session=db, tenant_id=key.tenant_id)
    return Reviewer(key_id=key.id, tenant_id=key.tenant_id, tenant_name=tenant.name if tenant else "?",
                    prefix=key.prefix, role=key.role.value)
