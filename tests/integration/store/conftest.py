"""Store tests run against SQLite and, marked `postgres`, against the session's Postgres database."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from eta.store import repository as repo
from eta.store.db import session_factory
from eta.store.models import Base

DIALECTS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=DIALECTS)
def engine(request: pytest.FixtureRequest) -> Engine:
    """The migrated engine of each dialect in turn (tests are data-independent: one tenant each)."""
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def make_tenant(sessions: sessionmaker[Session]) -> Callable[[], uuid.UUID]:
    def make() -> uuid.UUID:
        with sessions() as session, session.begin():
            return repo.create_tenant(session=session, name=f"tenant-{uuid.uuid4().hex[:12]}").id

    return make


@pytest.fixture
def tenant_id(make_tenant: Callable[[], uuid.UUID]) -> uuid.UUID:
    return make_tenant()


@pytest.fixture
def empty_db(engine: Engine) -> Iterator[None]:
    """Delete every row first, for tests of queries that span all tenants (the sweeper's)."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # The append-only trigger on admin_events refuses a DELETE while the tenant exists: this fixture wipes
            # everything at once, so it runs without user triggers (the test database's owner is a superuser).
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(sa.delete(table))
    yield
