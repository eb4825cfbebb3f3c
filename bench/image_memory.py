"""Memory and time that hostile images cost: peak RSS of `eta run` per image, and of the API and a worker during a
batch of large images (issue 26, item 2). Prints one JSON object.

1. `eta run` (tiny models) on an ordinary photo (4032x3024 JPEG), on the thin PNGs of the issue (20000x100,
   1000000x40, 2000000x20: refused from the header in one line) and on the largest and thinnest images the limits
   admit (a 44700x894 PNG, aspect ratio 50 and 40 M pixels, its 894x44700 twin, a 6600x6000 PNG). Peak RSS is
   the child's `ru_maxrss`; the target is <= 1.5x the photo's, or a one-line refusal.
2. `eta serve` (Postgres + Redis) and `eta worker --pool solo` on a batch of `--images` distinct 6600x6000 PNGs:
   the time to accept the batch, the API's RSS before and after and its peak (VmHWM of its processes), and the
   worker's peak RSS while it runs the batch.

    .venv/bin/python bench/image_memory.py [--images 50] [--skip-run] [--skip-service] [--skip-worker]

Without PYTHONPATH pointing at a checkout, the `eta` commands run the code the venv was installed from.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _services import free_port, process_tree, wait_api  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ETA = str(REPO / ".venv/bin/eta")
ADMIN_URL = os.environ.get("ETA_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ETA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


# ------------------------------------------------------------------------------------------- images
def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def thin_png(width: int, height: int) -> bytes:
    """A complete 1-bit greyscale PNG (a few KB), written row by row: Pillow would need the pixels in memory."""
    import struct

    row = b"\x00" + b"\xaa" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def rgb_png(width: int, height: int, seed: int) -> bytes:
    """An RGB PNG that compresses well (flat colour with a distinct mark): large when decoded, small to send."""
    image = Image.new("RGB", (width, height), (seed % 256, (seed * 7) % 256, 90))
    image.paste((255, 255 - seed % 256, 0), (10, 10, 10 + 50 + seed, 60))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=6)
    return out.getvalue()


def photo_jpeg(width: int = 4032, height: int = 3024) -> bytes:
    rng = np.random.default_rng(0)
    coarse = (rng.random((height // 16, width // 16, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    image = image.filter(ImageFilter.GaussianBlur(2))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


# --------------------------------------------------------------------------------------- eta run
def _eta_run_peak(path: Path, tiny_dir: Path, env: dict[str, str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        [ETA, "run", "--image", str(path), "--prompt", "What is in this picture?", "--tiny-dir", str(tiny_dir),
         "--max-new-tokens", "4", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate()
    # ru_maxrss of this child alone: wait4 would race with communicate(), so read it from the child's status.
    peak_kb = _children_peak_kb()
    elapsed = time.perf_counter() - start
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return {"exit": proc.returncode, "seconds": round(elapsed, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
            "refusal": lines[-1] if proc.returncode else None, "refusal_lines": len(lines) if proc.returncode else 0,
            "ok": proc.returncode == 0 and bool(stdout)}


def _children_peak_kb() -> int:
    """ru_maxrss over waited-for children is a running maximum: a child's own peak shows only when it beats the
    ones before, so each measured run is made in a fresh Python (see `_measure_one`)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def _measure_one(path: str, tiny_dir: str) -> None:
    """Entry point of a fresh interpreter per image, so RUSAGE_CHILDREN holds that one run."""
    result = _eta_run_peak(Path(path), Path(tiny_dir), {**os.environ, "OMP_NUM_THREADS": "1"})
    print(json.dumps(result))


def measure_eta_run(work: Path) -> dict:
    tiny_dir = work / "tiny"
    subprocess.run([ETA, "models", "build-tiny", str(tiny_dir)], check=True, capture_output=True)  # noqa: S603
    cases = {
        "photo_4032x3024.jpg": photo_jpeg(),
        "thin_20000x100.png": thin_png(20_000, 100),
        "thin_1000000x40.png": thin_png(1_000_000, 40),
        "thin_2000000x20.png": thin_png(2_000_000, 20),
        "widest_44700x894.png": rgb_png(44_700, 894, 1),
        "tallest_894x44700.png": rgb_png(894, 44_700, 2),
        "large_6600x6000.png": rgb_png(6600, 6000, 3),
    }
    results = {}
    for name, data in cases.items():
        path = work / name
        path.write_bytes(data)
        done = subprocess.run(  # noqa: S603
            [sys.executable, __file__, "--measure-one", str(path), str(tiny_dir)],
            capture_output=True, text=True, check=True)
        results[name] = {"bytes": len(data), **json.loads(done.stdout.strip().splitlines()[-1])}
    photo = results["photo_4032x3024.jpg"]["peak_rss_mb"]
    for result in results.values():
        result["vs_photo"] = round(result["peak_rss_mb"] / photo, 2)
    return {"cases": results, "target": "peak RSS <= 1.5x the photo's, or a one-line refusal",
            "met": all(r["vs_photo"] <= 1.5 or (r["exit"] != 0 and r["refusal_lines"] == 1) for r in results.values())}


