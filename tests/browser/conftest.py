"""Browser tests: the API served on a local port by a real server thread, driven by headless Chromium.

Chromium is Debian's `chromium` package (`.ci/run` installs it), driven by playwright-python through
`executable_path`: playwright's own browser download is never used. Without Chromium the tests skip,
except under CI (`CI=true`), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from werkzeug.serving import make_server

from api import create_app
from eta.settings import Settings
from tests.integration import conftest as integration
from tests.integration.api.conftest import make_tenant, tenant  # noqa: F401 - shared fixtures

# This session's Postgres database, as the integration tests have it.
postgres_url = integration.postgres_url
postgres_engine = integration.postgres_engine

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    return os.environ.get("ETA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def live_server(postgres_url: str, postgres_engine: Engine, tmp_path: Path) -> Iterator[str]:
    """The whole app (API and review page) on a free local port, served by werkzeug in a thread."""
    settings = Settings(database_url=postgres_url, eta_data_dir=tmp_path)
    app = create_app(settings, engine=postgres_engine, enqueue=lambda job_ids: None)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def settings(postgres_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=postgres_url, eta_data_dir=tmp_path)


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
