"""Migrations: up, down, up again on both dialects; the models match them; start-up refuses a stale schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from eta.commands.db import db
from eta.store import schema
from eta.store.db import make_engine
from eta.store.errors import SchemaNotCurrentError
from eta.store.models import Base
from tests.integration.conftest import fresh_postgres_database

TABLES = {"tenants", "api_keys", "batches", "jobs", "images", "blobs", "job_results", "reviews", "review_sessions",
          "presets", "admin_events"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a brand-new, empty database of each dialect."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
        yield engine
        engine.dispose()
        return
    with fresh_postgres_database("eta_test_migrations") as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


def _tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def test_up_down_up(empty_engine: Engine) -> None:
    schema.upgrade(empty_engine)
    assert _tables(empty_engine) == TABLES
    assert schema.current_revision(empty_engine) == schema.head_revision()

    schema.downgrade(empty_engine, "base")
    assert _tables(empty_engine) == set()
    assert schema.current_revision(empty_engine) is None

    schema.upgrade(empty_engine)
    assert _tables(empty_engine) == TABLES
    assert schema.check_schema_current(empty_engine) == schema.head_revision()


def test_models_match_migrations(empty_engine: Engine) -> None:
    schema.upgrade(empty_engine)
    with empty_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    # The same check through env.py, as `alembic check` runs it.
    command.check(schema.alembic_config(empty_engine))


def test_start_up_check_refuses_a_schema_not_at_head(empty_engine: Engine) -> None:
    with pytest.raises(SchemaNotCurrentError, match="has no schema.*eta db upgrade"):
        schema.check_schema_current(empty_engine)

    schema.upgrade(empty_engine)
    schema.check_schema_current(empty_engine)

    # A database migrated by newer code than this one.
    with empty_engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
    with pytest.raises(SchemaNotCurrentError, match="is at revision ffffffffffff"):
        schema.check_schema_current(empty_engine)


def test_cli_upgrade_current_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    runner = CliRunner()

    behind = runner.invoke(db, ["current", "--database-url", url])
    assert behind.exit_code == 1
    assert behind.output.startswith("base")

    upgraded = runner.invoke(db, ["upgrade", "--database-url", url])
    assert upgraded.exit_code == 0, upgraded.output
    current = runner.invoke(db, ["current", "--database-url", url])
    assert current.exit_code == 0
    assert current.output.strip() == f"{schema.head_revision()} (head)"

    downgraded = runner.invoke(db, ["downgrade", "base", "--database-url", url])
    assert downgraded.exit_code == 0, downgraded.output
    engine = make_engine(url)
    try:
        assert _tables(engine) == set()
    finally:
        engine.dispose()


def test_embedded_default_is_a_sqlite_file_under_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("ETA_DATA_DIR", str(tmp_path / "data"))
    from eta.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(db, ["upgrade"])
        assert result.exit_code == 0, result.output
    finally:
        get_settings.cache_clear()
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'eta.sqlite3'}")
    try:
        assert schema.check_schema_current(engine) == schema.head_revision()
    finally:
        engine.dispose()
