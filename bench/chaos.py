"""Chaos run: many jobs from several tenants through real workers while workers, Redis and Postgres fail.

It starts its own Postgres cluster and redis-server (temporary folders, free ports: it restarts and flushes
them), several `eta worker` processes with the instant models (`ETA_MODELS=instant`) and a control worker
running the sweeper, a local receiver for the batch callbacks, then submits the jobs and injects faults as
the jobs progress:

- SIGKILL of a random stage worker while it runs a stage (and a restart of it a moment later);
- a Redis restart (its data kept), and a Redis flush (every queued message lost);
- a Postgres restart (every open connection cut).

At the end it checks from the database, not from logs: every job in a terminal status, reached exactly once
(a trigger of this private database records every status change); no result row twice; each batch
`completed` with counts equal to its jobs; each batch callback delivered; every stored result equal to an
undisturbed run of the same jobs with the same seeds (the same pipeline code, in this process, no service).
It prints one JSON document and exits 1 when a job is lost, duplicated, failed or mismatched, or a batch or
a callback is missing.

`--poison N` plants N poison jobs: their prompts carry a marker on which the instant VLM SIGKILLs its own
process, every time (`ETA_INSTANT_FAULT=kill:MARKER` in the workers' environment only). They must fail (as
`stalled`, once the sweeper has tried each alone) and nothing else may: a job that fails beside them counts
against the verdict (`failed_innocent`), and so does a poison job that did not fail.

    .venv/bin/python bench/chaos.py                        # 10,000 jobs, 4 tenants, 4 workers
    .venv/bin/python bench/chaos.py --jobs 1000 --kills 3 --redis-restarts 1 --redis-flushes 0 \
        --postgres-restarts 0                                # the reduced schedule CI runs

Worker settings are the service's defaults unless given with `--setting NAME=VALUE` (repeatable).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from PIL import Image
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _services import PrivatePostgres, PrivateRedis, free_port  # noqa: E402
from _workers import WorkerProcess, clean_environ  # noqa: E402

from eta.store.lifecycle import TERMINAL_JOB_STATUSES  # noqa: E402
from workers.stage_table import stage  # noqa: E402

logger = logging.getLogger("chaos")

REPO = Path(__file__).resolve().parents[1]
SECRET = "chaos-secret-key-0123456789abcdef"  # noqa: S105 - a private throwaway service
PARAMS = {"max_new_tokens": 32}
POISON_MARKER = "[chaos-poison]"
TERMINAL = tuple(str(status) for status in TERMINAL_JOB_STATUSES)
# The same list as a parameter of the checks' SQL.
TERMINAL_PARAM = {"terminal": list(TERMINAL)}

# Every status change of a job, written by the database itself (this private database only).
_TRANSITIONS_DDL = """
CREATE TABLE chaos_transitions (
    job_id uuid NOT NULL, old_status text NOT NULL, new_status text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION chaos_record_transition() RETURNS trigger AS $$
BEGIN
    INSERT INTO chaos_transitions (job_id, old_status, new_status) VALUES (NEW.id, OLD.status, NEW.status);
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER chaos_transitions AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION chaos_record_transition();
"""


# --------------------------------------------------------------------------------------- callbacks
class CallbackReceiver:
    """Records every batch callback POSTed to it (the batch id of each delivery)."""

    def __init__(self) -> None:
        self.deliveries: Counter[str] = Counter()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    batch_id = json.loads(body)["batch"]["id"]
                except (ValueError, KeyError, TypeError):
                    self.send_response(400)
                    self.end_headers()
                    return
                receiver.deliveries[batch_id] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/batch-done"

    def __enter__(self) -> CallbackReceiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# ----------------------------------------------------------------------------------------- workers
# -------------------------------------------------------------------------------------------- jobs
def _png(i: int) -> bytes:
    buf = io.BytesIO()
    rng = random.Random(i)  # noqa: S311 - test data
    Image.new("RGB", (24, 24), (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Submitted:
    batches: dict[str, int] = field(default_factory=dict)  # batch id -> jobs
    job_ids: list[uuid.UUID] = field(default_factory=list)
    tenants: int = 0
    # The planted poison jobs (--poison).
    poison: set[uuid.UUID] = field(default_factory=set)


def submit(url: str, args: argparse.Namespace, callback_url: str) -> Submitted:
    """Tenants and their batches, stored as the API stores them (round-robin across tenants)."""
    from eta.settings import Settings
    from eta.store import make_blob_store, make_engine, session_factory
    from eta.store import repository as repo
    from eta.store.repository import NewJob

    engine = make_engine(url)
    sessions = session_factory(engine)
    settings = Settings(database_url=url)
    images = [_png(i) for i in range(args.distinct_images)]
    out = Submitted(tenants=args.tenants)
    per_batch = args.batch_size
    # Poison jobs spread evenly over the run.
    poisoned = {int((k + 0.5) * args.jobs / args.poison) for k in range(args.poison)} if args.poison else set()
    try:
        with sessions() as session, session.begin():
            tenants = [repo.create_tenant(session=session, name=f"tenant-{t}").id for t in range(args.tenants)]
            blobs = make_blob_store(session=session, settings=settings)
            digests = [repo.store_image(session=session, blobs=blobs, data=data, mime="image/png", width=24, height=24)
                       for data in images]
        index = 0
        batch_no = 0
        while index < args.jobs:
            tenant = tenants[batch_no % len(tenants)]
            count = min(per_batch, args.jobs - index)
            jobs = [NewJob(prompt=f"chaos question {index + i}: what is in the picture?"
                           + (f" {POISON_MARKER}" if index + i in poisoned else ""),
                           image_sha256=digests[(index + i) % len(digests)] if (index + i) % 4 else None,
                           custom_id=f"job-{index + i}", params=PARAMS, seed=index + i) for i in range(count)]
            with sessions() as session, session.begin():
                made = repo.create_batch_with_jobs(session=session, tenant_id=tenant, jobs=jobs,
                                                   callback_url=callback_url)
            out.batches[str(made.batch.id)] = count
            out.job_ids.extend(made.job_ids)
            out.poison.update(job_id for i, job_id in enumerate(made.job_ids) if index + i in poisoned)
            index += count
            batch_no += 1
    finally:
        engine.dispose()
    return out


def enqueue(settings: Any, job_ids: list[uuid.UUID], batch_size: int) -> None:
    from workers.app import create_celery_app
    from workers.enqueue import enqueue_jobs

    app = create_celery_app(settings)
    for start in range(0, len(job_ids), batch_size):
        enqueue_jobs(job_ids[start:start + batch_size], app=app)


# ------------------------------------------------------------------------------------------ checks
def reference_results(url: str, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """What an undisturbed run computes for each job: the pipeline in this process on the same inputs."""
    from eta.config import ETAConfig
    from eta.images import decode_image
    from eta.models.instant import load_instant_models
    from eta.safety.pipeline import ETAInput, run_eta
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            blobs = dict(connection.execute(sa.text("SELECT sha256, data FROM blobs")).all())
            rows = connection.execute(sa.text("SELECT id, prompt, image_sha256, seed, params FROM jobs")).all()
    finally:
        engine.dispose()
    images = {sha: decode_image(data).image for sha, data in blobs.items()}
    models = load_instant_models(("vlm", "clip", "reward"))
    wanted = set(job_ids)
    out: dict[uuid.UUID, dict[str, Any]] = {}
    rows = [row for row in rows if row.id in wanted]
    config = ETAConfig.from_dict(PARAMS)
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        items = [ETAInput(prompt=r.prompt, image=images[r.image_sha256] if r.image_sha256 else None, seed=r.seed)
                 for r in chunk]
        for row, result in zip(chunk, run_eta(models, items, config), strict=True):
            out[row.id] = _comparable(result.to_dict())
    return out


_COMPARED = ("s_pre", "pre_unsafe", "s_post", "post_unsafe", "aligned", "vanilla_response", "response", "trace",
             "s_post_final", "flag_reasons")


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    return {name: values.get(name) for name in _COMPARED}


def check(url: str, submitted: Submitted, receiver: CallbackReceiver) -> dict[str, Any]:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as c:
            statuses = Counter(dict(c.execute(sa.text("SELECT status, count(*) FROM jobs GROUP BY status")).all()))
            failed_codes = Counter(dict(c.execute(sa.text(
                "SELECT error_code, count(*) FROM jobs WHERE status = 'failed' GROUP BY error_code")).all()))
            terminal_entries = dict(c.execute(sa.text(
                "SELECT job_id, count(*) FROM chaos_transitions WHERE new_status = ANY(CAST(:terminal AS text[])) "
                "GROUP BY job_id"), TERMINAL_PARAM).all())
            left_terminal = c.execute(sa.text("SELECT count(*) FROM chaos_transitions "
                                              "WHERE old_status = ANY(CAST(:terminal AS text[]))"),
                                      TERMINAL_PARAM).scalar()
            result_rows = c.execute(sa.text(
                "SELECT count(*) FROM (SELECT job_id FROM job_results GROUP BY job_id HAVING count(*) > 1) d")).scalar()
            batches = {str(r.id): r for r in c.execute(sa.text(
                "SELECT b.id, b.status, b.callback_sent_at, count(j.id) AS jobs, "
                "count(j.id) FILTER (WHERE j.status = ANY(CAST(:terminal AS text[]))) AS ended "
                "FROM batches b LEFT JOIN jobs j ON j.batch_id = b.id GROUP BY b.id"), TERMINAL_PARAM)}
            failed_ids = {job_id for (job_id,) in c.execute(sa.text("SELECT id FROM jobs WHERE status = 'failed'"))}
            # Where the jobs that did not end stand, for whoever reads a failed run (with their last transitions).
            stuck = [{**{k: str(v) for k, v in r._mapping.items()}} for r in c.execute(sa.text(
                "SELECT j.id, j.status, j.attempts, j.lease_owner, j.lease_expires_at, j.status_changed_at, "
                "(SELECT string_agg(t.old_status || '>' || t.new_status || '@' || to_char(t.at, 'HH24:MI:SS.MS'), ' ' "
                "ORDER BY t.at) FROM chaos_transitions t WHERE t.job_id = j.id) AS moves "
                "FROM jobs j WHERE NOT j.status = ANY(CAST(:terminal AS text[])) "
                "ORDER BY j.status_changed_at LIMIT 5"), TERMINAL_PARAM)]
            stored = {r.job_id: {**dict(r._mapping)} for r in c.execute(sa.text(
                "SELECT r.job_id, r.s_pre, r.pre_unsafe, r.s_post, r.post_unsafe, r.aligned, r.vanilla_response, "
                "r.response, r.trace, r.s_post_final, r.flag_reasons, j.flagged FROM job_results r "
                "JOIN jobs j ON j.id = r.job_id WHERE j.status = 'succeeded'"))}
    finally:
        engine.dispose()
    expected = reference_results(url, [j for j in submitted.job_ids if j not in submitted.poison])
    mismatched = [str(job_id) for job_id, values in expected.items()
                  if job_id in stored and _comparable(stored[job_id]) != values]
    duplicated = sum(1 for n in terminal_entries.values() if n > 1) + int(left_terminal or 0) + int(result_rows or 0)
    total = sum(statuses.values())
    lost = (len(submitted.job_ids) - total) + sum(n for s, n in statuses.items() if s not in TERMINAL)
    bad_batches = [b for b, row in batches.items()
                   if row.status != "completed" or row.jobs != row.ended or row.jobs != submitted.batches.get(b)]
    undelivered = [b for b in submitted.batches if receiver.deliveries.get(b, 0) == 0 or
                   batches.get(b) is None or batches[b].callback_sent_at is None]
    return {
        "jobs": len(submitted.job_ids),
        "statuses": dict(statuses),
        "lost": lost,
        "duplicated": duplicated,
        "mismatched": len(mismatched),
        "mismatched_examples": mismatched[:5],
        "failed": dict(failed_codes),
        "unfinished_examples": stuck,
        "jobs_failed": len(failed_ids),
        # Failed jobs that were not planted poison: jobs that paid for another's crash, or for a fault.
        "failed_innocent": len(failed_ids - submitted.poison),
        "poison_jobs": len(submitted.poison),
        "poison_failed": len(failed_ids & submitted.poison),
        "succeeded_without_result": len([j for j in expected if j not in stored and j not in failed_ids]),
        "batches": len(submitted.batches),
        "batches_wrong": len(bad_batches),
        "callbacks_missing": len(undelivered),
        "callbacks_delivered_twice": sum(1 for n in receiver.deliveries.values() if n > 1),
    }


def _terminal_times(url: str) -> dict[str, float]:
    """When each job reached a terminal status (epoch seconds), from the transitions the database recorded."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.text("SELECT job_id, max(at) FROM chaos_transitions "
                                     "WHERE new_status = ANY(CAST(:terminal AS text[])) GROUP BY job_id"),
                             TERMINAL_PARAM).all()
    finally:
        engine.dispose()
    return {str(job_id): at.timestamp() for job_id, at in rows}


