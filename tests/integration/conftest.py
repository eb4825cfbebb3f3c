"""Database fixtures for integration tests: a fresh Postgres database per test session, and SQLite.

Postgres is the server on 127.0.0.1:5432 (override with ETA_TEST_POSTGRES_URL, pointing at a database
the user may connect to, e.g. `postgres`). When it is unreachable the tests fail: CI starts it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from eta.store.db import make_engine
from eta.store.schema import upgrade

POSTGRES_ADMIN_URL = os.environ.get("ETA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def fresh_postgres_database(prefix: str = "eta_test") -> Iterator[str]:
    """Create an empty, uniquely named database; yield its URL; drop it (closing stray connections)."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


@contextmanager
def migrated_engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of this test session's Postgres database, migrated to head."""
    with fresh_postgres_database() as url, migrated_engine(url):
        yield url


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of this test session's SQLite file, migrated to head."""
    path: Path = tmp_path_factory.mktemp("sqlite") / "eta.sqlite3"
    url = f"sqlite:///{path}"
    with migrated_engine(url):
        pass
    return url


@pytest.fixture(scope="session")
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()
