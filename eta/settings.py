"""Process settings read from the environment (one typed object, shared by CLI, API and workers)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, field_validator, model_validator
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

    # ---- workers
    # Models. Unset vlm/clip/reward mean the tiny random-weight models, built on first use into
    # tiny_models_dir; set all three for production (see `eta run --help` for the accepted forms).
    eta_vlm: str | None = None
    eta_clip: str | None = None
    eta_clip_pretrained: str | None = None
    eta_reward: str | None = None
    # Hub revision pinned for each model (recorded in every result's fingerprint).
    eta_vlm_revision: str | None = None
    eta_reward_revision: str | None = None
    # "instant": deterministic stand-ins that answer in microseconds (eta.models.instant), for benchmarks and
    # chaos tests of the service only, never for real traffic; "configured": the models named above.
    eta_models: Literal["configured", "instant"] = "configured"
    # Placement of all three models: "auto" is cuda when available; dtype "auto" is bf16 on GPU, fp32 on CPU.
    eta_device: str = "auto"
    eta_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Broker URL overriding the default (REDIS_URL, else the embedded filesystem broker under eta_data_dir).
    eta_broker_url: str | None = None
    # Prefix of every Redis key the broker writes (lets test sessions share one Redis server).
    eta_broker_key_prefix: str = ""
    # Seconds to connect to the broker before an enqueue gives up (the API then leaves jobs queued).
    eta_broker_connect_timeout_s: float = Field(default=2.0, gt=0)
    # Jobs per stage message: the three stages of a chunk are chained, so this bounds cross-job batching.
    eta_chunk_size: int = Field(default=32, gt=0)
    # Images per CLIP forward (pre), texts per reward forward (post), prompts per vanilla `generate` call.
    eta_clip_batch_size: int = Field(default=32, gt=0)
    eta_reward_batch_size: int = Field(default=32, gt=0)
    eta_generate_batch_size: int = Field(default=8, gt=0)
    # Soft time limit (the jobs still in the stage fail with `stage_timeout`) and hard limit (the process is
    # killed; the sweeper picks the jobs up) of one stage message, in seconds.
    eta_pre_soft_time_limit_s: int = Field(default=300, gt=0)
    eta_pre_time_limit_s: int = Field(default=360, gt=0)
    eta_generate_soft_time_limit_s: int = Field(default=3600, gt=0)
    eta_generate_time_limit_s: int = Field(default=3720, gt=0)
    eta_post_soft_time_limit_s: int = Field(default=300, gt=0)
    eta_post_time_limit_s: int = Field(default=360, gt=0)
    # Retries of a stage message after a transient error (database or broker unreachable, CUDA out of
    # memory), with exponential backoff capped at eta_retry_backoff_max_s.
    eta_stage_max_retries: int = Field(default=5, ge=0)
    eta_retry_backoff_max_s: int = Field(default=300, gt=0)
    # Sweeper: how often it runs (beat), and how long a job may sit in each status before it is re-enqueued.
    # A stage's timeout must exceed its hard time limit, so a running stage is never swept.
    eta_sweep_interval_s: float = Field(default=60.0, gt=0)
    eta_sweep_queued_after_s: int = Field(default=600, gt=0)
    eta_sweep_pre_evaluating_after_s: int = Field(default=420, gt=0)
    eta_sweep_generating_after_s: int = Field(default=3900, gt=0)
    eta_sweep_post_evaluating_after_s: int = Field(default=420, gt=0)
    # Times a job's stage may be started (first run + sweeper re-enqueues) before it fails as `stalled`.
    eta_max_stage_attempts: int = Field(default=3, gt=0)
    # Seconds the Redis broker waits for an unacknowledged message before redelivering it; longer than any
    # hard time limit, or a slow stage would be delivered twice.
    eta_broker_visibility_timeout_s: int = Field(default=7200, gt=0)
    # Networks batch callbacks may reach although they are not public (loopback, private, link-local...),
    # comma separated CIDRs, e.g. "10.20.0.0/16". Empty: callbacks go to public addresses only.
    eta_callback_allowed_networks: str = ""
    # Per-attempt timeout and number of retries (exponential backoff) of a batch callback POST.
    eta_callback_timeout_s: float = Field(default=10.0, gt=0)
    eta_callback_max_retries: int = Field(default=8, ge=0)

    # ---- audit and review
    # Days a finished job keeps its image bytes and vanilla answer; scores, final answers and verdicts stay.
    # 0 keeps everything forever.
    eta_retention_days: int = Field(default=30, ge=0)
    # How often the workers' beat schedule runs the purge, in seconds.
    eta_purge_interval_s: float = Field(default=3600.0, gt=0)
    # Jobs purged per transaction (short transactions, short row locks).
    eta_purge_batch_size: int = Field(default=1000, gt=0)
    # Hours a review-page sign-in lasts before the reviewer must present the key again.
    eta_review_session_hours: float = Field(default=8.0, gt=0)
    # Rows fetched per round trip while streaming an audit export (a server-side cursor on Postgres).
    eta_export_fetch_rows: int = Field(default=1000, gt=0)

    @field_validator("eta_callback_allowed_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        from eta.outbound import parse_networks

        parse_networks(value)  # a bad entry fails at start-up, naming it
        return value

    @model_validator(mode="after")
    def _check_worker_time_limits(self) -> Settings:
        """A soft limit below its hard limit, and every sweeper timeout above its stage's hard limit."""
        for stage, swept in (("pre", "pre_evaluating"), ("generate", "generating"), ("post", "post_evaluating")):
            soft = getattr(self, f"eta_{stage}_soft_time_limit_s")
            hard = getattr(self, f"eta_{stage}_time_limit_s")
            sweep = getattr(self, f"eta_sweep_{swept}_after_s")
            if soft >= hard:
                raise ValueError(f"ETA_{stage.upper()}_SOFT_TIME_LIMIT_S ({soft}) must be below "
                                 f"ETA_{stage.upper()}_TIME_LIMIT_S ({hard})")
            if sweep <= hard:
                raise ValueError(f"ETA_SWEEP_{swept.upper()}_AFTER_S ({sweep}) must exceed "
                                 f"ETA_{stage.upper()}_TIME_LIMIT_S ({hard}), or running stages would be swept")
        return self

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
