"""`eta db`: schema migrations from the command line."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)

_database_url_option = click.option(
    "--database-url",
    default=None,
    help="SQLAlchemy URL; default ETA_DATABASE_URL (or DATABASE_URL), else the embedded SQLite file under "
         "ETA_DATA_DIR.",
)


def _engine(database_url: str | None) -> Engine:
    from eta.settings import get_settings
    from eta.store.db import make_engine

    return make_engine(database_url) if database_url else make_engine(settings=get_settings())


@click.group("db")
def db() -> None:
    """Database schema: upgrade, downgrade, show the current revision."""


@db.command("upgrade")
@click.argument("revision", default="head")
@_database_url_option
def upgrade_command(revision: str, database_url: str | None) -> None:
    """Migrate the schema up to REVISION (default: head)."""
    from eta.store import schema

    engine = _engine(database_url)
    try:
        schema.upgrade(engine, revision)
        click.echo(f"schema at {schema.current_revision(engine)}")
    finally:
        engine.dispose()


@db.command("downgrade")
@click.argument("revision")
@_database_url_option
def downgrade_command(revision: str, database_url: str | None) -> None:
    """Migrate the schema down to REVISION (`base` drops every table, and the data with it)."""
    from eta.store import schema

    engine = _engine(database_url)
    try:
        schema.downgrade(engine, revision)
        click.echo(f"schema at {schema.current_revision(engine) or 'base'}")
    finally:
        engine.dispose()


@db.command("current")
@_database_url_option
def current_command(database_url: str | None) -> None:
    """Show the schema revision of the database and whether it is the head; exit 1 if it is not."""
    from eta.store import schema

    engine = _engine(database_url)
    try:
        current = schema.current_revision(engine)
        head = schema.head_revision()
    finally:
        engine.dispose()
    click.echo(f"{current or 'base'} ({'head' if current == head else f'head is {head}'})")
    if current != head:
        raise SystemExit(1)
