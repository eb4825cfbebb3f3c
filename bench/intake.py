"""Intake benchmark: jobs/s accepted in batch submissions, and job-polling latency under concurrent clients.

Runs the real API (`eta serve`, gunicorn) against a fresh Postgres database and the real Redis broker (under a
key prefix of its own, deleted afterwards), then prints one JSON object. Targets (docs/design.md, reliability targets):
>= 500 jobs/s accepted in batch submissions; job polling p99 <= 20 ms with 50 clients polling every 250 ms,
>= 1,000 polls/s closed-loop on 2 cores. Polling runs twice: clients sending back the ETag they got
(If-None-Match, 304 while a job is unchanged), then plain GETs.

    .venv/bin/python bench/intake.py [--batches 5] [--items 1000] [--clients 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import sqlalchemy as sa
from PIL import Image
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _services import free_port, wait_api  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("ETA_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ETA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _png(i: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (i % 256, (i * 7) % 256, (i * 13) % 256)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _request(conn: http.client.HTTPConnection, method: str, path: str, key: str, body: bytes | None = None,
             etag: str | None = None) -> tuple[int, bytes, str | None]:
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if etag is not None:
        headers["If-None-Match"] = etag
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read(), response.getheader("ETag")


def _poll(port: int, key: str, job_ids: list[str], *, clients: int, seconds: float, interval_s: float,
          conditional: bool = True) -> dict:
    """`clients` threads, each with its own keep-alive connection, GET /v1/jobs/{id} on random jobs.

    interval_s = 0 is a closed loop (every client asks again as soon as it has its answer: the server's
    saturation); otherwise each client starts a request every interval_s, as a polling pipeline does.
    With `conditional`, a client polls its own ten jobs and sends back the ETag it last got for each
    (If-None-Match), as a polling pipeline should; an unchanged job answers 304. Without, random jobs, plain GETs.
    """
    latencies: list[float] = []
    errors = 0
    not_modified = 0
    lock = threading.Lock()
    kinds: Counter[str] = Counter()  # what the errors were: a status or an exception's type
    stop_at = time.perf_counter() + seconds

    def client(seed: int) -> None:
        nonlocal errors, not_modified
        rng = random.Random(seed)  # noqa: S311 - load generation, not security
        local, bad, unchanged = [], 0, 0
        etags: dict[str, str] = {}
        # A polling pipeline asks about its own jobs again and again: each client keeps to ten of them.
        mine = [job_ids[(seed * 10 + i) % len(job_ids)] for i in range(10)] if conditional else job_ids
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        next_at = time.perf_counter() + rng.random() * interval_s  # spread the clients' phases
        while True:
            if interval_s:
                time.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval_s
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            job_id = rng.choice(mine)
            try:
                status, _, etag = _request(c, "GET", f"/v1/jobs/{job_id}", key,
                                           etag=etags.get(job_id) if conditional else None)
            except (OSError, http.client.HTTPException) as exc:
                bad += 1
                kinds[type(exc).__name__] += 1
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                continue
            local.append(time.perf_counter() - t0)
            if status not in (200, 304):
                bad += 1
                kinds[str(status)] += 1
            unchanged += status == 304
            if etag:
                etags[job_id] = etag
        with lock:
            latencies.extend(local)
            errors += bad
            not_modified += unchanged

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = [x * 1000 for x in latencies]
    return {
        "clients": clients, "interval_ms": interval_s * 1000, "conditional": conditional, "seconds": seconds,
        "requests": len(ms), "not_modified": not_modified, "errors": errors, "error_kinds": dict(kinds),
        "requests_per_s": round(len(ms) / seconds, 1),
        "latency_ms": {"p50": round(_percentile(ms, 0.5), 2), "p95": round(_percentile(ms, 0.95), 2),
                       "p99": round(_percentile(ms, 0.99), 2), "max": round(max(ms), 2)},
    }


def run(args: argparse.Namespace) -> dict:
    name = f"eta_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    prefix = f"eta-bench-{secrets.token_hex(4)}:"
    # The polling clients share one key: lift its request rate limit, which would answer most of them 429.
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": REDIS_URL, "ETA_BROKER_KEY_PREFIX": prefix,
           "ETA_RATE_LIMIT_SUBMIT": "10000000/minute"}
    server = None
    # The server's log, to a file: a pipe nobody reads would stall the server once its buffer is full.
    server_log = tempfile.NamedTemporaryFile(prefix="eta-bench-intake-", suffix=".log", delete=False)  # noqa: SIM115
    try:
        from eta.store import make_engine, session_factory
        from eta.store import repository as repo
        from eta.store.models import ApiKeyRole
        from eta.store.schema import upgrade

        engine = make_engine(url)
        upgrade(engine)
        with session_factory(engine)() as session, session.begin():
            tenant = repo.create_tenant(session=session, name="bench")
            _, key = repo.create_api_key(session=session, tenant_id=tenant.id, role=ApiKeyRole.SUBMIT)
        engine.dispose()

        port = free_port()
        server = subprocess.Popen(  # noqa: S603 - our own CLI
            [str(REPO / ".venv/bin/eta"), "serve", "--port", str(port), "--workers", str(args.workers),
             "--threads", str(args.threads)], env=env, stdout=subprocess.DEVNULL, stderr=server_log)
        wait_api(port, server, timeout_s=60)

        # ---- intake: batches of `items` jobs, a quarter with an image of their own
        images = [_png(i) for i in range((args.items + 3) // 4)]  # one per fourth item, the last included
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        rates, job_ids = [], []
        for b in range(args.batches):
            items = [{"custom_id": f"b{b}-{i}", "prompt": f"question {i}",
                      "image_base64": images[i // 4] if i % 4 == 0 else None} for i in range(args.items)]
            body = json.dumps({"items": items, "params": {"max_new_tokens": 16}}).encode()
            start = time.perf_counter()
            status, data, _ = _request(conn, "POST", "/v1/batches", key, body)
            elapsed = time.perf_counter() - start
            if status != 202:
                raise RuntimeError(f"batch submit answered {status}: {data[:300]!r}")
            rates.append(args.items / elapsed)
            batch_id = json.loads(data)["id"]
            status, data, _ = _request(conn, "GET", f"/v1/batches/{batch_id}/results?limit=1000", key)
            job_ids += [job["id"] for job in json.loads(data)["data"]]

        polling = [_poll(port, key, job_ids, clients=args.clients, seconds=args.seconds, interval_s=interval / 1000,
                         conditional=conditional)
                   for conditional in (True, False) for interval in args.interval_ms]
        return {
            "benchmark": "intake",
            "server": {"gunicorn_workers": args.workers, "threads": args.threads, "database": "postgres",
                       "broker": "redis"},
            "intake": {"batches": args.batches, "items_per_batch": args.items,
                       "images_per_batch": len(images), "jobs_per_s": {
                           "min": round(min(rates), 1), "median": round(statistics.median(rates), 1),
                           "max": round(max(rates), 1)}, "target_jobs_per_s": 500},
            "polling": polling,
            "target_polling_p99_ms": 20,
            "note": "client and server share this machine's cores",
            "server_log": server_log.name,
        }
    finally:
        server_log.close()
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:  # gunicorn waits for keep-alive connections: do not wait long
                server.kill()
                server.wait(timeout=30)
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        for k in r.scan_iter(match=f"{prefix}*"):
            r.delete(k)
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval-ms", type=float, nargs="+", default=[0, 250, 100],
                        help="per-client polling intervals to run (0: closed loop)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (eta serve's default)")
    result = run(parser.parse_args())
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
