"""`eta purge`: apply the retention period now (the workers' beat schedule runs the same pass)."""

from __future__ import annotations

import logging

import click

logger = logging.getLogger(__name__)


@click.command("purge")
@click.option("--days", type=click.IntRange(min=1),
              help="Purge jobs older than this many days (default: ETA_RETENTION_DAYS).")
@click.option("--dry-run", is_flag=True, help="Only count the jobs that would be purged.")
@click.option("--database-url", help="Database to purge (default: DATABASE_URL, else the embedded SQLite file).")
def purge(days: int | None, dry_run: bool, database_url: str | None) -> None:
    """Remove the images and vanilla answers of finished jobs past the retention period.

    Scores, thresholds, final answers, alignment traces, fingerprints and verdicts are kept. An image's
    bytes go once no job inside the retention period uses them.
    """
    from eta.settings import get_settings
    from eta.store import SchemaNotCurrentError, check_schema_current, make_engine, session_factory
    from eta.store.models import utcnow
    from eta.store.retention import count_expired, purge_expired, retention_cutoff

    settings = get_settings()
    now = utcnow()
    cutoff = retention_cutoff(settings, days=days, now=now)
    if cutoff is None:
        click.echo("retention is off (ETA_RETENTION_DAYS=0): nothing to purge")
        return
    engine = make_engine(database_url) if database_url else make_engine(settings=settings)
    try:
        try:
            check_schema_current(engine)
        except SchemaNotCurrentError as exc:
            raise click.ClickException(str(exc)) from exc
        sessions = session_factory(engine)
        if dry_run:
            count = count_expired(sessions, cutoff=cutoff)
            click.echo(f"{count} finished job(s) created before {cutoff:%Y-%m-%d %H:%M:%S} UTC would be purged")
            return
        report = purge_expired(sessions, settings=settings, days=days, now=now)
    finally:
        engine.dispose()
    click.echo(f"purged {report.jobs} job(s) created before {cutoff:%Y-%m-%d %H:%M:%S} UTC; "
               f"deleted {report.images} image(s)")
