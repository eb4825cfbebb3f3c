"""The hostile-input suite runs the API against the session's Postgres database (the API tests' fixtures)."""

from __future__ import annotations

from tests.integration.api.conftest import (  # noqa: F401 - fixtures shared with the API tests
    TEST_LIMITS,
    app,
    client,
    enqueue,
    fake_dns,
    make_tenant,
    settings,
    tenant,
)
from tests.integration.conftest import postgres_engine, postgres_url, sqlite_engine, sqlite_url  # noqa: F401
