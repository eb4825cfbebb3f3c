"""The worker's main process refuses to fork a pool after importing torch; re-sent chunks shrink to one job
before a job fails as stalled; the planted faults of the instant models are off unless asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from eta.models.instant import planted_fault
from eta.settings import Settings
from workers.sweeper import out_of_attempts, resend_chunk_size


def _settings(chunk_size: int, max_attempts: int) -> Settings:
    return Settings(eta_chunk_size=chunk_size, eta_max_stage_attempts=max_attempts)


def test_a_resent_chunk_halves_per_try_down_to_one_job():
    settings = _settings(32, 3)
    assert [resend_chunk_size(attempt, settings) for attempt in range(1, 8)] == [32, 16, 8, 4, 2, 1, 1]


@pytest.mark.parametrize(("chunk_size", "max_attempts", "fails_after"), [
    (32, 3, 6),   # 32, 16, 8, 4, 2, 1: six tries, the last one alone
    (4, 3, 3),    # 4, 2, 1
    (4, 5, 5),    # alone from the third try; the attempts set the limit
    (1, 3, 3),    # always alone
])
def test_a_job_fails_as_stalled_only_after_a_try_alone(chunk_size, max_attempts, fails_after):
    settings = _settings(chunk_size, max_attempts)
    assert [out_of_attempts(n, settings) for n in range(1, fails_after + 1)] == [False] * (fails_after - 1) + [True]
    assert resend_chunk_size(fails_after, settings) == 1


def _import_in_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def test_the_worker_main_process_refuses_to_fork_after_importing_torch():
    done = _import_in_child(
        "from workers.signals import check_fork_safe, ForkUnsafeParent\n"
        "check_fork_safe('prefork'); check_fork_safe('solo'); print('no torch: fine')\n"
        "import torch\n"
        "check_fork_safe('solo'); check_fork_safe('threads'); print('solo, threads: fine')\n"
        "check_fork_safe('prefork')\n")
    assert done.stdout.splitlines() == ["no torch: fine", "solo, threads: fine"], done.stderr
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("eta worker: torch was imported in the worker's main")


def test_starting_a_worker_imports_no_torch_in_its_main_process():
    # What `eta worker` imports before Celery forks: the command, the Celery app and its tasks, the hooks.
    done = _import_in_child(
        "import sys\n"
        "import eta.commands.main, eta.commands.worker, workers.celery_app, workers.tasks, workers.signals\n"
        "from eta.commands.worker import _check_models\n"
        "print(sorted(m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules))\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_planted_faults_are_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv("ETA_INSTANT_FAULT", raising=False)
    assert planted_fault() is None
    for value in ("", "kill", "kill:", "explode:x"):
        monkeypatch.setenv("ETA_INSTANT_FAULT", value)
        assert planted_fault() is None, value
    monkeypatch.setenv("ETA_INSTANT_FAULT", "kill:[poison]")
    assert planted_fault() == ("kill", "[poison]")
    monkeypatch.setenv("ETA_INSTANT_FAULT", "hang_load")
    assert planted_fault() == ("hang_load", "")


def test_the_worker_refuses_unusable_models_in_one_line_from_its_preflight_child(tmp_path):
    # The check runs in `python -m workers.preflight`; its verdict is still `eta worker`'s one-line error, exit 2.
    eta = str(Path(sys.executable).with_name("eta"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETA_")}
    env.update(ETA_DATA_DIR=str(tmp_path), ETA_VLM="x")
    done = subprocess.run([eta, "worker"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ETA_CLIP, ETA_REWARD not set"), done.stderr
