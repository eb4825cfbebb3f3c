"""`eta keys`: revocation by the key's full id (a 32-bit visible prefix may be shared), and the listing
that shows ids."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ETA = str(Path(sys.executable).with_name("eta"))


def _eta(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("ETA_") or k in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY"))}
    env["ETA_DATA_DIR"] = str(data_dir)
    return subprocess.run([ETA, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_key_is_revoked_by_its_id_and_never_by_prefix(tmp_path):
    assert _eta(tmp_path, "db", "upgrade").returncode == 0
    created = _eta(tmp_path, "keys", "create", "--tenant", "acme", "--role", "review")
    assert created.returncode == 0, created.stderr
    key_id = created.stderr.split("(id ", 1)[1].split(")", 1)[0]
    prefix = created.stderr.split("review key ", 1)[1].split(" ", 1)[0]

    by_prefix = _eta(tmp_path, "keys", "revoke", prefix)
    assert by_prefix.returncode != 0 and "not its prefix" in by_prefix.stderr
    listed = _eta(tmp_path, "keys", "list", "--tenant", "acme")
    assert key_id in listed.stdout and "live" in listed.stdout

    revoked = _eta(tmp_path, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and key_id in revoked.stdout
    assert "revoked" in _eta(tmp_path, "keys", "list", "--tenant", "acme").stdout
    again = _eta(tmp_path, "keys", "revoke", key_id)
    assert again.returncode == 1 and "no live key" in again.stderr
