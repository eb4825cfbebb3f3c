"""The OpenAPI document tells the truth: schemathesis (every check, every phase) against a live `eta serve`.

Twice: with the project's hooks, where nothing may fail; and raw, as a new user would run it (no config file, no
hooks), where the only failures allowed are the false positives docs/operations.md documents ("Fuzzing the
document"): schema-valid requests refused for what no JSON Schema can state.

Every check runs on every operation; tests/fuzz/schemathesis.toml only adds the refusal statuses gunicorn answers
itself (414, 431) to the statuses schemathesis counts as a refusal. tests/fuzz/hooks.py generates what no schema
can state (decodable images, JSONL manifests, public callback URLs).

The server runs as operators run it (gunicorn, embedded SQLite and broker, a key made with `eta keys`).
The seed is fixed and the examples per operation bounded, so the run is reproducible and takes about a
minute; any failed check fails the test, with schemathesis' report as the message.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SEED, MAX_EXAMPLES = 1, 10
# schemathesis gives up on an answer after 10 s and reports a network error. The coverage phase sends a batch of
# the maximum 10,000 items, which a loaded machine (CI's two cores, shared) can take longer than that to accept.
REQUEST_TIMEOUT_S = "120"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("ETA_") or k in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY"))}
    # The fuzzer is one client sending thousands of requests, many without a valid key: limits that a
    # tenant would meet are lifted so that it reaches every route (429s are documented either way).
    env.update({"ETA_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO), "ETA_RATE_LIMIT_ADMIN": "1000000/minute",
                "ETA_RATE_LIMIT_AUTH_FAILURES": "1000000/minute",
                # The hooks' callback URL lies in TEST-NET-1 (never routable); the allow-list admits it.
                "ETA_CALLBACK_ALLOWED_NETWORKS": "192.0.2.0/24"})
    return env


def _wait_until_up(url: str, server: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"eta serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a local URL
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"eta serve did not answer {url} within {timeout} s")


@pytest.fixture
def live_server(tmp_path: Path):
    env = _env(tmp_path / "data")
    subprocess.run([str(BIN / "eta"), "db", "upgrade"], env=env, check=True, capture_output=True)
    key = subprocess.run([str(BIN / "eta"), "keys", "create", "--tenant", "fuzz", "--role", "admin"], env=env,
                         check=True, capture_output=True, text=True).stdout.strip()
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([str(BIN / "eta"), "serve", "--port", str(port), "--workers", "1", "--threads", "4"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(f"{base}/healthz", server)
        yield base, key, env
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_schemathesis_finds_no_failure(live_server):
    base, key, env = live_server
    command = [str(BIN / "schemathesis"), "--config-file", str(REPO / "tests/fuzz/schemathesis.toml"), "run",
               f"{base}/v1/openapi.json", "--url", base, "--seed", str(SEED),
               "--max-examples", str(MAX_EXAMPLES), "--request-timeout", REQUEST_TIMEOUT_S,
               "-H", f"Authorization: Bearer {key}"]
    result = subprocess.run(command, env={**env, "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks"}, capture_output=True,
                            text=True, timeout=900, cwd=REPO)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-8000:]
    assert "No issues found" in report or " passed" in report, report[-3000:]


# What the server refuses and no schema can state, as its problem's detail says it (docs/operations.md, "Fuzzing
# the document"). schemathesis reports each as ST202 (positive_data_acceptance): a false positive of that check for
# a refusal the schema cannot express (upstream: schemathesis/schemathesis#3516).
DOCUMENTED_REFUSALS = {
    "a callback or image host that does not resolve to public addresses":
        r"(callback_url|image_url) host .*(does not resolve|non-public)",
    "a preset the tenant has not stored": r"(no preset|preset .* has no version)",
    "an image sent both as a file and by URL": r"both",
    "image bytes that are not an image": r"not an image",
    "a cursor the server did not write": r"cursor",
    "a manifest that is not JSON Lines of jobs": r"(^|: )(line \d+|manifest)",
}


def _refusals(report: str) -> list[str]:
    """The `detail` of every failure block of schemathesis' text report."""
    blocks = re.split(r"\n\d+\. Test Case ID: ", report)[1:]
    details = []
    for block in blocks:
        found = re.search(r'"detail": "((?:[^"\\]|\\.)*)"', block)
        details.append(found.group(1) if found else block[:600])
    return details


def test_raw_schemathesis_finds_only_the_documented_false_positives(live_server, tmp_path):
    base, key, env = live_server
    report_path = tmp_path / "run.json"
    command = [str(BIN / "schemathesis"), "run", f"{base}/v1/openapi.json", "--url", base, "--checks", "all",
               "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--request-timeout", REQUEST_TIMEOUT_S,
               "-H", f"Authorization: Bearer {key}",
               "--report", "json", "--report-json-path", str(report_path)]
    raw_env = {k: v for k, v in env.items() if not k.startswith("SCHEMATHESIS_")}
    # Run from an empty folder: schemathesis reads a schemathesis.toml in its working directory.
    result = subprocess.run(command, env=raw_env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    report = result.stdout + result.stderr
    run = json.loads(report_path.read_text())
    assert run["complete"] and not run["errors"], report[-8000:]
    assert {failure["code"] for failure in run["failures"]} <= {"ST202"}, report[-8000:]
    for detail in _refusals(report):
        assert any(re.search(pattern, detail) for pattern in DOCUMENTED_REFUSALS.values()), (
            f"an undocumented refusal of schema-valid data: {detail}\n{report[-8000:]}")
