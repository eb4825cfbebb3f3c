"""Private Postgres and Redis servers for benchmarks that restart, flush or load them.

Each lives in a temporary folder on a free port and is removed afterwards: a chaos run can restart Postgres
and flush Redis without touching the servers other work on this machine uses. Postgres comes from the
installed binaries (`initdb`, `pg_ctl`; as root they run as the `postgres` user, which initdb requires).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from _workers import process_tree  # noqa: F401 - the bench scripts import it from here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_api(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    """Wait until the API on `port` answers /healthz with 200; RuntimeError if it exits or takes too long."""
    import http.client

    deadline = time.time() + timeout_s
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            raise RuntimeError("the API did not start")
        time.sleep(0.2)


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (looked in /usr/lib/postgresql/*/bin and PATH)")
    return path


class PrivatePostgres:
    """A throwaway Postgres cluster (trust authentication, user `postgres`, fsync off: a benchmark's data)."""

    def __init__(self, *, max_connections: int = 200) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="eta-bench-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.max_connections = max_connections
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = ["runuser", "-u", "postgres", "--", *argv] if self._as_postgres else list(argv)
        return subprocess.run(command, check=check, capture_output=True, timeout=120)  # noqa: S603

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PrivatePostgres:
        if not self.data.exists():
            self._run(_postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                      "--no-sync")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off -c max_connections={self.max_connections}")
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def restart(self) -> None:
        """Stop (fast: open connections are cut) and start again, as an operator's restart does."""
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.start()

    def create_database(self, name: str) -> str:
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            admin.dispose()
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists():
            self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class PrivateRedis:
    """A throwaway redis-server. `restart()` keeps its data (saved to disk first); `flush()` loses it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="eta-bench-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def start(self) -> PrivateRedis:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed binary, our own arguments
            [server, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root),
             "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no", "--logfile", str(self.root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def restart(self) -> None:
        """Save the data, stop the server, start it again on the same port (the data comes back)."""
        with contextlib.suppress(redis.RedisError):
            self.client().shutdown(save=True)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self.start()

    def flush(self) -> None:
        self.client().flushall()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
