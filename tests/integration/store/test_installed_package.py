"""A non-editable install migrates its own schema: the wheel carries the Alembic environment.

The wheel is built from a copy of what the Dockerfiles copy (so no `build/` is left in the checkout) and
installed, without its dependencies, into a throwaway venv that borrows the running interpreter's
site-packages (through a `.pth` line, which does not run that directory's own `.pth` files, so an editable
install there stays out of the way). `eta db upgrade` then runs from an empty directory, with no source
checkout on the path and no setting naming the migrations.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import sqlalchemy as sa

from eta.store import schema

ROOT = Path(__file__).resolve().parents[3]


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_installed_wheel_upgrades_a_fresh_database_from_an_empty_directory(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for name in ("eta", "api", "workers"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", source, "-w", wheels,
         cwd=tmp_path)
    (wheel,) = wheels.glob("eta_service-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "eta/store/migrations/env.py" in names
    assert f"eta/store/migrations/versions/{schema.head_revision()}_" in "\n".join(names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--ignore-installed",
         wheel, cwd=tmp_path)

    empty = tmp_path / "empty"
    empty.mkdir()
    unset = ("PYTHONPATH", "DATABASE_URL")
    clean = {k: v for k, v in os.environ.items() if k not in unset and not k.startswith("ETA_")}
    clean["ETA_DATA_DIR"] = str(tmp_path / "data")
    where = _run(python, "-c", "import eta.store.schema as s; print(s.migrations_dir())", cwd=empty, env=clean)
    assert where.strip().startswith(str(site)), f"the migrations came from {where.strip()}, not the installed wheel"

    database = tmp_path / "fresh.sqlite3"
    out = _run(env_dir / "bin" / "eta", "db", "upgrade", "--database-url", f"sqlite:///{database}", cwd=empty,
               env=clean)
    assert out.strip() == f"schema at {schema.head_revision()}"
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        assert "jobs" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert list(empty.iterdir()) == []
