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

    # ---- intake API
    # "production" refuses to start without a real secret_key; "development" makes up one per process.
    eta_env: Literal["development", "production"] = "development"
    # Signs session cookies (review page) and is the default HMAC key of batch callbacks.
    secret_key: str | None = None
    # Largest request body accepted (a 10,000-item batch with images needs room); larger gets 413.
    max_request_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    # Per image: encoded bytes, and width x height checked from the header before decoding.
    max_image_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    # Image formats accepted (Pillow format names).
    image_formats: frozenset[str] = frozenset({"JPEG", "PNG", "BMP", "WEBP", "GIF"})
    # Longest prompt, in characters.
    max_prompt_chars: int = Field(default=8000, gt=0)
    # Items per batch.
    max_batch_items: int = Field(default=10_000, gt=0)

    @property
    def tiny_models_dir(self) -> Path:
        return self.eta_data_dir / "tiny-models"

    @property
    def blobs_dir(self) -> Path:
        return self.blob_dir or self.eta_data_dir / "blobs"

    def require_production_secrets(self) -> None:
        """Fail at start-up when production runs without a real secret (placeholders count as missing)."""
        if self.eta_env != "production":
            return
        if not self.secret_key or self.secret_key.lower() in _PLACEHOLDERS or len(self.secret_key) < 16:
            raise ValueError(
                "SECRET_KEY must be set to a random value of at least 16 characters when ETA_ENV=production"
            )


_PLACEHOLDERS = frozenset({"changeme", "change-me", "secret", "dev", "development", "xxx", "todo"})


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once from the environment."""
    return Settings()
