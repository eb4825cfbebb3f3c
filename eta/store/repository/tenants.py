"""Tenants and their API keys (only a hash of each key is stored)."""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from eta.store.models import ApiKey, ApiKeyRole, ReviewSession, Tenant, utcnow
from eta.store.sql import affected_rows

logger = logging.getLogger(__name__)

API_KEY_MARKER = "eta"


def hash_api_key(token: str) -> str:
    """sha256 of a presented key. Keys carry 256 random bits, so a fast unsalted hash is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_callback_secret() -> str:
    """A callback signing secret: 256 random bits."""
    return f"whsec_{secrets.token_urlsafe(32)}"


def create_tenant(*, session: Session, name: str) -> Tenant:
    tenant = Tenant(name=name, callback_secret=new_callback_secret())
    session.add(tenant)
    session.flush()
    logger.info("created tenant %s (%s)", tenant.id, name)
    return tenant


def get_tenant(*, session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def create_api_key(
    *, session: Session, tenant_id: uuid.UUID, role: ApiKeyRole, name: str | None = None
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the secret token, which is never retrievable again.

    The token looks like `eta_<8 chars>_<43 chars>`; its first part (`eta_<8 chars>`) is the prefix that
    listings and logs may show.
    """
    prefix = f"{API_KEY_MARKER}_{secrets.token_hex(4)}"
    token = f"{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(tenant_id=tenant_id, role=ApiKeyRole(role), name=name, prefix=prefix, key_hash=hash_api_key(token))
    session.add(key)
    session.flush()
    logger.info("created %s key %s for tenant %s", key.role, prefix, tenant_id)
    return key, token


class LiveKey(NamedTuple):
    """What a request needs to know of its key."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    role: ApiKeyRole
    prefix: str


def live_key(*, session: Session, key_hash: str) -> LiveKey | None:
    """The live (not revoked) key whose token hashes to `key_hash` (`hash_api_key`), as four columns: one indexed
    lookup, read without building an ORM object (the caller has the hash already, for its cache)."""
    row = session.connection().execute(
        sa.select(ApiKey.id, ApiKey.tenant_id, ApiKey.role, ApiKey.prefix)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    ).first()
    return LiveKey(*row) if row is not None else None


def authenticate_api_key(*, session: Session, token: str) -> ApiKey | None:
    """The live (not revoked) key matching `token`, or None."""
    return session.scalar(sa.select(ApiKey).where(ApiKey.key_hash == hash_api_key(token), ApiKey.revoked_at.is_(None)))


def list_api_keys(*, session: Session, tenant_id: uuid.UUID) -> Sequence[ApiKey]:
    return session.scalars(
        sa.select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id)
    ).all()


def get_tenant_by_name(*, session: Session, name: str) -> Tenant | None:
    return session.scalar(sa.select(Tenant).where(Tenant.name == name))


def get_or_create_tenant(*, session: Session, name: str) -> Tenant:
    """The tenant called `name`, created if there is none (race-safe on the unique name)."""
    tenant = session.scalar(sa.select(Tenant).where(Tenant.name == name))
    if tenant is not None:
        return tenant
    try:
        with session.begin_nested():
            return create_tenant(session=session, name=name)
    except IntegrityError:
        found = session.scalar(sa.select(Tenant).where(Tenant.name == name))
        if found is None:
            raise
        return found


def revoke_api_key_by_id(*, session: Session, key_id: uuid.UUID) -> ApiKey | None:
    """Revoke the live key with this id (operator tooling: an id is unique, a visible prefix may not be)."""
    key = session.scalar(sa.select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)))
    if key is None:
        return None
    key.revoked_at = utcnow()
    session.flush()
    logger.info("revoked key %s (%s) of tenant %s", key.id, key.prefix, key.tenant_id)
    return key


# ------------------------------------------------------------------------------ callback signing secrets
def callback_secrets(tenant: Tenant, *, now: datetime | None = None) -> list[str]:
    """The secrets that sign this tenant's callbacks now: the current one, then the previous one while its
    overlap window lasts."""
    now = now or utcnow()
    out = [tenant.callback_secret] if tenant.callback_secret else []
    until = tenant.previous_callback_secret_until
    if tenant.previous_callback_secret and until is not None and until > now:
        out.append(tenant.previous_callback_secret)
    return out


def ensure_callback_secret(*, session: Session, tenant_id: uuid.UUID) -> Tenant:
    """The tenant, given a secret if it has none (a tenant row written by hand)."""
    tenant = session.get(Tenant, tenant_id, with_for_update=True)
    if tenant is None:
        raise LookupError(f"no tenant {tenant_id}")
    if not tenant.callback_secret:
        tenant.callback_secret = new_callback_secret()
        session.flush()
    return tenant


def rotate_callback_secret(*, session: Session, tenant_id: uuid.UUID, overlap: timedelta) -> Tenant:
    """A new current secret; the old one keeps signing (alongside) for `overlap`."""
    tenant = session.get(Tenant, tenant_id, with_for_update=True)
    if tenant is None:
        raise LookupError(f"no tenant {tenant_id}")
    if overlap.total_seconds() > 0 and tenant.callback_secret:
        tenant.previous_callback_secret = tenant.callback_secret
        tenant.previous_callback_secret_until = utcnow() + overlap
    else:
        tenant.previous_callback_secret = tenant.previous_callback_secret_until = None
    tenant.callback_secret = new_callback_secret()
    session.flush()
    logger.info("rotated the callback secret of tenant %s (overlap %s)", tenant_id, overlap)
    return tenant


# ------------------------------------------------------------------------------------ review-page sessions
def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_review_session(*, session: Session, key_id: uuid.UUID, lifetime: timedelta) -> str:
    """Start a review-page session for the key; returns the token for the cookie (stored only hashed)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(ReviewSession(token_hash=_token_hash(token), key_id=key_id, created_at=now, expires_at=now + lifetime))
    session.flush()
    return token


def live_review_session_key(*, session: Session, token: str) -> ApiKey | None:
    """The live key of a session that has not ended or expired, or None."""
    return session.scalar(
        sa.select(ApiKey)
        .join(ReviewSession, ReviewSession.key_id == ApiKey.id)
        .where(ReviewSession.token_hash == _token_hash(token), ReviewSession.ended_at.is_(None),
               ReviewSession.expires_at > utcnow(), ApiKey.revoked_at.is_(None))
    )


def end_review_session(*, session: Session, token: str) -> bool:
    result = session.execute(
        sa.update(ReviewSession)
        .where(ReviewSession.token_hash == _token_hash(token), ReviewSession.ended_at.is_(None))
        .values(ended_at=utcnow())
    )
    return affected_rows(result) > 0
