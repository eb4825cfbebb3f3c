"""API keys: only a hash is stored, revoked keys stop working, a tenant lists only its own keys."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from eta.store import repository as repo
from eta.store.models import ApiKey, ApiKeyRole


def test_keys_authenticate_until_revoked(sessions: sessionmaker[Session], make_tenant: Callable[[], uuid.UUID]) -> None:
    tenant, other = make_tenant(), make_tenant()
    with sessions() as session, session.begin():
        key, token = repo.create_api_key(session=session, tenant_id=tenant, role=ApiKeyRole.REVIEW, name="ci")
    assert token.startswith(key.prefix + "_") and len(token) > 40
    with sessions() as session, session.begin():
        stored = session.execute(sa.select(ApiKey.prefix, ApiKey.key_hash).where(ApiKey.id == key.id)).one()
        assert token not in stored and stored.key_hash == repo.hash_api_key(token)

        found = repo.authenticate_api_key(session=session, token=token)
        assert found is not None and (found.id, found.tenant_id, found.role) == (key.id, tenant, ApiKeyRole.REVIEW)
        assert repo.authenticate_api_key(session=session, token=token + "x") is None

        revoked = repo.revoke_api_key_by_id(session=session, key_id=key.id)
        assert revoked is not None and revoked.id == key.id
        assert repo.revoke_api_key_by_id(session=session, key_id=key.id) is None  # already revoked
        assert repo.authenticate_api_key(session=session, token=token) is None

        listed = repo.list_api_keys(session=session, tenant_id=tenant)
        assert [(k.id, k.revoked_at is not None) for k in listed] == [(key.id, True)]
        assert repo.list_api_keys(session=session, tenant_id=other) == []
