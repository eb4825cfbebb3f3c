"""Keyset pagination: pages of at most `limit` rows and an opaque cursor to the next one.

A cursor holds the sort key of the last row served, so rows inserted while a client pages through a
listing never shift later pages (no duplicates, no gaps), unlike OFFSET.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from eta.store.errors import InvalidCursorError

T = TypeVar("T")

MAX_PAGE_SIZE = 1000
# Rows are never created outside these times; a cursor beyond them was not written here.
MIN_CURSOR_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_CURSOR_TIME = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    # Pass back as `cursor` for the next page; None on the last page.
    next_cursor: str | None


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    return limit


def _encode(kind: str, values: list[str | int]) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Cursors this module writes are short; anything longer, or nested, was not written here.
MAX_CURSOR_CHARS = 512


def _decode(kind: str, cursor: str) -> list[object]:
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursorError("malformed cursor")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if raw.count(b"[") + raw.count(b"{") > 1:
            raise ValueError("nested")
        decoded = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidCursorError("malformed cursor") from exc
    if not isinstance(decoded, list) or not decoded or decoded[0] != kind:
        raise InvalidCursorError("cursor belongs to another listing")
    return decoded[1:]


def encode_time_id_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """Cursor after the row with this (created_at, id), for listings ordered newest first."""
    return _encode("t", [created_at.isoformat(), row_id.hex])


def decode_time_id_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    values = _decode("t", cursor)
    try:
        created_at_text, id_hex = values
        created_at = datetime.fromisoformat(str(created_at_text))
        row_id = uuid.UUID(hex=str(id_hex))
    except ValueError as exc:
        raise InvalidCursorError("malformed cursor") from exc
    if created_at.tzinfo is None:
        raise InvalidCursorError("malformed cursor")
    try:
        created_at = created_at.astimezone(UTC)
    except OverflowError as exc:  # a zone pushing a date past the calendar's edge
        raise InvalidCursorError("malformed cursor") from exc
    if not MIN_CURSOR_TIME <= created_at <= MAX_CURSOR_TIME:
        raise InvalidCursorError("malformed cursor")
    return created_at, row_id


def encode_position_cursor(position: int) -> str:
    """Cursor after the job at `position` of a batch."""
    return _encode("p", [position])


def decode_position_cursor(cursor: str) -> int:
    values = _decode("p", cursor)
    if len(values) != 1 or not isinstance(values[0], int) or isinstance(values[0], bool):
        raise InvalidCursorError("malformed cursor")
    if not 0 <= values[0] < 2**31:  # a batch position (an INTEGER column)
        raise InvalidCursorError("malformed cursor")
    return values[0]