# ------------------------------------------------------------------------------------- the service
def _rss_mb(pids: list[int], field: str) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def measure_service(work: Path, count: int, *, worker: bool = True) -> dict:
    import http.client

    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    from eta.store import make_engine, session_factory
    from eta.store import repository as repo
    from eta.store.models import ApiKeyRole
    from eta.store.schema import upgrade

    name = f"eta_bench_img_{secrets.token_hex(4)}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    prefix = f"eta-bench-img-{secrets.token_hex(4)}:"
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": REDIS_URL, "ETA_BROKER_KEY_PREFIX": prefix,
           "ETA_DATA_DIR": str(work / "data"), "OMP_NUM_THREADS": "1", "ETA_RATE_LIMIT_SUBMIT": "100000/minute"}
    procs: list[subprocess.Popen[bytes]] = []
    logs = work / "service.log"
    try:
        engine = make_engine(url)
        upgrade(engine)
        with session_factory(engine)() as session, session.begin():
            tenant = repo.create_tenant(session=session, name="bench")
            _, key = repo.create_api_key(session=session, tenant_id=tenant.id, role=ApiKeyRole.SUBMIT)
        engine.dispose()
        port = free_port()
        with logs.open("ab") as log:
            api = subprocess.Popen([ETA, "serve", "--port", str(port), "--workers", "1", "--threads", "4"],  # noqa: S603
                                   env=env, stdout=subprocess.DEVNULL, stderr=log)
        procs.append(api)
        wait_api(port, api, timeout_s=60)
        api_pids = process_tree(api.pid)
        before = _rss_mb(api_pids, "VmRSS")

        boundary = "eta-bench-boundary"
        manifest = "".join(json.dumps({"custom_id": str(i), "prompt": "What is in this picture?",
                                       "image": f"{i}.png", "params": {"max_new_tokens": 4}}) + "\n"
                           for i in range(count))
        parts = [(b'name="manifest"; filename="m.jsonl"', manifest.encode())]
        parts += [(f'name="files"; filename="{i}.png"'.encode(), rgb_png(6600, 6000, i)) for i in range(count)]
        body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; ".encode() + disposition
                        + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
                        for disposition, data in parts) + f"--{boundary}--\r\n".encode()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        start = time.perf_counter()
        connection.request("POST", "/v1/batches", body=body, headers={
            "Authorization": f"Bearer {key}", "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Idempotency-Key": secrets.token_hex(8)})
        response = connection.getresponse()
        answer = response.read()
        accept_s = time.perf_counter() - start
        if response.status != 202:
            raise RuntimeError(f"the batch was answered {response.status}: {answer[:300]!r}")
        batch_id = json.loads(answer)["id"]
        api_after = _rss_mb(api_pids, "VmRSS")
        api_peak = _rss_mb(api_pids, "VmHWM")
        api = {"images": count, "image": "6600x6000 PNG, distinct", "body_mb": round(len(body) / 2**20, 1),
               "accept_s": round(accept_s, 2), "api_rss_mb": {"before": before, "after": api_after, "peak": api_peak}}
        if not worker:
            return api

        with logs.open("ab") as log:
            worker = subprocess.Popen([ETA, "worker", "--pool", "solo", "-l", "warning"], env=env,  # noqa: S603
                                      stdout=subprocess.DEVNULL, stderr=log)
        procs.append(worker)
        start = time.perf_counter()
        worker_peak, status = 0.0, None
        while time.perf_counter() - start < 1800:
            worker_peak = max(worker_peak, _rss_mb([worker.pid], "VmHWM"))
            connection.request("GET", f"/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {key}"})
            batch = json.loads(connection.getresponse().read())
            status = batch.get("status")
            if status in ("completed", "failed", "cancelled") or worker.poll() is not None:
                break
            time.sleep(1)
        worker_peak = max(worker_peak, _rss_mb([worker.pid], "VmHWM"))
        return {**api, "worker": {"pool": "solo", "peak_rss_mb": worker_peak, "batch_status": status,
                           "counts": batch.get("counts"), "seconds": round(time.perf_counter() - start, 1)},
                "log": str(logs)}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for redis_key in client.scan_iter(f"{prefix}*"):
            client.delete(redis_key)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--measure-one":
        _measure_one(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50, help="6600x6000 PNGs in the service's batch")
    parser.add_argument("--skip-run", action="store_true", help="skip the `eta run` measurements")
    parser.add_argument("--skip-service", action="store_true", help="skip the API and worker measurements")
    parser.add_argument("--skip-worker", action="store_true", help="measure the API's intake only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eta-bench-images-") as folder:
        work = Path(folder)
        out: dict = {"benchmark": "image_memory"}
        if not args.skip_run:
            out["eta_run"] = measure_eta_run(work)
        if not args.skip_service:
            out["service"] = measure_service(work, args.images, worker=not args.skip_worker)
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
