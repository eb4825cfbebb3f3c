"""`eta serve`: the intake API under gunicorn (or Flask's dev server with --dev)."""

from __future__ import annotations

import logging
import os
import shutil
import sys

import click

logger = logging.getLogger(__name__)


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn worker processes.")
@click.option("--threads", default=4, show_default=True, type=int,
              help="Threads per worker (more threads than about 4 per core lose throughput to the GIL).")
@click.option("--dev", is_flag=True, help="Flask's development server (one process, reloader off).")
def serve(host: str, port: int, workers: int, threads: int, dev: bool) -> None:
    """Run the API. Refuses to start when the schema is not at head (run `eta db upgrade`)."""
    from eta.store import SchemaNotCurrentError

    if dev:
        from api import create_app

        try:
            app = create_app()
        except (SchemaNotCurrentError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        app.run(host=host, port=port, threaded=True, use_reloader=False)
        return
    # Check here too, so a bad schema is one clear line rather than a worker boot loop.
    from eta.store import check_schema_current, make_engine

    try:
        from eta.settings import get_settings

        settings = get_settings()  # validates: production refuses to start without a real SECRET_KEY
        check_schema_current(make_engine(settings=settings))
    except (SchemaNotCurrentError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    gunicorn = shutil.which("gunicorn", path=os.path.dirname(sys.executable)) or shutil.which("gunicorn")
    if gunicorn is None:
        raise click.ClickException("gunicorn is not installed; use --dev or install gunicorn")
    argv = [gunicorn, "--bind", f"{host}:{port}", "--workers", str(workers), "--threads", str(threads),
            "--worker-class", "api.server_errors.ProblemThreadWorker", "--access-logfile", "-", "api.wsgi:app"]
    # glibc gives each thread that allocates its own malloc arena, and freed memory stays in the arena that had
    # it: a threaded server's resident size then creeps up with every thread that once parsed a large body.
    # Two arenas keep it flat (bench/service.py: +1.9 % over 10,000 jobs, +5.6 % without); an operator's own
    # value wins.
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    logger.info("exec %s", " ".join(argv))
    os.execv(gunicorn, argv)  # noqa: S606 - replaces this process with gunicorn, arguments built above
