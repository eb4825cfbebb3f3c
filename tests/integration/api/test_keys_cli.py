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


def test_key_creation_and_revocation_are_administrative_events(tmp_path):
    from api import create_app
    from eta.settings import Settings
    from eta.store import make_engine

    assert _eta(tmp_path, "db", "upgrade").returncode == 0
    admin = _eta(tmp_path, "keys", "create", "--tenant", "acme", "--role", "admin")
    created = _eta(tmp_path, "keys", "create", "--tenant", "acme", "--role", "submit", "--name", "pipeline")
    key_id = created.stderr.split("(id ", 1)[1].split(")", 1)[0]
    assert _eta(tmp_path, "keys", "revoke", key_id).returncode == 0
    assert _eta(tmp_path, "keys", "create", "--tenant", "other", "--role", "admin").returncode == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'eta.sqlite3'}")
    try:
        client = create_app(Settings(eta_data_dir=tmp_path), engine=engine).test_client()
        events = client.get("/v1/admin/events", headers={"Authorization": f"Bearer {admin.stdout.strip()}"}).json
    finally:
        engine.dispose()
    seen = [(e["action"], e["actor"], e["details"].get("role")) for e in events["data"]]
    # Newest first; the operator's command line acted (no key); the other tenant's key is not listed.
    assert seen == [("key_revoked", "cli", "submit"), ("key_created", "cli", "submit"), ("key_created", "cli", "admin")]
    assert events["data"][0]["subject"] == key_id and events["data"][1]["details"]["name"] == "pipeline"
