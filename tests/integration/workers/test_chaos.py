"""The reduced chaos schedule: 1,000 jobs from three tenants on three workers while workers are SIGKILLed
mid-stage and Redis restarts. bench/chaos.py starts a Postgres cluster and a redis-server of its own (it
restarts them), so this test never touches the shared servers; it runs with the service's default timeouts,
so the killed workers' jobs come back through their expired leases."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

def test_no_job_lost_duplicated_or_different_under_kills_and_a_redis_restart(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (CI installs it)")
    argv = [sys.executable, str(REPO / "bench" / "chaos.py"), "--jobs", "1000", "--tenants", "3", "--batch-size", "250",
            "--workers", "3", "--kills", "3", "--redis-restarts", "1", "--redis-flushes", "0", "--postgres-restarts",
            "0", "--timeout", "400", "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)  # noqa: S603
    try:
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:  # let it stop its workers and servers
            proc.terminate()
            proc.communicate(timeout=60)
    assert stdout.strip(), stderr[-4000:]
    report = json.loads(stdout)
    context = json.dumps(report, indent=1)[:4000]
    assert report["jobs"] == 1000, context
    assert report["lost"] == 0 and report["duplicated"] == 0 and report["mismatched"] == 0, context
    assert report["failed"] == {} and report["batches_wrong"] == 0 and report["callbacks_missing"] == 0, context
    assert report["faults_injected"] == {"kill": 3, "redis_restart": 1}, context
    assert report["kills_mid_stage"] == 3, context
    # A killed worker's jobs come back through their leases (30 s) and the next sweep (10 s), not the hour-long
    # stage timeouts.
    assert all(kill["seconds_to_stage_recovered"] < 120 for kill in report["kills"]), context
    assert proc.returncode == 0, context
