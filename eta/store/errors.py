"""Exceptions raised by the persistence layer."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class SchemaNotCurrentError(StoreError):
    """The database schema is not at the revision this code expects (run `eta db upgrade`)."""


class InvalidTransitionError(StoreError, ValueError):
    """A job status change that the lifecycle forbids (backwards, or out of a terminal state)."""


class IdempotencyConflictError(StoreError):
    """An idempotency key was reused with a different request body."""


class InvalidCursorError(StoreError, ValueError):
    """A pagination cursor that this store did not produce, or produced for another ordering."""


class BlobNotFoundError(StoreError, KeyError):
    """No blob is stored under the requested sha256."""
