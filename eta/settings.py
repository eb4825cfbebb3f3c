"""Process settings read from the environment: one typed object, shared by CLI, API and workers.

Every variable starts with `ETA_`; the conventional names of a few (`DATABASE_URL`, `REDIS_URL`,
`SECRET_KEY`, and the unprefixed names earlier versions read: `BLOB_BACKEND`, `MAX_IMAGE_BYTES`, ...) are
read as fallbacks when the `ETA_` one is unset. An empty variable counts as unset.

The fields are grouped by what they configure:

    settings.env, .data_dir, .secret_key        the process
    settings.database                           ETA_DATABASE_URL
    settings.blobs                              where image bytes live
    settings.broker                             the message broker
    settings.limits                             what one request may ask for
    settings.models                             which models the workers load, and where
    settings.workers                            batching, time limits, retries, the sweeper, callbacks
    settings.retention                          how long inputs are kept, and the purge
    settings.api                                review sessions, exports

Each group's docstring-comments name its variables. To build settings in code (tests, benchmarks), pass
variable names, in any case: `Settings(eta_chunk_size=4, database_url=url)`; `settings.with_values(...)`
copies with changes. Validation runs in every process that reads settings: production without a real
secret fails at start-up. A stage's limits (`StageLimits`: batch size, time limits, sweeper timeouts) are
declared with the stage in `workers.stage_table`; the environment overrides them by stage name
(`ETA_STAGE_<NAME>_<LIMIT>`, or the older names in `LEGACY_STAGE_VARIABLES`), and the Celery app factory checks
every stage's result, so limits that would let the sweeper re-send running stages fail at start-up too.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("eta-service", appauthor=False))


class SettingsGroup(BaseModel):
    """A group of settings. A field's variable is `env_prefix` + its name in upper case, unless `env_names`
    lists its variables (the first is its own, the others fallbacks)."""

    model_config = ConfigDict(extra="forbid")

    env_prefix: ClassVar[str] = "ETA_"
    env_names: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def variables(cls, field: str) -> tuple[str, ...]:
        return cls.env_names.get(field, (f"{cls.env_prefix}{field.upper()}",))


class DatabaseSettings(SettingsGroup):
    env_prefix = "ETA_DATABASE_"
    env_names = {"url": ("ETA_DATABASE_URL", "DATABASE_URL")}

    # SQLAlchemy URL of the database; empty means the embedded SQLite file under ETA_DATA_DIR.
    url: str | None = None


class BlobSettings(SettingsGroup):
    env_prefix = "ETA_BLOB_"
    env_names = {"backend": ("ETA_BLOB_BACKEND", "BLOB_BACKEND"), "dir": ("ETA_BLOB_DIR", "BLOB_DIR")}

    # Where image bytes live: rows of the database (default, one backup covers everything) or files.
    backend: Literal["database", "filesystem"] = "database"
    # Root of the filesystem backend; empty means ETA_DATA_DIR/blobs.
    dir: Path | None = None


class BrokerSettings(SettingsGroup):
    env_prefix = "ETA_BROKER_"
    env_names = {"url": ("ETA_BROKER_URL", "ETA_REDIS_URL", "REDIS_URL")}

    # URL of the broker (Redis); empty means the embedded broker, a folder under ETA_DATA_DIR (no server).
    url: str | None = None
    # Prefix of every Redis key the broker writes (lets test sessions share one Redis server).
    key_prefix: str = ""
    # Seconds to connect to the broker before an enqueue gives up (the API then leaves jobs queued).
    connect_timeout_s: float = Field(default=2.0, gt=0)
    # Seconds the Redis broker waits for an unacknowledged message before redelivering it; longer than any
    # hard time limit, or a slow stage would be delivered twice.
    visibility_timeout_s: int = Field(default=7200, gt=0)


_UNPREFIXED_LIMITS = ("max_request_bytes", "max_image_bytes", "max_image_pixels", "image_formats",
                      "max_prompt_chars", "max_batch_items")


class LimitSettings(SettingsGroup):
    """Bounds on what one request may ask for (ETA_MAX_*, ETA_IMAGE_FORMATS)."""

    env_names = {name: (f"ETA_{name.upper()}", name.upper()) for name in _UNPREFIXED_LIMITS}

    # Largest request body accepted (a 10,000-item batch with images needs room); larger gets 413.
    max_request_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    # Per image: encoded bytes, and width x height checked from the header before decoding.
    max_image_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    # Image formats accepted (Pillow format names; a JSON list or comma-separated).
    image_formats: frozenset[str] = frozenset({"JPEG", "PNG", "BMP", "WEBP", "GIF"})
    # Longest prompt, in characters.
    max_prompt_chars: int = Field(default=8000, gt=0)
    # Items per batch.
    max_batch_items: int = Field(default=10_000, gt=0)
    # Upper bounds of the ETA parameters a client may set (each costs compute); a larger value is a 422.
    # Tokens of the vanilla and of the aligned answer (the paper uses 1024).
    max_new_tokens: int = Field(default=2048, gt=0)
    # Candidates per sentence and top-k of their sampling (paper: 5 and 5).
    max_num_candidates: int = Field(default=16, gt=0)
    max_top_k: int = Field(default=200, gt=0)
    # Tokens of one candidate sentence (paper: 70).
    max_sentence_tokens: int = Field(default=256, gt=0)
    # Characters of each text parameter (safety_prompt, reward_prompt, safety_prefix, ...): copied into
    # every job of a batch and into every reward-model call.
    max_param_chars: int = Field(default=2000, gt=0)
    # Jobs of one tenant that may be unfinished (queued or running) at once; a submission that would go
    # beyond is a 429. 0: no cap.
    max_unfinished_jobs: int = Field(default=50_000, ge=0)


class ModelSettings(SettingsGroup):
    """The models the workers load (ETA_VLM, ETA_CLIP, ...; ETA_MODELS for the backend)."""

    env_names = {"backend": ("ETA_MODELS",)}

    # Unset vlm/clip/reward mean the tiny random-weight models, built on first use under ETA_DATA_DIR; set all
    # three for production (see `eta run --help` for the accepted forms).
    vlm: str | None = None
    clip: str | None = None
    clip_pretrained: str | None = None
    reward: str | None = None
    # Hub revision pinned for each model (recorded in every result's fingerprint).
    vlm_revision: str | None = None
    reward_revision: str | None = None
    # "instant": deterministic stand-ins that answer in microseconds (eta.models.instant), for benchmarks and
    # chaos tests of the service only, never for real traffic; "configured": the models named above.
    backend: Literal["configured", "instant"] = "configured"
    # Placement of all three models: "auto" is cuda when available; dtype "auto" is bf16 on GPU, fp32 on CPU.
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Switches read when the models load (passed in as `ModelSpec` fields, eta.models never reads the environment):
    # a VLM outside the support matrix may load, for an experiment (every fingerprint then says so);
    vlm_allow_unsupported: bool = False
    # the activation of CLIP weights that do not record theirs ("quickgelu" for OpenAI's, or "gelu");
    clip_activation: Literal["quickgelu", "gelu"] | None = None
    # false keeps the copied prompt-cache layout (N copies of each job's prefix) instead of one shared copy.
    shared_prefix: bool = True


_STAGE_LIMIT_FIELDS = ("batch_size", "soft_time_limit_s", "time_limit_s", "sweep_after_s", "sweep_waiting_after_s")
# The variables earlier versions read for the three stages' limits: still read, after `ETA_STAGE_<NAME>_<LIMIT>`.
LEGACY_STAGE_VARIABLES: dict[str, tuple[str, str]] = {
    "ETA_CLIP_BATCH_SIZE": ("pre", "batch_size"),
    "ETA_GENERATE_BATCH_SIZE": ("generate", "batch_size"),
    "ETA_REWARD_BATCH_SIZE": ("post", "batch_size"),
    **{f"ETA_{stage.upper()}_{field.upper()}": (stage, field)
       for stage in ("pre", "generate", "post") for field in ("soft_time_limit_s", "time_limit_s")},
    "ETA_SWEEP_QUEUED_AFTER_S": ("pre", "sweep_waiting_after_s"),
    "ETA_SWEEP_PRE_EVALUATING_AFTER_S": ("pre", "sweep_after_s"),
    "ETA_SWEEP_GENERATING_AFTER_S": ("generate", "sweep_after_s"),
    "ETA_SWEEP_POST_EVALUATING_AFTER_S": ("post", "sweep_after_s"),
}
# ETA_STAGE_<NAME>_<LIMIT>; the shortest name that leaves a known limit wins (ETA_STAGE_PRE_SOFT_TIME_LIMIT_S is
# the soft limit of `pre`). ETA_STAGE_MAX_RETRIES ends in no limit's name and stays a field of its own.
_STAGE_VARIABLE = re.compile(
    r"^ETA_STAGE_(?P<stage>[A-Z0-9]+(?:_[A-Z0-9]+)*?)_(?P<field>"
    + "|".join(f.upper() for f in sorted(_STAGE_LIMIT_FIELDS, key=len, reverse=True)) + ")$")


def stage_variable(name: str) -> tuple[str, str] | None:
    """(stage, limit) set by the variable `name` (any case), or None when it sets no stage limit."""
    upper = name.upper()
    if upper in LEGACY_STAGE_VARIABLES:
        return LEGACY_STAGE_VARIABLES[upper]
    match = _STAGE_VARIABLE.match(upper)
    return (match["stage"].lower(), match["field"].lower()) if match else None


def stage_variables(stage: str, field: str) -> tuple[str, ...]:
    """The variables that set limit `field` of stage `stage`: its own first, then any older name."""
    own = f"ETA_STAGE_{stage.upper()}_{field.upper()}"
    return (own, *(name for name, route in LEGACY_STAGE_VARIABLES.items() if route == (stage, field)))


class StageLimits(BaseModel):
    """What bounds one stage: declared with the stage (`workers.stage_table`), each overridable by
    `ETA_STAGE_<NAME>_<LIMIT>` (or the older names of `LEGACY_STAGE_VARIABLES`). Checked whenever built."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Jobs per model call (images per CLIP forward, prompts per `generate` call, answers per reward forward).
    batch_size: int = Field(gt=0)
    # Soft time limit of one stage message (the jobs still held fail with `stage_timeout`) and hard limit (the
    # process is killed; the leases run out and the sweeper sends the jobs again), in seconds.
    soft_time_limit_s: int = Field(gt=0)
    time_limit_s: int = Field(gt=0)
    # How long a job no worker holds may sit in the stage's running status before the sweeper re-enqueues it
    # (a message lost with no lease to show it); must exceed the hard time limit.
    sweep_after_s: int = Field(gt=0)
    # The same for its waiting status, when that is a status of its own (None: as `sweep_after_s`).
    sweep_waiting_after_s: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> StageLimits:
        problem = self.contradiction(lambda field: field)
        if problem:
            raise ValueError(problem)
        return self

    def contradiction(self, name: Callable[[str], str]) -> str | None:
        """What is inconsistent about these limits (fields named by `name`), or None."""
        if self.soft_time_limit_s >= self.time_limit_s:
            return (f"{name('soft_time_limit_s')} ({self.soft_time_limit_s}) must be below "
                    f"{name('time_limit_s')} ({self.time_limit_s})")
        if self.sweep_after_s <= self.time_limit_s:
            return (f"{name('sweep_after_s')} ({self.sweep_after_s}) must exceed {name('time_limit_s')} "
                    f"({self.time_limit_s}), or running stages would be swept")
        return None


