"""The declared import layers (pyproject.toml, [tool.importlinter]) hold, and `lint-imports` catches a breach.

Each breach is planted in a copy of the three packages, never in the checkout: an upward import from the
library, a function-level one (import-linter counts those too) and an API module reaching past
`workers.enqueue`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=where, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def copy_of_the_packages(tmp_path: Path) -> Path:
    for package in ("eta", "api", "workers"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_checkout_keeps_every_contract() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("path", "source", "broken", "shown"), [
    ("eta/safety/planted.py", "import api.app\n",
     "Layers: commands > api > workers > service core > library BROKEN", "eta.safety.planted -> api.app"),
    ("eta/models/planted.py", "def later():\n    from workers import tasks\n    return tasks\n",
     "Layers: commands > api > workers > service core > library BROKEN", "eta.models.planted -> workers.tasks"),
    ("eta/store/planted.py", "from api import problems\n",
     "Layers: commands > api > workers > service core > library BROKEN", "eta.store.planted -> api.problems"),
    ("api/planted.py", "from workers import sweeper\n",
     "The API reaches the workers only through workers.enqueue BROKEN", "api.planted -> workers.sweeper"),
])
def test_a_planted_import_breaks_its_contract(copy_of_the_packages: Path, path: str, source: str, broken: str,
                                              shown: str) -> None:
    (copy_of_the_packages / path).write_text(source)
    done = _lint_imports(copy_of_the_packages)
    assert done.returncode == 1, done.stdout + done.stderr
    assert broken in done.stdout
    assert shown in done.stdout


def test_a_new_module_of_eta_must_be_given_a_layer(copy_of_the_packages: Path) -> None:
    (copy_of_the_packages / "eta" / "unplaced.py").write_text("VALUE = 1\n")
    done = _lint_imports(copy_of_the_packages)
    assert done.returncode == 1
    assert "Every module of eta has a place in the layers BROKEN" in done.stdout
    assert "eta.unplaced" in done.stdout
