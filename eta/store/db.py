"""Engines and sessions: Postgres when `DATABASE_URL` is set, otherwise an embedded SQLite file."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from eta.settings import Settings

logger = logging.getLogger(__name__)

# Seconds a SQLite connection waits for another writer before giving up with "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30.0
# A pooled Postgres connection idle for longer than this is checked (one round trip) before it is handed out;
# one returned more recently is handed out as it is (see `_check_idle_connections`).
PING_AFTER_IDLE_S = 5.0


def default_database_url(settings: Settings) -> str:
    """`DATABASE_URL` when set, else a SQLite file under `ETA_DATA_DIR` (the directory is created)."""
    if settings.database.url:
        return settings.database.url
    data_dir = Path(settings.data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / 'eta.sqlite3'}"


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; a bare `postgres://` or `postgresql://` gets the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL | None = None, *, settings: Settings | None = None, **engine_kwargs: Any) -> Engine:
    """Create the engine for `url`, or when it is None for the database of `settings` (`default_database_url`).

    On SQLite every connection runs in WAL mode with foreign keys enforced, and every transaction is
    `BEGIN IMMEDIATE`: it takes the write lock up front, so two writers queue on the busy timeout
    instead of one failing with SQLITE_BUSY when it upgrades a read into a write. Savepoints and
    transactional DDL work as on Postgres.
    """
    if url is None:
        if settings is None:
            raise TypeError("make_engine needs a database URL or the settings that name one")
        url = default_database_url(settings)
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError("the store needs a SQLite file (an in-memory database is one per connection)")
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S, **engine_kwargs.pop("connect_args", {})}
        engine = sa.create_engine(parsed, connect_args=connect_args, **engine_kwargs)
        _configure_sqlite(engine)
    else:
        ping_idle = not engine_kwargs.get("pool_pre_ping")
        engine = sa.create_engine(parsed, **engine_kwargs)
        if ping_idle:
            _check_idle_connections(engine, PING_AFTER_IDLE_S)
    logger.debug("engine for %s", parsed.render_as_string(hide_password=True))
    return engine


def _check_idle_connections(engine: Engine, idle_s: float) -> None:
    """Check a pooled connection before handing it out only when it sat idle for more than `idle_s` seconds.

    `pool_pre_ping` pays a round trip on every checkout, which is one of the few round trips of a poll. A
    connection returned a moment ago is alive but for a database restart in that moment; the statement it
    then runs fails as a disconnect, which invalidates the whole pool, so one request (an API 503, a worker
    retry) pays instead of every request. A connection idle for longer is checked, and replaced if dead.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["eta_returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get("eta_returned_at")
        if returned_at is None or time.monotonic() - returned_at <= idle_s:
            return  # a new connection, or one in use a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
            dbapi_connection.rollback()  # the ping opened a transaction: leave the connection idle
        except engine.dialect.loaded_dbapi.Error as exc:
            if not engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            raise sa.exc.DisconnectionError("the pooled connection is closed; the pool replaces it") from exc


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (it skips it before SELECT and DDL); see below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # A reader (an engine from `read_only_engine`) begins DEFERRED: in WAL mode it then never holds the
        # write lock, so reads neither wait for writers nor make them wait.
        mode = "DEFERRED" if connection.get_execution_options().get(READ_ONLY_OPTION) else "IMMEDIATE"
        connection.exec_driver_sql(f"BEGIN {mode}")


READ_ONLY_OPTION = "eta_read_only"


def read_only_engine(engine: Engine) -> Engine:
    """The same engine (and pool) for sessions that only read.

    On SQLite their transactions begin DEFERRED and never take the write lock. On Postgres they run in
    autocommit: no BEGIN and ROLLBACK round trips around a read. Each statement still sees a consistent
    snapshot of its own, which is what a READ COMMITTED transaction gives each of its statements anyway.
    """
    options: dict[str, Any] = {READ_ONLY_OPTION: True}
    if engine.dialect.name == "postgresql":
        options["isolation_level"] = "AUTOCOMMIT"
    return engine.execution_options(**options)


def ping(engine: Engine) -> None:
    """One round trip to the database (readiness checks).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached.
    """
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to `engine`. Objects stay readable after commit (no reload per attribute)."""
    return sessionmaker(bind=engine, expire_on_commit=False)
