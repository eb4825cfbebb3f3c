"""`eta worker` (a Celery worker for some of the stage queues) and `eta sweep` (one sweeper pass)."""

from __future__ import annotations

import json
import logging
import socket
import uuid
from pathlib import Path

import click

logger = logging.getLogger(__name__)


def _queue_names() -> tuple[str, ...]:
    from workers.stage_table import QUEUES

    return tuple(QUEUES)


def _parse_queues(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    known = _queue_names()
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise click.BadParameter(f"choose from {', '.join(known)} (comma-separated), got {value!r}")
    return names


@click.command("worker")
@click.option("--queues", "-Q", default=lambda: ",".join(_queue_names()), show_default="all of them",
              help="Stage queues to consume: pre (CLIP), generate (VLM + reward + CLIP), post (reward), "
                   "control (callbacks, sweeper). Only the models these need are loaded.")
@click.option("--concurrency", "-c", default=1, show_default=True, type=click.IntRange(min=1),
              help="Worker processes; each loads its own models (one per GPU is usual).")
@click.option("--beat", is_flag=True, help="Also run the beat scheduler (periodic sweeper) in this worker; "
                                           "enable it on one worker only.")
@click.option("--loglevel", "-l", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "solo", "threads"]),
              help="prefork forks one process per --concurrency (models loaded in each); solo runs in this one.")
@click.option("--hostname", "-n", default=None, help="Node name (default: eta-<queues>-<random>@<host>).")
def worker(queues: str, concurrency: int, beat: bool, loglevel: str, pool: str, hostname: str | None) -> None:
    """Run a Celery worker that processes ETA jobs."""
    from workers.celery_app import celery_app
    from workers.stage_table import QUEUES

    names = _parse_queues(queues)
    _check_models([QUEUES[name] for name in names])
    node = hostname or f"eta-{'-'.join(names)}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    argv = ["worker", "--queues", ",".join(QUEUES[name] for name in names), "--concurrency", str(concurrency),
            "--loglevel", loglevel.upper(), "--pool", pool, "--hostname", node,
            # No start-up handshake with other workers: nothing here uses it, and it costs seconds.
            "--without-gossip", "--without-mingle"]
    if beat:
        argv.append("--beat")
        beat_schedule_folder(celery_app.conf.beat_schedule_filename).mkdir(parents=True, exist_ok=True)
    celery_app.worker_main(argv)


def beat_schedule_folder(schedule_filename: str) -> Path:
    """The folder of beat's schedule file: it lies in the data directory, which a first start may not have made
    yet (with Redis as broker nothing else creates it), and beat cannot create a file in a missing folder."""
    return Path(schedule_filename).expanduser().parent


def _check_models(queues: list[str]) -> None:
    """Refuse to start, with the one-line error of eta.models.selection, when the models these queues need are not
    a usable set (a partial one, a wrong id, missing files, no network and no cache): without this, each pool
    process would fail on its own and the jobs would wait for the sweeper.

    The check (and the build of the tiny models) runs torch, so it runs in a child process: this process forks the
    pool, and a fork of a process that ran torch hangs in its first torch operation (workers.preflight)."""
    from workers.preflight import PreflightError, run_preflight
    from workers.stage_table import roles_for_queues

    try:
        run_preflight(roles_for_queues(queues))
    except PreflightError as exc:
        raise _RefusedStart(str(exc)) from exc


class _RefusedStart(click.ClickException):
    """The worker's models cannot be loaded: one line, exit status 2."""

    exit_code = 2


@click.command("sweep")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def sweep(as_json: bool) -> None:
    """Re-enqueue jobs stalled in a stage (or left queued while the broker was down), once."""
    from eta.settings import get_settings
    from eta.store.db import make_engine, session_factory
    from workers.celery_app import celery_app
    from workers.enqueue import BrokerUnavailable
    from workers.sweeper import sweep as sweep_once
    from workers.sweeper import with_callbacks

    settings = get_settings()
    engine = make_engine(settings=settings)
    try:
        sessions = session_factory(engine)
        try:
            report = sweep_once(sessions=sessions, app=celery_app, settings=settings)
        except BrokerUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
        with_callbacks(celery_app, sessions, report.completed_batches)
    finally:
        engine.dispose()
    summary = report.as_dict()
    if as_json:
        click.echo(json.dumps(summary))
        return
    requeued = ", ".join(f"{n} from {stage}" for stage, n in report.requeued.items()) or "none"
    click.echo(f"re-enqueued: {requeued}; failed as stalled: {report.failed}; "
               f"batches completed: {len(report.completed_batches)}"
               + (f"; not swept (backlog): {', '.join(report.skipped_backlog)}" if report.skipped_backlog else ""))
