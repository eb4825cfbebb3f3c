"""Schema management through Alembic, configured in code so no `alembic.ini` is needed.

The Alembic environment (`env.py`, `versions/`) is package data of `eta.store` (`eta/store/migrations/`), so a
source checkout, an editable install and an installed wheel all find it the same way, from any working
directory. The API and the workers call `check_schema_current` at start-up and refuse to run against a
database that is behind (or ahead of) the code.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from eta.store.errors import SchemaNotCurrentError

logger = logging.getLogger(__name__)



def migrations_dir() -> Path:
    """Directory holding Alembic's `env.py` and `versions/`: `migrations/` inside the installed `eta.store`."""
    # Alembic reads the scripts from the file system; setuptools installs package data as plain files (a wheel
    # is unpacked, never imported from a zip), so the resource is a real directory.
    path = Path(str(resources.files("eta.store") / "migrations"))
    if not (path / "env.py").is_file():
        raise FileNotFoundError(f"no Alembic environment at {path}: eta is installed without its migrations")
    return path


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config for our migrations; with `engine`, env.py migrates that engine's database."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    """The newest revision in `eta/store/migrations/versions` (the one the code is written against)."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads ({', '.join(heads)}); merge them")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for a database Alembic never touched."""
    with engine.connect() as connection:
        heads = MigrationContext.configure(connection).get_current_heads()
    return heads[0] if heads else None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database of `engine` up to `revision`."""
    logger.info("upgrading database schema to %s", revision)
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database of `engine` down to `revision` (`base` removes every table)."""
    logger.info("downgrading database schema to %s", revision)
    command.downgrade(alembic_config(engine), revision)


def check_schema_current(engine: Engine) -> str:
    """Return the schema revision if it is the head; raise `SchemaNotCurrentError` otherwise.

    Raises:
        SchemaNotCurrentError: the database is empty, behind, or at a revision this code does not know.
    """
    expected = head_revision()
    actual = current_revision(engine)
    if actual == expected:
        return actual
    where = engine.url.render_as_string(hide_password=True)
    if actual is None:
        state = "has no schema"
    else:
        state = f"is at revision {actual}"
    raise SchemaNotCurrentError(
        f"database {where} {state}, but this code needs revision {expected}; "
        "run `eta db upgrade` (and make sure the code is not older than the database)"
    )
