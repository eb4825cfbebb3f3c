"""Audit tests run the API against the session's Postgres database (the API tests' fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from eta.store import session_factory
from tests.integration.api.conftest import (  # noqa: F401 - fixtures shared with the API tests
    TEST_LIMITS,
    Tenant,
    app,
    client,
    enqueue,
    make_tenant,
    sample_b64,
    settings,
    tenant,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def sessions(postgres_engine: Engine) -> sessionmaker[Session]:
    return session_factory(postgres_engine)


@pytest.fixture(scope="session")
def sample_bytes(samples_dir: Path) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        return (samples_dir / name).read_bytes()

    return read
