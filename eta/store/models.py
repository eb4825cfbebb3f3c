"""SQLAlchemy models: the schema of the service. `eta/store/migrations/` is the only way it reaches a
database.

Conventions: UUID primary keys for everything a client sees; timezone-aware UTC timestamps (SQLite keeps
them as naive UTC text, `UTCDateTime` puts the zone back on read); JSON columns that are JSONB on
Postgres; enums stored as short strings with a CHECK constraint (no Postgres enum types, which make every
new value a migration of its own).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from eta.store.lifecycle import ACTIVE_JOB_STATUSES, BatchStatus, JobStatus
from eta.vocabulary import ApiKeyRole, ReviewVerdict

__all__ = ["ApiKeyRole", "ReviewVerdict"]  # declared in eta.vocabulary, used here as column types


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind of timestamp the store accepts)."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """`timestamptz` on Postgres; naive UTC on SQLite, with the zone restored on the way out."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store only accepts timezone-aware times")
        value = value.astimezone(UTC)
        # SQLite has no zone-aware type; naive UTC text sorts in time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Plain JSON on SQLite, JSONB on Postgres (smaller, indexable if an audit query ever needs it).
JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _enum_column_type(enum_cls: type[StrEnum], name: str) -> sa.Enum:
    return sa.Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=20,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    # Deterministic constraint names on every dialect, so later migrations can name what they alter.
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # HMAC key of this tenant's batch callbacks (shown to its admins). After a rotation the previous secret
    # also signs until `previous_callback_secret_until`, so receivers can switch without losing a callback.
    callback_secret: Mapped[str | None] = mapped_column(sa.String(100))
    previous_callback_secret: Mapped[str | None] = mapped_column(sa.String(100))
    previous_callback_secret_until: Mapped[datetime | None]


