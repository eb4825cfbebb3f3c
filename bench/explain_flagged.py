"""EXPLAIN ANALYZE of the audit and sweeper queries on a fresh Postgres database of N jobs.

Creates a throw-away database, migrates it, fills it with `--rows` finished jobs (results for all, ~8 %
flagged, reviews on some, four tenants with 70 % of the jobs in the first), runs the repository's own
queries through SQLAlchemy, captures the SQL they emit and prints its EXPLAIN (ANALYZE, BUFFERS). Ends
with one JSON line of execution times. Drops the database unless --keep.

    .venv/bin/python bench/explain_flagged.py [--rows 100000] [--admin-url postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from eta.store import repository as repo
from eta.store.db import make_engine, session_factory
from eta.store.lifecycle import JobStatus
from eta.store.models import utcnow
from eta.store.repository import AuditFilter
from eta.store.schema import upgrade

logger = logging.getLogger(__name__)

FILL_SQL = """
INSERT INTO jobs (id, tenant_id, prompt, params, seed, status, flagged, attempts,
                  created_at, updated_at, status_changed_at, finished_at)
SELECT gen_random_uuid(),
       (:tenants)[CASE WHEN g % 10 < 7 THEN 1 ELSE 2 + g % 3 END],
       'prompt ' || g, '{}'::jsonb, g,
       CASE WHEN g <= :active THEN 'generating' ELSE 'succeeded' END,
       g > :active AND random() < 0.08, 1, ts, ts, ts,
       CASE WHEN g <= :active THEN NULL ELSE ts END
FROM generate_series(1, :rows) AS g,
     LATERAL (SELECT now() - g * interval '20 seconds') AS t(ts);

INSERT INTO job_results (job_id, s_pre, pre_unsafe, tau_pre, s_post, post_unsafe, tau_post, policy,
                         aligned, response, s_post_final, flag_reasons, timings, created_at, updated_at)
SELECT id, s_pre, s_pre >= 0.16, 0.16, s_post, s_post <= 0.06, 0.06, 'both',
       s_pre >= 0.16 AND s_post <= 0.06, 'answer', random(),
       CASE WHEN flagged THEN '["pre_unsafe"]'::jsonb ELSE '[]'::jsonb END,
       '{"pre": 10, "generate": 800, "post": 40}'::jsonb, created_at, created_at
FROM (SELECT id, flagged, created_at, random() * 0.3 AS s_pre, random() * 0.2 AS s_post
      FROM jobs WHERE status = 'succeeded') AS j;

INSERT INTO reviews (id, job_id, tenant_id, verdict, created_at)
SELECT gen_random_uuid(), id, tenant_id, 'confirmed', created_at + interval '1 hour'
FROM jobs WHERE flagged AND random() < 0.3;

ANALYZE;
"""


@contextmanager
def throwaway_database(admin_url: str, keep: bool) -> Iterator[str]:
    name = f"eta_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def fill(engine: Engine, rows: int) -> list[uuid.UUID]:
    tenants = [uuid.uuid4() for _ in range(4)]
    with engine.begin() as connection:
        for index, tenant_id in enumerate(tenants):
            connection.execute(
                sa.text("INSERT INTO tenants (id, name, created_at) VALUES (:id, :name, now())"),
                {"id": tenant_id, "name": f"bench-{index}"},
            )
        params = {"tenants": tenants, "rows": rows, "active": rows // 100}
        for statement in filter(str.strip, FILL_SQL.split(";")):
            clause = sa.text(statement)
            if ":tenants" in statement:
                clause = clause.bindparams(sa.bindparam("tenants", type_=postgresql.ARRAY(sa.Uuid())))
            connection.execute(clause, params)
    return tenants


@contextmanager
def captured_select(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Record the SELECT statements (and parameters) SQLAlchemy sends while the block runs."""
    captured: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield captured
    finally:
        event.remove(engine, "before_cursor_execute", record)


def explain(engine: Engine, title: str, run_query: Callable[[Session], object]) -> float:
    with captured_select(engine) as captured, session_factory(engine)() as session:
        run_query(session)
    statement, parameters = captured[-1]
    with engine.connect() as connection:
        plan = [row[0] for row in connection.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)]
    print(f"\n=== {title} ===\n{statement}\n")
    print("\n".join(plan))
    match = re.search(r"Execution Time: ([\d.]+) ms", plan[-1])
    return float(match.group(1)) if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    with throwaway_database(args.admin_url, args.keep) as url:
        engine = make_engine(url)
        upgrade(engine)
        started = time.perf_counter()
        tenants = fill(engine, args.rows)
        fill_s = time.perf_counter() - started
        tenant = tenants[0]
        with engine.connect() as connection:
            counts = connection.execute(
                sa.text(
                    "SELECT count(*), count(*) FILTER (WHERE flagged), count(*) FILTER (WHERE flagged "
                    "AND tenant_id = :t) FROM jobs"
                ),
                {"t": tenant},
            ).one()
        print(
            f"filled {counts[0]} jobs ({counts[1]} flagged, {counts[2]} of them in the tenant queried) "
            f"in {fill_s:.1f} s"
        )

        def deep_cursor(session: Session) -> str | None:
            cursor = None
            for _ in range(40):  # 40 pages of 50: 2,000 rows deep
                cursor = repo.list_flagged_jobs(session=session, tenant_id=tenant, cursor=cursor).next_cursor
            return cursor

        with session_factory(engine)() as session:
            deep = deep_cursor(session)
        timings = {
            "flagged_first_page_ms": explain(
                engine,
                "flagged jobs, first page (limit 50)",
                lambda s: repo.list_flagged_jobs(session=s, tenant_id=tenant, limit=50),
            ),
            "flagged_page_2000_deep_ms": explain(
                engine,
                "flagged jobs, page 41 (keyset cursor 2,000 rows deep)",
                lambda s: repo.list_flagged_jobs(session=s, tenant_id=tenant, limit=50, cursor=deep),
            ),
            "flagged_filtered_ms": explain(
                engine,
                "flagged jobs, aligned and not yet reviewed, last 7 days",
                lambda s: repo.list_flagged_jobs(
                    session=s,
                    tenant_id=tenant,
                    limit=50,
                    filters=AuditFilter(aligned=True, reviewed=False, created_from=utcnow() - timedelta(days=7)),
                ),
            ),
            "stalled_jobs_ms": explain(
                engine,
                "sweeper: jobs stalled in a stage",
                lambda s: repo.find_stalled_jobs(
                    session=s,
                    timeouts={
                        JobStatus.QUEUED: timedelta(hours=1),
                        JobStatus.PRE_EVALUATING: timedelta(minutes=5),
                        JobStatus.GENERATING: timedelta(minutes=15),
                        JobStatus.POST_EVALUATING: timedelta(minutes=5),
                    },
                ),
            ),
        }
        engine.dispose()
    print(json.dumps({"rows": args.rows, "fill_s": round(fill_s, 2), **timings}))


if __name__ == "__main__":
    main()
