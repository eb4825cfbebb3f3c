"""Process settings read from the environment (one typed object, shared by CLI, API and workers)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("eta-service", appauthor=False))


class Settings(BaseSettings):
    """Service-wide settings. Every field can be set as an environment variable (upper case)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    # Where the embedded database, blobs and the tiny-model cache live.
    eta_data_dir: Path = Field(default_factory=_default_data_dir)
    # SQLAlchemy URL of the database; empty means the embedded SQLite file under eta_data_dir.
    database_url: str | None = None
    # Redis URL of the broker; empty means the embedded broker (no server needed).
    redis_url: str | None = None
    # Where image bytes live: rows of the database (default, one backup covers everything) or files.
    blob_backend: Literal["database", "filesystem"] = "database"
    # Root of the filesystem blob backend; empty means eta_data_dir/blobs.
    blob_dir: Path | None = None

    @property
    def tiny_models_dir(self) -> Path:
        return self.eta_data_dir / "tiny-models"

    @property
    def blobs_dir(self) -> Path:
        return self.blob_dir or self.eta_data_dir / "blobs"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once from the environment."""
    return Settings()
