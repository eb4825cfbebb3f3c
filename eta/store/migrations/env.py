"""Alembic environment: metadata from eta.store.models, engines from eta.store.db.

Configured by eta.store.schema (which hands over an engine in `config.attributes["engine"]`), or by the
`alembic` command with the repository's alembic.ini (the database is then `DATABASE_URL`, or the
embedded SQLite file when that is unset).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection, Engine

from eta.store.db import default_database_url, make_engine
from eta.store.models import Base, UTCDateTime

logger = logging.getLogger("alembic.env")

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # Only when the `alembic` command runs this file by hand, with no URL: an entry point of its own, so it reads
    # the environment's settings itself (`eta db` hands over its engine instead).
    from eta.settings import Settings

    return config.get_main_option("sqlalchemy.url") or default_database_url(Settings())


def _render_item(type_: str, obj: Any, _autogen_context: AutogenContext) -> str | Literal[False]:
    # Generated migrations must not import the live models: write our decorator as its plain type.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """Emit the migration SQL for `--sql` without connecting."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine: Engine | None = config.attributes.get("engine")
    owned = engine is None
    if engine is None:
        engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        if owned:
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
