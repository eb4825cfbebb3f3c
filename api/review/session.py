"""Sign-in to the review page with an API key, and CSRF protection of its forms.

The key is checked once at sign-in and never stored. Sign-in starts a server-side session (a
`review_sessions` row holding only the sha256 of a random token); the signed cookie holds that token and a
CSRF token. Every request looks the session up with its key, so signing out, the session's expiry
(`ETA_REVIEW_SESSION_HOURS`) or revoking the key (or its losing the review role) ends it at the next click,
whatever copy of the cookie is still around. The cookie is HttpOnly, SameSite=Lax, scoped to /review,
Secure in production.

CSRF: one random token per session, put in a hidden field of every form and compared (in constant time)
on every POST, the sign-in form included (no signing someone into an attacker's session).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, abort, g, request, session

from api.state import state
from eta.store import repository as repo
from eta.store.models import ApiKey, ApiKeyRole
from eta.store.repository.tenants import create_review_session, end_review_session, live_review_session_key

logger = logging.getLogger(__name__)

REVIEWER_ROLES = frozenset({ApiKeyRole.REVIEW, ApiKeyRole.ADMIN})
CSRF_FIELD = "csrf_token"
_SID, _CSRF, _LEGACY_KEY_ID = "sid", "csrf", "key_id"


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
    # Compared as bytes: compare_digest refuses str holding non-ASCII (a forged `csrf_token=%C3%A9`).
    sent_bytes = sent.encode("utf-8", "surrogateescape")
    if not expected or not hmac.compare_digest(str(expected).encode("utf-8", "surrogateescape"), sent_bytes):
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
    lifetime = timedelta(hours=state().settings.api.review_session_hours)
    with state().transaction() as db:
        token = create_review_session(session=db, key_id=key.id, lifetime=lifetime)
    session.clear()
    session.permanent = True
    session[_SID] = token
    session[_CSRF] = secrets.token_urlsafe(32)
    logger.info("review page: key %s of tenant %s signed in", key.prefix, key.tenant_id)


def sign_out() -> None:
    """End the session on the server (a copy of the cookie is worthless from now on) and clear the cookie."""
    token = session.get(_SID)
    if isinstance(token, str):
        with state().transaction() as db:
            end_review_session(session=db, token=token)
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
    token = session.get(_SID)
    if not isinstance(token, str):
        if session.get(_LEGACY_KEY_ID) is not None:
            session.clear()  # a cookie from before server-side sessions: sign in again
        return None
    db = state().session()
    key = live_review_session_key(session=db, token=token)
    if key is None or key.role not in REVIEWER_ROLES:
        logger.info("review page: a session ended (signed out, expired, key revoked or no longer a reviewer)")
        session.clear()
        return None
    tenant = repo.get_tenant(session=db, tenant_id=key.tenant_id)
    return Reviewer(key_id=key.id, tenant_id=key.tenant_id, tenant_name=tenant.name if tenant else "?",
                    prefix=key.prefix, role=key.role.value)
