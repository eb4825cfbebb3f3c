"""Persistence: SQLAlchemy models, repository functions, blob storage, schema migrations.

Postgres in production (`DATABASE_URL`), an embedded SQLite file otherwise; the same migrations run on
both. The API and the workers call `check_schema_current(engine)` at start-up.
"""

from __future__ import annotations

from eta.store.blobs import BlobStore, DatabaseBlobStore, FilesystemBlobStore, make_blob_store
from eta.store.db import default_database_url, make_engine, session_factory
from eta.store.errors import (
    BlobNotFoundError,
    IdempotencyConflictError,
    InvalidCursorError,
    InvalidTransitionError,
    SchemaNotCurrentError,
    StoreError,
)
from eta.store.lifecycle import BatchStatus, JobStatus
from eta.store.schema import check_schema_current

__all__ = [
    "BatchStatus",
    "BlobNotFoundError",
    "BlobStore",
    "DatabaseBlobStore",
    "FilesystemBlobStore",
    "IdempotencyConflictError",
    "InvalidCursorError",
    "InvalidTransitionError",
    "JobStatus",
    "SchemaNotCurrentError",
    "StoreError",
    "check_schema_current",
    "default_database_url",
    "make_blob_store",
    "make_engine",
    "session_factory",
]