class StageOverrides(BaseModel):
    """The limits of one stage that the environment sets (the others keep the stage's declared values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int | None = Field(default=None, gt=0)
    soft_time_limit_s: int | None = Field(default=None, gt=0)
    time_limit_s: int | None = Field(default=None, gt=0)
    sweep_after_s: int | None = Field(default=None, gt=0)
    sweep_waiting_after_s: int | None = Field(default=None, gt=0)


class WorkerSettings(SettingsGroup):
    """Batching, time limits, retries, the sweeper and batch callbacks (ETA_<NAME>)."""

    env_names = {"callback_allowed_networks": ("ETA_OUTBOUND_ALLOWED_NETWORKS", "ETA_CALLBACK_ALLOWED_NETWORKS"),
                 # Read from ETA_STAGE_<NAME>_<LIMIT> and the older names (`stage_variable`), not one variable.
                 "stages": ()}

    # Jobs per stage message: the three stages of a chunk are chained, so this bounds cross-job batching.
    chunk_size: int = Field(default=32, gt=0)
    # Per-stage limits the environment sets (batch size, time limits, sweeper timeouts), by stage name; a stage's
    # own defaults are declared with it in `workers.stage_table`. See `StageLimits` and `stage_variables`.
    stages: dict[str, StageOverrides] = Field(default_factory=dict)
    # Retries of a stage message after a transient error (database or broker unreachable, CUDA out of
    # memory), with exponential backoff capped at retry_backoff_max_s.
    stage_max_retries: int = Field(default=5, ge=0)
    retry_backoff_max_s: int = Field(default=300, gt=0)
    # The worker running a job's stage holds a lease on it and renews it every lease_s / 3 seconds; the sweeper
    # re-sends a job whose lease ran out (its worker died), whatever the stage's time limit.
    lease_s: int = Field(default=30, ge=3)
    # Sweeper: how often it runs (beat). How long a job no worker holds may sit in each status before it is
    # re-enqueued is a stage limit (`StageLimits.sweep_after_s`).
    sweep_interval_s: float = Field(default=10.0, gt=0)
    # How long a job may wait in a stage's waiting status, no worker holding it, while that stage's queue is empty,
    # before the sweeper sends it again: its message is then nowhere a worker will find it (a worker that died, or
    # lost its broker connection, while holding it unstarted leaves it in the broker's unacknowledged set until
    # the visibility timeout). Sooner than the stage's own sweep timeout, which waits for a message to be lost.
    sweep_unheld_after_s: int = Field(default=60, gt=0)
    # Times a job's stage may be started (first run + sweeper re-enqueues) before it fails as `stalled`; the sweeper
    # re-sends in chunks half as large each time and fails a job only after a try alone (may take more tries).
    max_stage_attempts: int = Field(default=3, gt=0)
    # Seconds a freshly started pool process may take to load its models; one that is not ready by then writes
    # its stacks to the worker log and exits, and the pool starts another.
    worker_ready_timeout_s: int = Field(default=900, gt=0)
    # Networks outbound calls (batch callbacks and image fetches) may reach although they are not public
    # (loopback, private, link-local...), comma separated CIDRs, e.g. "10.20.0.0/16"; image URLs on them may
    # also be plain http. Empty: public addresses only. ETA_OUTBOUND_ALLOWED_NETWORKS (the older
    # ETA_CALLBACK_ALLOWED_NETWORKS is still read).
    callback_allowed_networks: str = ""
    # Images by reference (`image_url`), fetched by the pre-evaluation stage: the deadline of one attempt
    # (connect, redirects and the whole body), attempts after transient failures (timeouts, connection errors,
    # 429 and 5xx answers; exponential backoff between them), redirects followed (each target checked again),
    # and fetches run at once by one stage message.
    image_fetch_timeout_s: float = Field(default=10.0, gt=0, le=300)
    image_fetch_attempts: int = Field(default=3, ge=1, le=10)
    image_fetch_max_redirects: int = Field(default=3, ge=0, le=10)
    image_fetch_concurrency: int = Field(default=8, ge=1, le=64)
    # Per-attempt timeout and number of retries (exponential backoff) of a batch callback POST.
    callback_timeout_s: float = Field(default=10.0, gt=0)
    callback_max_retries: int = Field(default=8, ge=0)
    # Seconds after a batch completed before the sweeper sends its undelivered callback again (a worker died
    # between completing the batch and publishing the callback; at once when the broker lost its data).
    callback_resend_after_s: int = Field(default=120, gt=0)

    @field_validator("callback_allowed_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        from eta.outbound import parse_networks

        parse_networks(value)  # a bad entry fails at start-up, naming it
        return value


class RetentionSettings(SettingsGroup):
    """How long inputs are kept (ETA_RETENTION_DAYS) and the purge that applies it (ETA_PURGE_*)."""

    # Days a finished job keeps its image bytes and vanilla answer; scores, final answers and verdicts stay.
    # 0 keeps everything forever.
    retention_days: int = Field(default=30, ge=0)
    # How often the workers' beat schedule runs the purge, in seconds.
    purge_interval_s: float = Field(default=3600.0, gt=0)
    # Jobs purged per transaction (short transactions, short row locks).
    purge_batch_size: int = Field(default=1000, gt=0)


class ApiSettings(SettingsGroup):
    """The intake API and the review page (ETA_<NAME>)."""

    # Hours a review-page sign-in lasts before the reviewer must present the key again.
    review_session_hours: float = Field(default=8.0, gt=0)
    # Rows fetched per round trip while streaming an audit export (a server-side cursor on Postgres).
    export_fetch_rows: int = Field(default=1000, gt=0)
    # Requests per API key, by the key's role ("600/minute"; several limits separated by ";"). Counted in
    # Redis when the broker is Redis (shared by every API process), else in each process. Over: 429.
    rate_limit_submit: str = "600/minute"
    rate_limit_review: str = "600/minute"
    rate_limit_admin: str = "1200/minute"
    # Failed authentications (no, unknown or revoked key) per client address before it gets 429s.
    rate_limit_auth_failures: str = "30/minute"
    # Seconds an API process trusts a key it looked up, for GET requests only (polling pays no key lookup):
    # a revoked key can still read for this long; it can never write again. 0 looks up every request.
    auth_cache_s: float = Field(default=2.0, ge=0, le=60)
    # Seconds a request body may take to arrive, in all; a slower client gets 408 and its thread back.
    body_timeout_s: float = Field(default=300.0, gt=0)

    @field_validator("rate_limit_submit", "rate_limit_review", "rate_limit_admin", "rate_limit_auth_failures")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        from limits import parse_many

        parse_many(value)  # "600/minute"; a malformed limit fails at start-up
        return value


def secret_bits(secret: str) -> float:
    """A conservative estimate of a secret's entropy in bits: its length times the Shannon entropy of its
    characters. `aaaaaaaaaaaaaaaa` has 0 bits, a repeated short pattern few; 32 random hex digits about 120."""
    if not secret:
        return 0.0
    counts = Counter(secret)
    per_char = -sum(n / len(secret) * math.log2(n / len(secret)) for n in counts.values())
    return max(0.0, per_char * len(secret))


_PLACEHOLDERS = frozenset({"changeme", "change-me", "secret", "dev", "development", "xxx", "todo"})


class Settings(BaseSettings):
    """Service-wide settings (see the module docstring for the variables and the groups)."""

    model_config = SettingsConfigDict(extra="ignore")

    # Variables of the top-level fields (the groups' are declared on each group).
    env_names: ClassVar[dict[str, tuple[str, ...]]] = {
        "env": ("ETA_ENV",), "data_dir": ("ETA_DATA_DIR",), "secret_key": ("ETA_SECRET_KEY", "SECRET_KEY"),
    }

    # "production" refuses to start without a real secret_key; "development" makes up one per process.
    env: Literal["development", "production"] = "development"
    # Where the embedded database, blobs, broker and the tiny-model cache live.
    data_dir: Path = Field(default_factory=_default_data_dir)
    # Signs the review page's session cookies.
    secret_key: str | None = None
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    blobs: BlobSettings = Field(default_factory=BlobSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments first, then the environment (its own source: grouped fields, flat variable names).
        return init_settings, _EnvironmentSource(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _route_variable_names(cls, data: Any) -> Any:
        """Accept settings by variable name (`eta_chunk_size=4`, `database_url=...`) beside grouped values."""
        if not isinstance(data, dict):
            return data
        routed: dict[str, Any] = {}
        flat: list[tuple[str | None, str, Any]] = []
        stages: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            route = None if key in cls.model_fields else _ROUTES.get(key.upper())
            limit = None if key in cls.model_fields or route else stage_variable(key)
            if limit is not None:
                stages.setdefault(limit[0], {})[limit[1]] = value
            elif route is None:
                routed[key] = value
            else:
                flat.append((*route, value))
        if stages:
            flat.append(("workers", "stages", _merge_stages(routed.get("workers"), stages)))
        # Values given by variable name win over grouped ones (they come from keyword arguments).
        for group, field, value in flat:
            if group is None:
                routed[field] = value
                continue
            current = routed.get(group)
            if isinstance(current, BaseModel):
                current = current.model_dump(exclude_unset=True)
            routed[group] = {**(current or {}), field: value}
        return routed

    @model_validator(mode="after")
    def _check_production_secret(self) -> Settings:
        """Production must not run without a real secret (placeholders count as missing)."""
        if self.env == "production" and (not self.secret_key or self.secret_key.lower() in _PLACEHOLDERS
                                         or len(self.secret_key) < 16 or secret_bits(self.secret_key) < 64):
            raise ValueError(
                "SECRET_KEY must be set to a random value of at least 16 characters (64 bits of entropy, e.g. "
                "`python -c \"import secrets; print(secrets.token_hex(32))\"`) when ETA_ENV=production"
            )
        return self

    def stage_limits(self, stage: str, declared: StageLimits) -> StageLimits:
        """The limits of stage `stage`: those `declared` with it, with what the environment overrides.

        Raises:
            SettingsError: the result is inconsistent (a soft limit not below the hard one, a sweeper timeout
                not above it); the message names the variables.
        """
        overrides = self.workers.stages.get(stage)
        if overrides is None:
            return declared
        values = {**declared.model_dump(), **overrides.model_dump(exclude_none=True)}
        merged = StageLimits.model_construct(**values)
        problem = merged.contradiction(lambda field: " / ".join(stage_variables(stage, field)))
        if problem:
            raise SettingsError(f"stage {stage}: {problem}")
        return StageLimits.model_validate(values)

    @property
    def tiny_models_dir(self) -> Path:
        return self.data_dir / "tiny-models"

    @property
    def blobs_dir(self) -> Path:
        return self.blobs.dir or self.data_dir / "blobs"

    def with_values(self, **values: Any) -> Settings:
        """A copy with some settings changed, named like the constructor's keywords (no environment read)."""
        return type(self).model_validate({**self.model_dump(exclude_unset=False), **values})

    @classmethod
    def variables(cls) -> dict[str, tuple[str | None, str]]:
        """Every variable read (fallbacks included) -> (group or None for a top-level field, field)."""
        return dict(_ROUTES)


