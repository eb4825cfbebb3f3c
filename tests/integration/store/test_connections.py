"""Pooled Postgres connections: one idle for a while is checked before use and replaced if the server ended
it; one returned a moment ago is used as it is, and if the server ended it meanwhile, that one statement
fails as a disconnect (the API answers 503) and the pool starts over."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from eta.store import db
from eta.store import repository as repo
from eta.store.db import make_engine, session_factory
from eta.store.models import ApiKeyRole

pytestmark = pytest.mark.postgres


@pytest.fixture
def named_engine(postgres_url: str) -> Iterator[tuple[Engine, str]]:
    """An engine of its own, its connections tagged with an application name only this test uses."""
    name = f"eta-test-{uuid.uuid4().hex[:8]}"
    engine = make_engine(postgres_url, connect_args={"application_name": name})
    yield engine, name
    engine.dispose()


def _end_backends(postgres_engine: Engine, application_name: str) -> int:
    with postgres_engine.connect() as connection:
        ended = connection.execute(
            sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :n"),
            {"n": application_name}).scalar_one()
    return int(ended)


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_idle_past_the_limit_is_checked_and_replaced(postgres_url, postgres_engine, monkeypatch):
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # every returned connection counts as idle
    name = f"eta-test-{uuid.uuid4().hex[:8]}"
    engine = make_engine(postgres_url, connect_args={"application_name": name})
    try:
        before = _backend_pid(engine)
        assert _end_backends(postgres_engine, name) == 1
        assert _backend_pid(engine) != before  # checked at checkout, found dead, replaced: no error
    finally:
        engine.dispose()


def test_a_connection_used_a_moment_ago_fails_once_then_the_pool_recovers(named_engine, postgres_engine):
    engine, name = named_engine
    before = _backend_pid(engine)
    assert _end_backends(postgres_engine, name) == 1
    with pytest.raises(DBAPIError) as lost:
        _backend_pid(engine)
    assert lost.value.connection_invalidated
    assert _backend_pid(engine) != before


def test_the_api_answers_503_for_a_lost_connection_then_serves_again(named_engine, postgres_engine, tmp_path):
    from api import create_app
    from eta.settings import Settings

    engine, name = named_engine
    with session_factory(engine)() as session, session.begin():
        tenant = repo.create_tenant(session=session, name=f"t-{uuid.uuid4().hex[:10]}")
        _, key = repo.create_api_key(session=session, tenant_id=tenant.id, role=ApiKeyRole.SUBMIT)
    settings = Settings(database_url=str(engine.url), eta_data_dir=tmp_path, eta_auth_cache_s=0)
    client = create_app(settings, engine=engine, enqueue=lambda ids: None).test_client()
    auth = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/audit/summary", headers=auth).status_code == 200
    assert _end_backends(postgres_engine, name) >= 1
    lost = client.get("/v1/audit/summary", headers=auth)
    assert lost.status_code == 503, lost.get_json()
    assert lost.mimetype == "application/problem+json" and lost.get_json()["code"] == "database_unavailable"
    assert lost.headers["Retry-After"] == "1"
    assert client.get("/v1/audit/summary", headers=auth).status_code == 200