def _left_stage_times(url: str, stage_status: str, job_ids: list[str]) -> dict[str, float]:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.text("SELECT job_id, min(at) FROM chaos_transitions WHERE old_status = :s "
                                     "AND job_id = ANY(CAST(:ids AS uuid[])) GROUP BY job_id"),
                             {"s": stage_status, "ids": job_ids}).all()
    finally:
        engine.dispose()
    return {str(job_id): at.timestamp() for job_id, at in rows}


# -------------------------------------------------------------------------------------------- run
@dataclass
class Fault:
    kind: str
    at: float  # epoch seconds
    detail: dict[str, Any] = field(default_factory=dict)


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)  # noqa: S311 - fault schedule, not security
        self.faults: list[Fault] = []

    def progress(self, engine: sa.Engine) -> tuple[int, int]:
        """(jobs ended, jobs)."""
        try:
            with engine.connect() as c:
                row = c.execute(sa.text("SELECT count(*) FILTER (WHERE status = ANY(CAST(:terminal AS text[]))), "
                                        "count(*) FROM jobs"), TERMINAL_PARAM).one()
            return int(row[0]), int(row[1])
        except sa.exc.OperationalError:
            return -1, -1

    def schedule(self) -> list[str]:
        a = self.args
        kinds = (["kill"] * a.kills + ["redis_restart"] * a.redis_restarts + ["redis_flush"] * a.redis_flushes
                 + ["postgres_restart"] * a.postgres_restarts)
        self.rng.shuffle(kinds)
        return kinds

    def kill_one(self, workers: list[WorkerProcess], engine: sa.Engine) -> Fault:
        """SIGKILL a worker in the middle of a stage: the database shows one of its processes holding the leases of
        jobs in a stage (`WorkerProcess.held_jobs`). Waits up to 90 s for one to be: after earlier kills every worker
        may sit idle until the killed workers' leases run out and the sweeper sends their jobs again (tens of
        seconds)."""
        deadline = time.monotonic() + 90
        candidates = list(workers)
        while True:
            self.rng.shuffle(candidates)
            for worker in candidates:
                running = worker.held_jobs(engine)
                if running is not None or time.monotonic() > deadline:
                    worker.kill()
                    fault = Fault("kill", time.time(), {"worker": worker.name, "mid_stage": running is not None,
                                                        "stage": running[0] if running else None,
                                                        "job_ids": running[1] if running else []})
                    time.sleep(self.args.restart_after_s)
                    worker.start(wait=False)
                    return fault
            time.sleep(0.01)

    def run(self) -> dict[str, Any]:
        from eta.settings import Settings
        from eta.store import make_engine
        from eta.store.schema import upgrade

        a = self.args
        started = time.time()
        with PrivatePostgres() as pg, PrivateRedis() as rd, CallbackReceiver() as receiver:
            url = pg.create_database("eta_chaos")
            engine = make_engine(url)
            upgrade(engine)
            with engine.begin() as c:
                c.exec_driver_sql(_TRANSITIONS_DDL)
            engine.dispose()
            submitted = submit(url, a, receiver.url)
            overrides = dict(s.split("=", 1) for s in a.setting)
            poison = {"ETA_INSTANT_FAULT": f"kill:{POISON_MARKER}"} if a.poison else {}
            env = {**clean_environ(), "DATABASE_URL": url, "REDIS_URL": rd.url, "ETA_MODELS": "instant", **poison,
                   "SECRET_KEY": SECRET, "ETA_DATA_DIR": str(pg.root.parent / f"{pg.root.name}-data"),
                   "ETA_CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8", **overrides}
            Path(env["ETA_DATA_DIR"]).mkdir(parents=True, exist_ok=True)  # the beat schedule file goes there
            log_dir = Path(a.log_dir) if a.log_dir else pg.root.parent / f"{pg.root.name}-logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            workers = [WorkerProcess(env, log_dir / f"stage-{i}.log", "pre,generate,post", beat=False,
                                     hostname=f"stage-{i}@chaos") for i in range(a.workers)]
            control = WorkerProcess(env, log_dir / "control.log", "control", hostname="control@chaos")
            everyone = [*workers, control]
            try:
                for worker in everyone:
                    worker.start(wait=False)
                for worker in everyone:
                    worker.wait_for_log(" ready.", timeout=120)
                settings = Settings(database_url=url, redis_url=rd.url,
                                    **{k.lower(): v for k, v in overrides.items() if k.startswith("ETA_")})
                t0 = time.time()
                enqueue(settings, submitted.job_ids, a.batch_size)
                report = self.inject(url, everyone, workers, pg, rd, submitted, receiver, t0)
            finally:
                for worker in everyone:
                    worker.stop()
            result = check(url, submitted, receiver)
            recovery = self.recovery(url)
        result.update(report)
        result.update(recovery)
        result["seconds_total"] = round(time.time() - started, 1)
        result["logs"] = str(log_dir)
        return result

    def inject(self, url: str, everyone: list[WorkerProcess], workers: list[WorkerProcess], pg: PrivatePostgres,
               rd: PrivateRedis, submitted: Submitted, receiver: CallbackReceiver, t0: float) -> dict[str, Any]:
        a = self.args
        engine = sa.create_engine(url, poolclass=NullPool)
        total = len(submitted.job_ids)
        kinds = self.schedule()
        # Faults at evenly spaced fractions of the jobs ended, between 5 % and 75 %.
        marks = [0.05 + 0.70 * i / max(1, len(kinds) - 1) for i in range(len(kinds))] if kinds else []
        deadline = t0 + a.timeout
        done = 0
        try:
            while kinds:
                done, _ = self.progress(engine)
                if done >= marks[0] * total:
                    kind = kinds.pop(0)
                    marks.pop(0)
                    self.faults.append(self.inject_one(kind, workers, pg, rd, engine))
                    logger.info("fault %s at %d/%d jobs ended", kind, done, total)
                    continue
                if time.time() > deadline:
                    break
                time.sleep(0.05)
            # Drain: every job ended, every batch completed and called back.
            while time.time() < deadline:
                done, _ = self.progress(engine)
                if done == total and len(receiver.deliveries) >= len(submitted.batches):
                    break
                time.sleep(0.2)
        finally:
            engine.dispose()
        finished = time.time()
        return {
            "faults_injected": dict(Counter(f.kind for f in self.faults)),
            "kills_mid_stage": sum(1 for f in self.faults if f.kind == "kill" and f.detail["mid_stage"]),
            "seconds_to_drain": round(finished - t0, 1),
            "jobs_per_s": round(total / max(1e-9, finished - t0), 1),
            "timed_out": done != total,
        }

    def inject_one(self, kind: str, workers: list[WorkerProcess], pg: PrivatePostgres, rd: PrivateRedis,
                   engine: sa.Engine) -> Fault:
        if kind == "kill":
            return self.kill_one(workers, engine)
        at = time.time()
        if kind == "redis_restart":
            rd.restart()
        elif kind == "redis_flush":
            rd.flush()
        elif kind == "postgres_restart":
            pg.restart()
        return Fault(kind, at, {"seconds": round(time.time() - at, 2)})

    def recovery(self, url: str) -> dict[str, Any]:
        ended = _terminal_times(url)
        last_fault = max((f.at for f in self.faults), default=None)
        kills = []
        for fault in self.faults:
            if fault.kind != "kill" or not fault.detail["job_ids"]:
                continue
            ids = fault.detail["job_ids"]
            stage_status = str(stage(fault.detail["stage"]).running)
            left = _left_stage_times(url, stage_status, ids)
            times = [ended.get(j) for j in ids]
            recovered = max(left.get(j, ended.get(j, float("inf"))) for j in ids) - fault.at
            completed = max(t if t is not None else float("inf") for t in times) - fault.at
            kills.append({
                "worker": fault.detail["worker"], "stage": fault.detail["stage"], "jobs": len(ids),
                # Until the killed stage was done again for every job it held (or the job ended otherwise); 0
                # when the worker had recorded the stage just before the kill (its log had not said so yet).
                "seconds_to_stage_recovered": round(max(0.0, recovered), 2),
                # Until every job it held ended (the rest of its pipeline included, behind any backlog).
                "seconds_to_jobs_completed": round(max(0.0, completed), 2),
            })
        last_end = max(ended.values(), default=None)
        return {
            "faults": [{"kind": f.kind, "at": datetime.fromtimestamp(f.at).isoformat(timespec="seconds"),
                        **{k: v for k, v in f.detail.items() if k != "job_ids"}} for f in self.faults],
            "seconds_drain_after_last_fault": round(last_end - last_fault, 1)
            if last_end is not None and last_fault is not None else None,
            "kills": kills,
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=500, help="jobs per batch (batches go round-robin "
                                                                    "across tenants)")
    parser.add_argument("--workers", type=int, default=4, help="stage worker processes (each killable)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--redis-restarts", type=int, default=2)
    parser.add_argument("--redis-flushes", type=int, default=1)
    parser.add_argument("--postgres-restarts", type=int, default=1)
    parser.add_argument("--restart-after-s", type=float, default=1.0, help="pause before a killed worker restarts")
    parser.add_argument("--distinct-images", type=int, default=64)
    parser.add_argument("--poison", type=int, default=0, help="plant this many poison jobs (each kills its worker "
                                                              "process every time); they must fail alone")
    parser.add_argument("--seed", type=int, default=0, help="seeds the fault schedule")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the jobs to end after enqueueing")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="worker setting overriding the default (repeatable), e.g. ETA_CHUNK_SIZE=16")
    parser.add_argument("--log-dir", help="keep the worker logs here (default: a temporary folder)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def _stop_on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` blocks: workers and servers stop


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    result = {"benchmark": "chaos", **Chaos(args).run()}
    ok = not (result["lost"] or result["duplicated"] or result["mismatched"] or result["failed_innocent"]
              or result["poison_failed"] != result["poison_jobs"] or result["batches_wrong"]
              or result["callbacks_missing"])
    result["ok"] = ok
    json.dump(result, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