def _fields() -> Iterator[tuple[str | None, str, FieldInfo, tuple[str, ...]]]:
    """(group, field, its FieldInfo, its variables) for every setting; group None for top-level fields."""
    for name, info in Settings.model_fields.items():
        group = info.annotation
        if isinstance(group, type) and issubclass(group, SettingsGroup):
            for field, field_info in group.model_fields.items():
                yield name, field, field_info, group.variables(field)
        else:
            yield None, name, info, Settings.env_names[name]


def _merge_stages(workers: Any, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The `workers.stages` value with the limits given by variable name laid over any given by group."""
    current = workers.get("stages") if isinstance(workers, dict) else getattr(workers, "stages", None)
    merged: dict[str, Any] = {}
    for name, value in (current or {}).items():
        merged[name] = value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else dict(value)
    for name, limits in stages.items():
        merged[name] = {**merged.get(name, {}), **limits}
    return merged


# Model fields are resolved once the module has defined every class.
Settings.model_rebuild()
_ROUTES: dict[str, tuple[str | None, str]] = {
    variable: (group, field) for group, field, _, variables in _fields() for variable in variables
}


def _is_collection(info: FieldInfo) -> bool:
    origin = getattr(info.annotation, "__origin__", None)
    return origin in (frozenset, set, list, tuple)


class _EnvironmentSource(PydanticBaseSettingsSource):
    """Reads each setting from its variables (the first that is set and not empty), into its group."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads everything at once

    def __call__(self) -> dict[str, Any]:
        environ = {name.upper(): value for name, value in os.environ.items()}
        values: dict[str, Any] = {}
        for group, field, info, variables in _fields():
            raw = next((environ[v] for v in variables if environ.get(v, "") != ""), None)
            if raw is None:
                continue
            value: Any = raw
            if _is_collection(info):
                value = json.loads(raw) if raw.lstrip().startswith("[") else [p.strip() for p in raw.split(",")]
            if group is None:
                values[field] = value
            else:
                values.setdefault(group, {})[field] = value
        # Stage limits: the own name (ETA_STAGE_<NAME>_<LIMIT>) wins over an older one.
        stages: dict[str, dict[str, Any]] = {}
        for name in sorted(environ, key=lambda n: n.startswith("ETA_STAGE_")):
            limit = stage_variable(name) if environ[name] != "" else None
            if limit is not None:
                stages.setdefault(limit[0], {})[limit[1]] = environ[name]
        if stages:
            values.setdefault("workers", {})["stages"] = stages
        return values


class SettingsError(ValueError):
    """The environment's settings are unusable; the message names each variable and what is wrong with it."""


def describe_errors(exc: ValidationError) -> str:
    """One line per problem, naming the environment variable rather than the field's place in the groups."""
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        group, field = (None, loc[0]) if len(loc) == 1 else (loc[0], loc[1]) if len(loc) >= 2 else (None, "")
        names = [name for name, route in _ROUTES.items() if route == (group, field)]
        where = names[0] if names else ".".join(loc) or "settings"
        if loc[:2] == ("workers", "stages") and len(loc) >= 4:
            names = list(stage_variables(loc[2], loc[3]))
            where = " / ".join(names)
        message = str(error["msg"]).removeprefix("Value error, ")
        got = f" (got {error['input']!r})" if names and not isinstance(error.get("input"), dict) else ""
        lines.append(f"{where}: {message}{got}" if names else message)
    return "; ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once from the environment.

    Raises:
        SettingsError: a variable does not parse, the settings contradict each other, or production runs
            without a real secret (the message names the variables).
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None
