"""`eta worker` processes driven from outside, for the chaos bench (`bench/chaos.py`) and the worker tests
(`tests/integration/workers`): one harness, so both start, watch, kill and stop workers the same way.

Not a benchmark itself. The chaos bench imports it as `_workers` (Python puts the script's folder on `sys.path`);
the tests import `bench._workers` from the repository root.

A worker runs in a process group of its own (its pool processes with it), writes its log to a file, and is
stopped politely (SIGTERM) or killed whole (SIGKILL to the group). What it holds is read from the database, not
from its log: a pool process that runs a stage holds leases on the stage's jobs, and the lease owner names the
process (`workers.leases.lease_owner`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from workers.stage_table import STAGES

ETA = str(Path(sys.executable).with_name("eta"))
# What the harness's own environment must not pass on: a worker is pointed at its services explicitly.
_SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "BLOB_BACKEND")
# The stage whose work a job in each running status is in.
_STAGE_OF_RUNNING_STATUS = {str(stage.running): stage.name for stage in STAGES}


def clean_environ() -> dict[str, str]:
    """This process's environment without anything that would point a worker elsewhere (ETA_*, service URLs)."""
    return {k: v for k, v in os.environ.items() if not (k.startswith("ETA_") or k in _SERVICE_VARIABLES)}


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


class WorkerProcess:
    """`eta worker` in its own process group, its log in a file (appended to across restarts)."""

    def __init__(self, env: dict[str, str], log_path: Path, queues: str = "pre,generate,post,control", *,
                 beat: bool = True, hostname: str | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.queues = queues
        self.beat = beat
        self.hostname = hostname
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, *, wait: bool = True, timeout: float = 90) -> WorkerProcess:
        """Start the worker (one pool process); with `wait`, return once it says it is ready."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = [ETA, "worker", "--queues", self.queues, "--concurrency", "1", "-l", "info"]
        if self.hostname:
            argv += ["-n", self.hostname]
        if self.beat:
            argv.append("--beat")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                         start_new_session=True)
        if wait:
            self.wait_for_log(" ready.", timeout=timeout)
        return self

    def log(self) -> str:
        """What the worker wrote since its last start."""
        with open(self.log_path, "rb") as handle:
            handle.seek(self._log_offset)
            return handle.read().decode(errors="replace")

    def wait_for_log(self, text: str, *, timeout: float = 60, also: str = "", since: int = 0) -> None:
        """Wait for a log line (after character `since`) that contains `text` and `also`.

        Raises:
            RuntimeError: the worker exited meanwhile.
            TimeoutError: no such line within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line and also in line for line in self.log()[since:].splitlines()):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.02)
        raise TimeoutError(f"{text!r} not in the worker log after {timeout}s:\n{self.log()[-4000:]}")

    @property
    def name(self) -> str:
        """The node name's first part (`stage-0` of `stage-0@chaos`), or the queues."""
        return self.hostname.split("@", 1)[0] if self.hostname else self.queues

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def held_jobs(self, engine: sa.Engine) -> tuple[str, list[str]] | None:
        """The stage a process of this worker is running now and the jobs it holds in it (their leases name the
        process), or None. None too when the database cannot be reached."""
        if self.proc is None:
            return None
        patterns = [f"%:{pid}:%" for pid in process_tree(self.proc.pid)]
        try:
            with engine.connect() as connection:
                rows = connection.execute(sa.text(
                    "SELECT id, status FROM jobs WHERE lease_owner LIKE ANY(CAST(:p AS text[])) "
                    "AND status = ANY(CAST(:s AS text[]))"),
                    {"p": patterns, "s": list(_STAGE_OF_RUNNING_STATUS)}).all()
        except sa.exc.OperationalError:
            return None
        if not rows:
            return None
        return _STAGE_OF_RUNNING_STATUS[str(rows[0].status)], [str(row.id) for row in rows]

    def idle(self, for_s: float = 1.5) -> bool:
        """No stage task running, and none started or finished for `for_s` seconds (read from the log)."""
        stage_lines = [line for line in self.log().splitlines() if "] stage " in line]
        started = sum(" started: jobs" in line for line in stage_lines)
        ended = sum(" done: jobs" in line or "unexpected error" in line for line in stage_lines)
        if started != ended:
            return False
        if not stage_lines:
            return True
        last = datetime.strptime(stage_lines[-1][1:24], "%Y-%m-%d %H:%M:%S,%f")
        return (datetime.now() - last).total_seconds() >= for_s

    def wait_idle(self, *, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker was still busy after {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once (no chance to hand anything back)."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM (a warm shutdown); the whole group is killed if it has not exited within 30 s."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

