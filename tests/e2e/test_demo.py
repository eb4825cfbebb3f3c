"""`eta demo` end to end, as a newcomer runs it: embedded (no servers), then on Postgres and Redis."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import fresh_postgres_database

pytestmark = [pytest.mark.models]

REDIS_URL = os.environ.get("ETA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("ETA_") or k in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY"))}
    if "ETA_SAMPLES_DIR" in os.environ:
        env["ETA_SAMPLES_DIR"] = os.environ["ETA_SAMPLES_DIR"]
    return {**env, "ETA_DEVICE": "cpu", **extra}


def _run_demo(env: dict[str, str], data_dir: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "eta", "demo", "--max-new-tokens", "8"], env=env,
                          capture_output=True, text=True, timeout=400)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert re.search(r"batch completed: 11 succeeded; 11 jobs in [\d.]+s = [\d.]+ jobs/s", output), output[-3000:]
    assert "flagged audit records" in output and "text-only" in output
    assert re.search(r"model calls per stage: pre clip_text 1, clip_image 1; generate ", output)
    # Both children were asked to stop and did: the worker shut down warm, gunicorn's master exited.
    logs = data_dir / "demo-logs"
    assert "Warm shutdown" in (logs / "worker.log").read_text()
    assert "Shutting down: Master" in (logs / "api.log").read_text()
    return output


def test_the_demo_runs_embedded_on_a_bare_machine(tmp_path: Path):
    # No DATABASE_URL, no REDIS_URL: SQLite and the folder broker; the tiny models are built on the way.
    output = _run_demo(_environ(ETA_DATA_DIR=str(tmp_path)), tmp_path)
    assert "broker:   embedded" in output and "database: sqlite:///" in output
    assert (tmp_path / "tiny-models" / "eta-tiny.json").is_file()


@pytest.mark.postgres
@pytest.mark.redis
def test_the_demo_runs_on_postgres_and_redis(tmp_path: Path, tiny_models_dir: Path):
    (tmp_path / "tiny-models").symlink_to(tiny_models_dir, target_is_directory=True)
    prefix = f"eta-demo-test-{secrets.token_hex(4)}:"
    try:
        with fresh_postgres_database("eta_demo") as url:
            output = _run_demo(_environ(ETA_DATA_DIR=str(tmp_path), DATABASE_URL=url, REDIS_URL=REDIS_URL,
                                        ETA_BROKER_KEY_PREFIX=prefix), tmp_path)
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
    assert "database: postgresql" in output and f"broker:   {REDIS_URL}" in output
