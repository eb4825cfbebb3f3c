"""Engines: the embedded default, URL handling, and the SQLite connection settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from eta.settings import Settings
from eta.store.db import default_database_url, make_engine, normalize_url


def test_default_is_a_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(eta_data_dir=tmp_path / "data", database_url=None)
    assert default_database_url(settings) == f"sqlite:///{tmp_path / 'data' / 'eta.sqlite3'}"
    assert (tmp_path / "data").is_dir()


def test_database_url_wins(tmp_path: Path) -> None:
    settings = Settings(eta_data_dir=tmp_path, database_url="postgresql://u@db/eta")
    assert default_database_url(settings) == "postgresql://u@db/eta"


@pytest.mark.parametrize("url", ["postgres://u@h/db", "postgresql://u@h/db", "postgresql+psycopg://u@h/db"])
def test_postgres_urls_get_psycopg3(url: str) -> None:
    assert normalize_url(url).drivername == "postgresql+psycopg"


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="file"):
        make_engine("sqlite://")


def test_sqlite_runs_wal_with_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'x.sqlite3'}")
    try:
        with engine.begin() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            connection.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            connection.exec_driver_sql("CREATE TABLE child (parent_id INTEGER REFERENCES parent (id))")
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO child VALUES (1)")
    finally:
        engine.dispose()


def test_sqlite_savepoints_and_ddl_are_transactional(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    try:
        with engine.connect() as connection:
            with connection.begin() as transaction:
                connection.exec_driver_sql("CREATE TABLE t (v INTEGER)")
                connection.exec_driver_sql("INSERT INTO t VALUES (1)")
                savepoint = connection.begin_nested()
                connection.exec_driver_sql("INSERT INTO t VALUES (2)")
                savepoint.rollback()
                assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
                transaction.rollback()
            # The CREATE TABLE rolled back with everything else.
            assert sa.inspect(connection).get_table_names() == []
    finally:
        engine.dispose()
