"""Settings: ETA_ variables with conventional fallbacks, grouped fields, errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from eta.settings import Settings, SettingsError, get_settings


@pytest.fixture
def environ(monkeypatch):
    for name in Settings.variables():
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_eta_variables_win_over_the_conventional_fallbacks(environ, tmp_path: Path):
    environ.setenv("DATABASE_URL", "postgresql://fallback/db")
    environ.setenv("REDIS_URL", "redis://fallback:6379/0")
    environ.setenv("ETA_BROKER_URL", "redis://own:6379/0")
    environ.setenv("MAX_IMAGE_BYTES", "1000")
    environ.setenv("ETA_IMAGE_FORMATS", "PNG, JPEG")
    environ.setenv("ETA_CHUNK_SIZE", "")  # empty counts as unset
    settings = Settings()
    assert settings.database.url == "postgresql://fallback/db"
    assert settings.broker.url == "redis://own:6379/0"
    assert settings.limits.max_image_bytes == 1000
    assert settings.limits.image_formats == frozenset({"PNG", "JPEG"})
    assert settings.workers.chunk_size == 32


def test_keywords_are_variable_names_and_with_values_copies(environ, tmp_path: Path):
    settings = Settings(eta_chunk_size=4, redis_url="redis://h:1/0", ETA_DATA_DIR=tmp_path)
    assert (settings.workers.chunk_size, settings.broker.url, settings.data_dir) == (4, "redis://h:1/0", tmp_path)
    changed = settings.with_values(eta_retention_days=0, blob_backend="filesystem")
    assert (changed.retention.retention_days, changed.blobs.backend, changed.workers.chunk_size) == (0, "filesystem", 4)
    assert settings.retention.retention_days == 30


def test_every_process_reading_bad_settings_gets_one_line_naming_the_variable(environ):
    environ.setenv("ETA_CHUNK_SIZE", "many")
    with pytest.raises(SettingsError, match=r"^ETA_CHUNK_SIZE: .*integer.*\(got 'many'\)$"):
        get_settings()
    get_settings.cache_clear()
    environ.delenv("ETA_CHUNK_SIZE")
    environ.setenv("ETA_ENV", "production")
    with pytest.raises(SettingsError, match="SECRET_KEY must be set"):
        get_settings()
    get_settings.cache_clear()
    from eta.commands.main import main

    result = CliRunner().invoke(main, ["sweep"])
    assert result.exit_code == 2 and "settings: SECRET_KEY must be set" in result.output