class ApiKey(Base):
    """An API key. Only the sha256 of the secret is stored; `prefix` is the part shown in listings."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(sa.String(200))
    prefix: Mapped[str] = mapped_column(sa.String(32))
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    role: Mapped[ApiKeyRole] = mapped_column(_enum_column_type(ApiKeyRole, "api_key_role"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class ReviewSession(Base):
    """A review-page sign-in. The cookie carries a random token; only its sha256 is stored. Sign-out, expiry
    and revoking the key end it on the server, whatever copy of the cookie is still around."""

    __tablename__ = "review_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    key_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = (
        # NULL keys are distinct on both dialects, so batches without a key never collide.
        sa.UniqueConstraint("tenant_id", "idempotency_key"),
        sa.Index("ix_batches_tenant_created", "tenant_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[BatchStatus] = mapped_column(_enum_column_type(BatchStatus, "batch_status"))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    # sha256 of the canonical request body: a replayed key with another body is a conflict.
    request_hash: Mapped[str | None] = mapped_column(sa.String(64))
    callback_url: Mapped[str | None] = mapped_column(sa.Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]
    # Set once by whoever wins the right to call callback_url (compare-and-set on NULL).
    callback_sent_at: Mapped[datetime | None]
    # Model calls the workers made for the batch, per stage and kind, e.g. {"pre": {"clip_image": 2}}: what
    # batching across its jobs achieved (None until a stage reports).
    model_calls: Mapped[dict[str, Any] | None]


class Image(Base):
    """An input image, content-addressed: one row per distinct sha256, whichever tenant sent it."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    mime: Mapped[str] = mapped_column(sa.String(100))
    width: Mapped[int]
    height: Mapped[int]
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Blob(Base):
    """Bytes of the database blob backend (the filesystem backend leaves this table empty)."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    mime: Mapped[str] = mapped_column(sa.String(100))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# The partial indexes' predicate, from the lifecycle's one list of active statuses.
_ACTIVE_SQL = f"status IN ({', '.join(repr(str(status)) for status in ACTIVE_JOB_STATUSES)})"


class Job(Base):
    """One image + prompt to evaluate and answer. Parameters and seed are frozen at submission."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.UniqueConstraint("batch_id", "position"),
        sa.UniqueConstraint("batch_id", "custom_id"),
        # Audit listing: a tenant's flagged jobs, newest first, keyset-paginated on (created_at, id).
        sa.Index("ix_jobs_tenant_flagged_created", "tenant_id", "flagged", "created_at", "id"),
        # Job listing of a tenant, newest first.
        sa.Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        # Sweeper: jobs sitting in one status since before a cutoff.
        sa.Index("ix_jobs_status_changed", "status", "status_changed_at"),
        # Counts per status of a batch.
        sa.Index("ix_jobs_batch_status", "batch_id", "status"),
        sa.Index("ix_jobs_image_sha256", "image_sha256"),
        # Audit lookups of a tenant's jobs by the client's own id.
        sa.Index("ix_jobs_tenant_custom_id", "tenant_id", "custom_id"),
        # Retention: only jobs not yet purged, oldest first, so each purge pass reads just what it purges.
        # Sweeper: leases that ran out (a job's worker died mid-stage).
        sa.Index("ix_jobs_lease_expires", "lease_expires_at", postgresql_where=sa.text("lease_expires_at IS NOT NULL"),
                 sqlite_where=sa.text("lease_expires_at IS NOT NULL")),
        # Fair queue order: how many of a tenant's jobs are still in the pipeline.
        sa.Index("ix_jobs_tenant_active", "tenant_id", postgresql_where=sa.text(_ACTIVE_SQL),
                 sqlite_where=sa.text(_ACTIVE_SQL)),
        sa.Index(
            "ix_jobs_unpurged_created",
            "created_at",
            postgresql_where=sa.text("purged_at IS NULL"),
            sqlite_where=sa.text("purged_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("batches.id", ondelete="CASCADE"))
    # Index of the job inside its batch, in request order (NULL for a job submitted on its own).
    position: Mapped[int | None]
    custom_id: Mapped[str | None] = mapped_column(sa.String(255))
    image_sha256: Mapped[str | None] = mapped_column(sa.ForeignKey("images.sha256"))
    prompt: Mapped[str] = mapped_column(sa.Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int] = mapped_column(sa.BigInteger)
    status: Mapped[JobStatus] = mapped_column(_enum_column_type(JobStatus, "job_status"))
    # Any evaluator flagged the input or the output (set by the post-evaluation stage).
    flagged: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # Times the current stage was started (a requeue by the sweeper counts as a new start).
    attempts: Mapped[int] = mapped_column(default=0, server_default=sa.text("0"))
    error_code: Mapped[str | None] = mapped_column(sa.String(64))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # When the job entered its current status, or was last requeued in it (what the sweeper looks at).
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    pre_evaluating_at: Mapped[datetime | None]
    generating_at: Mapped[datetime | None]
    post_evaluating_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # When retention removed the job's image bytes and vanilla answer (scores, answer and verdicts stay).
    purged_at: Mapped[datetime | None]
    # The worker holding the job (running its stage, or handing it to the next one) and until when: the worker
    # pushes the deadline back while it is alive; the sweeper re-sends a job whose deadline passed. NULL: no
    # worker holds it (its message waits in a queue).
    lease_owner: Mapped[str | None] = mapped_column(sa.String(200))
    lease_expires_at: Mapped[datetime | None]
    # The preset whose parameters the job's params were built on (name and the version resolved at submission).
    preset_name: Mapped[str | None] = mapped_column(sa.String(64))
    preset_version: Mapped[int | None]
    # Where the image is fetched from (an image by reference); `image_sha256` is set once its bytes are stored.
    image_url: Mapped[str | None] = mapped_column(sa.Text)


class JobResult(Base):
    """Everything the three stages computed for one job: enough to audit and reproduce the answer.

    One row per job; each stage fills its own columns, and re-running a stage overwrites them.
    """

    __tablename__ = "job_results"

    job_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    # Pre-evaluation: CLIP similarity of the image to the safety prompt (NULL for text-only jobs).
    s_pre: Mapped[float | None] = mapped_column(sa.Double)
    pre_unsafe: Mapped[bool | None]
    tau_pre: Mapped[float | None] = mapped_column(sa.Double)
    # Generation: the vanilla answer (reviewers only), its reward score and the decision to align.
    vanilla_response: Mapped[str | None] = mapped_column(sa.Text)
    s_post: Mapped[float | None] = mapped_column(sa.Double)
    post_unsafe: Mapped[bool | None]
    tau_post: Mapped[float | None] = mapped_column(sa.Double)
    policy: Mapped[str | None] = mapped_column(sa.String(32))
    aligned: Mapped[bool | None]
    response: Mapped[str | None] = mapped_column(sa.Text)
    # Per-sentence alignment trace: candidates, their scores, the choice.
    trace: Mapped[list[Any] | None]
    # Models (id + revision) and parameters in force, and the sha256 of their canonical JSON.
    fingerprint: Mapped[dict[str, Any] | None]
    fingerprint_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    # Post-evaluation: reward score of the final answer, and why the job was flagged.
    s_post_final: Mapped[float | None] = mapped_column(sa.Double)
    flag_reasons: Mapped[list[Any] | None]
    # Milliseconds per stage, e.g. {"pre": 12.5, "generate": 830.1, "post": 40.2}.
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Stage results recorded for the job, redeliveries included: one per stage it went through when every
    # stage ran exactly once (a stale or duplicate message records nothing).
    stage_records: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Review(Base):
    """A reviewer's verdict on a job. A job may collect several; the newest is its review state."""

    __tablename__ = "reviews"
    __table_args__ = (sa.Index("ix_reviews_job_created", "job_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    reviewer_key_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("api_keys.id", ondelete="SET NULL"))
    verdict: Mapped[ReviewVerdict] = mapped_column(_enum_column_type(ReviewVerdict, "review_verdict"))
    note: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Preset(Base):
    """One version of a tenant's named parameter set. Versions are never changed: a PUT adds the next one."""

    __tablename__ = "presets"
    __table_args__ = (sa.UniqueConstraint("tenant_id", "name", "version"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[int]
    # ETA parameters, validated and stored as given (not filled with today's defaults: a job built on the
    # preset freezes the defaults of its own submission).
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    description: Mapped[str | None] = mapped_column(sa.Text)
    created_by_key_id: Mapped[uuid.UUID | None] = mapped_column(sa.ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdminEvent(Base):
    """An administrative action: who (key id, or the operator's CLI), when, what. Append-only (on Postgres a
    trigger refuses UPDATE and DELETE)."""

    __tablename__ = "admin_events"
    __table_args__ = (sa.Index("ix_admin_events_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("tenants.id", ondelete="CASCADE"))
    # The API key that acted; NULL for the operator's command line (`actor` then says so).
    actor_key_id: Mapped[uuid.UUID | None]
    # The key's visible prefix, or `cli`: readable after the key itself is revoked.
    actor: Mapped[str] = mapped_column(sa.String(200))
    action: Mapped[str] = mapped_column(sa.String(64))
    # What was acted on: a key id, `preset@version`, a job id.
    subject: Mapped[str | None] = mapped_column(sa.String(300))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
