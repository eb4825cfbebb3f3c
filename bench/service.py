"""Service benchmark: what the service itself costs, with the models taken out (`ETA_MODELS=instant`).

Starts a Postgres cluster and a redis-server of its own, the API (`eta serve`, gunicorn), `--workers` stage
worker processes and a control worker (sweeper), then:

1. **throughput and latency**: tenant A submits `--jobs` jobs through the API in batches of `--batch-items`
   (a quarter with an image); jobs/s through all three stages per worker process (`jobs_per_s_per_worker`, the headline;
   DESIGN section 6 asks >= 200) and end-to-end latency percentiles (submitted to finished, from the database);
2. **fairness**: while A's batch runs, tenant B submits single jobs one at a time; then B submits the same
   jobs with nothing else running. B's latency behind A's batch against B's latency alone and against one
   chunk's processing time;
3. **database round trips per job per stage**: one chunk of `ETA_CHUNK_SIZE` jobs through each stage in this
   process (the worker's own code: `workers.tasks.run_stage`), every statement, BEGIN and COMMIT counted with
   SQLAlchemy events;
4. **memory**: resident set size of the API and of the workers (each process tree) after a warm-up (the
   measured phase's requests, twice per API worker) and after all the jobs; DESIGN section 6 asks <= 5 % growth.

Prints one JSON document.

    .venv/bin/python bench/service.py [--jobs 10000] [--workers 1]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _services import PrivatePostgres, PrivateRedis, free_port, process_tree, wait_api  # noqa: E402
from chaos import Worker, _clean_environ  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ETA = str(Path(sys.executable).with_name("eta"))
SECRET = "service-bench-secret-0123456789abcdef"  # noqa: S105 - a private throwaway service
PARAMS = {"max_new_tokens": 32}


# ------------------------------------------------------------------------------------------ helpers
def _png(i: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (i * 37 % 256, i * 91 % 256, i * 13 % 256)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 3), "n": len(ordered)}


def _rss_tree_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB (from /proc)."""
    total_kib = 0
    for current in process_tree(pid):
        try:
            with open(f"/proc/{current}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total_kib += int(line.split()[1])
        except OSError:
            continue
    return round(total_kib / 1024, 1)


class Api:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        headers = {"Authorization": f"Bearer {key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        return response.status, json.loads(payload) if payload else None


def _wait_terminal(engine: sa.Engine, job_ids: list[str], timeout: float) -> None:
    """Wait until the jobs ended (a few jobs: polled often; latencies come from the rows' timestamps)."""
    _wait_until_none_left(engine, "id = ANY(CAST(:ids AS uuid[]))", {"ids": job_ids}, timeout, every_s=0.02)


def _wait_batches(engine: sa.Engine, batch_ids: list[str], timeout: float) -> None:
    """Wait until every job of the batches ended: one indexed count a few times a second, so that this process
    takes next to nothing from the cores it measures (throughput comes from the rows' timestamps)."""
    _wait_until_none_left(engine, "batch_id = ANY(CAST(:ids AS uuid[]))", {"ids": batch_ids}, timeout, every_s=0.25)


def _wait_until_none_left(engine: sa.Engine, where: str, params: dict[str, Any], timeout: float, every_s: float
                          ) -> None:
    deadline = time.monotonic() + timeout
    # `where` is one of the two fixed conditions above, never outside input.
    query = sa.text(f"SELECT count(*) FROM jobs WHERE {where} "  # noqa: S608
                    "AND status NOT IN ('succeeded','failed','cancelled')")
    while time.monotonic() < deadline:
        with engine.connect() as c:
            left = c.execute(query, params).scalar()
        if not left:
            return
        time.sleep(every_s)
    raise TimeoutError(f"{left} jobs not finished after {timeout}s")


def _latencies(engine: sa.Engine, job_ids: list[str]) -> list[float]:
    with engine.connect() as c:
        rows = c.execute(sa.text("SELECT extract(epoch FROM finished_at - created_at) FROM jobs "
                                 "WHERE id = ANY(CAST(:ids AS uuid[]))"), {"ids": job_ids}).all()
    return [float(r[0]) for r in rows if r[0] is not None]


# ----------------------------------------------------------------------------------- round trips
def count_round_trips(url: str, redis_url: str, chunk: int) -> dict[str, Any]:
    """One chunk through each stage in this process, counting every database round trip per stage."""
    from eta.settings import Settings, get_settings
    from eta.store import make_engine, session_factory
    from eta.store import repository as repo
    from eta.store.repository import NewJob

    os.environ.update({"DATABASE_URL": url, "REDIS_URL": redis_url, "ETA_MODELS": "instant",
                       "ETA_CHUNK_SIZE": str(chunk)})
    get_settings.cache_clear()
    from workers import tasks
    from workers.app import create_celery_app
    from workers.stage_table import STAGES

    engine = make_engine(url)
    sessions = session_factory(engine)
    image = base64.b64decode(_png(1))
    with sessions() as session, session.begin():
        tenant = repo.create_tenant(session=session, name=f"round-trips-{uuid.uuid4().hex[:6]}")
        from eta.store import make_blob_store

        sha = repo.store_image(session=session, blobs=make_blob_store(session=session, settings=Settings(
            database_url=url)), data=image, mime="image/png", width=32, height=32)
        made = repo.create_batch_with_jobs(session=session, tenant_id=tenant.id, jobs=[
            NewJob(prompt=f"round trip {i}", image_sha256=sha if i % 4 == 0 else None, params=PARAMS, seed=i)
            for i in range(chunk)])
    engine.dispose()

    counts: Counter[str] = Counter()
    app = create_celery_app(get_settings())
    run_engine = app.context.engine()

    @sa.event.listens_for(run_engine, "before_cursor_execute")
    def _statement(*_: Any) -> None:
        counts["statements"] += 1

    @sa.event.listens_for(run_engine, "commit")
    def _commit(*_: Any) -> None:
        counts["commits"] += 1

    @sa.event.listens_for(run_engine, "rollback")
    def _rollback(*_: Any) -> None:
        counts["rollbacks"] += 1

    class _Request:
        id = str(uuid.uuid4())
        retries = 0

    class _Task:
        request = _Request()
        context = app.context

    _Task.app = app  # type: ignore[attr-defined]

    per_stage = {}
    ids: list[Any] = [str(j) for j in made.job_ids]
    app.context.models_for(("clip", "reward", "vlm"))  # load once, outside the counts
    for stage in STAGES:
        counts.clear()
        start = time.perf_counter()
        forwarded = tasks.run_stage(_Task(), stage, ids, None)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        ids = forwarded or ids
        # Statements are sent one per round trip; psycopg sends BEGIN with the first one, COMMIT on its own.
        trips = counts["statements"] + counts["commits"] + counts["rollbacks"]
        per_stage[stage.name] = {"round_trips": trips, "per_job": round(trips / chunk, 3),
                                 "statements": counts["statements"], "commits": counts["commits"],
                                 "ms_per_job_in_process": round(seconds * 1000 / chunk, 3)}
    # After a stage task returns, Celery publishes the next message and `task_success` lets the jobs go: one
    # more statement per handed-on chunk (not counted above), two chunks of the three.
    return {"chunk_size": chunk, "stages": per_stage,
            "per_job_all_stages": round(sum(s["per_job"] for s in per_stage.values()) + 2 / chunk, 3)}


# ------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict[str, Any]:
    from eta.store import make_engine, session_factory
    from eta.store import repository as repo
    from eta.store.models import ApiKeyRole
    from eta.store.schema import upgrade

    with PrivatePostgres() as pg, PrivateRedis() as rd:
        url = pg.create_database("eta_service")
        engine = make_engine(url)
        upgrade(engine)
        with session_factory(engine)() as session, session.begin():
            keys = {}
            for name in ("tenant-a", "tenant-b"):
                tenant = repo.create_tenant(session=session, name=name)
                keys[name] = repo.create_api_key(session=session, tenant_id=tenant.id, role=ApiKeyRole.SUBMIT)[1]
        engine.dispose()
        data_dir = pg.root.parent / f"{pg.root.name}-data"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {**_clean_environ(), "DATABASE_URL": url, "REDIS_URL": rd.url, "ETA_MODELS": "instant",
               "SECRET_KEY": SECRET, "ETA_DATA_DIR": str(data_dir),
               **dict(s.split("=", 1) for s in args.setting)}
        log_dir = Path(args.log_dir) if args.log_dir else pg.root.parent / f"{pg.root.name}-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        api_log = open(log_dir / "api.log", "ab")  # noqa: SIM115 - the child owns it
        api_proc = subprocess.Popen([ETA, "serve", "--port", str(port), "--workers", str(args.api_workers),  # noqa: S603
                                     "--threads", str(args.api_threads)], env=env, stdout=api_log,
                                    stderr=subprocess.STDOUT)
        workers = [Worker(f"stage-{i}", "pre,generate,post", env, log_dir) for i in range(args.workers)]
        control = Worker("control", "control", env, log_dir, beat=True)
        check = sa.create_engine(url, pool_size=1)  # one connection kept: a connect per poll costs a backend
        api = Api(port)
        try:
            for worker in [*workers, control]:
                worker.start()
            for worker in [*workers, control]:
                worker.wait_ready()
            wait_api(port, api_proc)
            images = [_png(i) for i in range(16)]

            def items(n: int, tag: str) -> list[dict[str, Any]]:
                return [{"prompt": f"{tag} question {i}: what is shown?", "custom_id": f"{tag}-{i}",
                         "image_base64": images[i % 16] if i % 4 == 0 else None} for i in range(n)]

            # Warm-up, before the memory baseline: every code path loaded, and each API worker process given the
            # requests of the measured phase (batches of the size used below, their pages of results, single
            # jobs), twice on average: one new connection per request, so the kernel spreads them over the
            # workers. A process's first parse of a 1,000-item body raises its high-water mark once; growth
            # beyond that over 10,000 jobs is what the target is about.
            warm_ids = []
            for round_ in range(2 * args.api_workers):
                status, warm = api.request("POST", "/v1/batches", keys["tenant-a"],
                                           {"items": items(args.batch_items, f"warm{round_}"), "params": PARAMS})
                assert status == 202, warm
                warm_ids.append(warm["id"])
            _wait_batches(check, warm_ids, 600)
            for batch_id in warm_ids:
                _batch_job_ids(api, keys["tenant-a"], batch_id)
            _single_jobs(api, keys["tenant-b"], check, 2 * args.api_workers, "warm")
            rss_start = {"api_mib": _rss_tree_mib(api_proc.pid),
                         "workers_mib": [_rss_tree_mib(w.proc.pid) for w in workers if w.proc]}

            # B alone: single jobs, one at a time.
            alone = _single_jobs(api, keys["tenant-b"], check, args.single_jobs, "alone")

            # A's jobs (batches of --batch-items, back to back); B's single jobs behind them.
            start = time.time()
            batch_ids = []
            for index in range(0, args.jobs, args.batch_items):
                count = min(args.batch_items, args.jobs - index)
                status, batch = api.request("POST", "/v1/batches", keys["tenant-a"],
                                            {"items": items(count, f"a{index}"), "params": PARAMS})
                assert status == 202, batch
                batch_ids.append(batch["id"])
            submitted_s = time.time() - start
            time.sleep(1.0)
            behind = _single_jobs(api, keys["tenant-b"], check, args.single_jobs, "behind")
            a_ids = [job_id for batch_id in batch_ids for job_id in _batch_job_ids(api, keys["tenant-a"], batch_id)]
            with check.connect() as c:
                a_left_when_b_done = c.execute(sa.text(
                    "SELECT count(*) FROM jobs WHERE batch_id = ANY(CAST(:b AS uuid[])) "
                    "AND status NOT IN ('succeeded','failed')"), {"b": batch_ids}).scalar()
            _wait_batches(check, batch_ids, args.timeout)
            with check.connect() as c:
                first, last, ok = c.execute(sa.text(
                    "SELECT extract(epoch FROM min(created_at)), extract(epoch FROM max(finished_at)), "
                    "count(*) FILTER (WHERE status = 'succeeded') FROM jobs WHERE batch_id = ANY(CAST(:b AS uuid[]))"),
                    {"b": batch_ids}).one()
            drain_s = float(last) - float(first)
            rss_end = {"api_mib": _rss_tree_mib(api_proc.pid),
                       "workers_mib": [_rss_tree_mib(w.proc.pid) for w in workers if w.proc]}
            a_latency = _latencies(check, a_ids)
        finally:
            for worker in [*workers, control]:
                worker.stop()
            api_proc.terminate()
            api_proc.wait(timeout=30)
            api_log.close()
            check.dispose()
        trips = count_round_trips(url, rd.url, args.chunk_size)

    per_worker = args.jobs / drain_s / args.workers
    chunk_s = args.chunk_size / (args.jobs / drain_s)
    growth = {
        "api_percent": round(100 * (rss_end["api_mib"] / rss_start["api_mib"] - 1), 2),
        "workers_percent": [round(100 * (e / s - 1), 2) for s, e in zip(rss_start["workers_mib"],
                                                                           rss_end["workers_mib"], strict=False)],
    }
    return {
        "benchmark": "service",
        "jobs_per_s_per_worker": round(per_worker, 1),
        "target_jobs_per_s_per_worker": 200,
        "setup": {"jobs": args.jobs, "stage_workers": args.workers, "api_workers": args.api_workers,
                  "api_threads": args.api_threads, "chunk_size": args.chunk_size, "models": "instant",
                  "cpu_count": os.cpu_count(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                  "note": "API, workers, Postgres, Redis and this client share the machine's cores"},
        "throughput": {"jobs": args.jobs, "succeeded": ok, "submit_seconds": round(submitted_s, 2),
                       "seconds_first_submitted_to_last_finished": round(drain_s, 2),
                       "jobs_per_s": round(args.jobs / drain_s, 1)},
        "latency_s_submitted_to_finished": {"batch_of_a": _percentiles(a_latency)},
        "fairness": {
            "b_single_job_latency_s_alone": _percentiles(alone),
            "b_single_job_latency_s_behind_a_batch": _percentiles(behind),
            "a_jobs_still_unfinished_when_b_was_done": a_left_when_b_done,
            "one_chunk_processing_s": round(chunk_s, 3),
            "target": "B behind A's batch within about one chunk's processing time of B alone",
        },
        "db_round_trips": trips,
        "rss": {"after_warmup": rss_start, "after_jobs": rss_end, "growth": growth, "target_growth_percent": 5},
        "logs": str(log_dir),
    }


def _batch_job_ids(api: Api, key: str, batch_id: str) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        path = f"/v1/batches/{batch_id}/results?limit=1000" + (f"&cursor={cursor}" if cursor else "")
        status, page = api.request("GET", path, key)
        assert status == 200, page
        ids += [job["id"] for job in page["data"]]
        cursor = page.get("next_cursor")
        if not cursor:
            return ids


def _single_jobs(api: Api, key: str, engine: sa.Engine, n: int, tag: str) -> list[float]:
    """Submit `n` single jobs one after another, each once the previous one finished; their latencies."""
    latencies = []
    for i in range(n):
        status, job = api.request("POST", "/v1/jobs", key, {"prompt": f"{tag} single {i}", "params": PARAMS})
        assert status == 202, job
        _wait_terminal(engine, [job["id"]], 600)
        latencies += _latencies(engine, [job["id"]])
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1, help="stage worker processes")
    parser.add_argument("--batch-items", type=int, default=1000, help="jobs per batch tenant A submits")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--api-threads", type=int, default=4, help="threads per gunicorn worker (eta serve's default)")
    parser.add_argument("--chunk-size", type=int, default=32, help="ETA_CHUNK_SIZE of the round-trip count "
                                                                   "(the service runs with its default)")
    parser.add_argument("--single-jobs", type=int, default=10, help="tenant B's single jobs, alone and behind A")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--log-dir")
    args = parser.parse_args()
    result = run(args)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
