"""`eta openapi`: print the OpenAPI document the API serves, without a server or a database to set up."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click


@contextmanager
def _environment(values: dict[str, str], *, drop_settings: bool) -> Iterator[None]:
    """The process environment with `values`, without the database's variables (the throwaway app has its own)
    and, with `drop_settings`, without any variable the settings read (the limits among them)."""
    from eta.settings import Settings

    dropped = set(Settings.variables()) if drop_settings else {"ETA_DATABASE_URL", "DATABASE_URL"}
    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if n.upper() in dropped or n.upper() in ("ETA_DATABASE_URL",
                                                                                      "DATABASE_URL")]:
            del os.environ[name]
        os.environ.update(values)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def served_document(*, defaults: bool) -> dict[str, object]:
    """The document `GET /v1/openapi.json` answers, from an app on a throwaway embedded database.

    Args:
        defaults: ignore the environment's ETA_* settings: the document of a server left at its defaults.
    """
    from api import create_app
    from eta.settings import get_settings
    from eta.store import make_engine, schema

    with tempfile.TemporaryDirectory(prefix="eta-openapi-") as data_dir, \
            _environment({"ETA_DATA_DIR": data_dir, "ETA_SECRET_KEY": secrets.token_hex(32)}, drop_settings=defaults):
        settings = get_settings.__wrapped__()  # read now, from the environment above (get_settings caches)
        engine = make_engine(f"sqlite:///{Path(data_dir) / 'openapi.db'}")
        try:
            schema.upgrade(engine)
            app = create_app(settings, engine=engine, enqueue=lambda _ids: None)
            answer = app.test_client().get("/v1/openapi.json")
            if answer.status_code != 200:
                raise click.ClickException(f"/v1/openapi.json answered {answer.status_code}")
            return dict(answer.get_json())
        finally:
            engine.dispose()


@click.command("openapi")
@click.option("--defaults", is_flag=True,
              help="The document of a server at its default settings, whatever ETA_* variables say: the one "
                   "committed as docs/openapi.json (`eta openapi --defaults > docs/openapi.json`).")
def openapi_command(defaults: bool) -> None:
    """Print the API's OpenAPI 3.1 document (as `eta serve` would serve it with this environment's limits)."""
    click.echo(json.dumps(served_document(defaults=defaults), indent=2, ensure_ascii=False))
