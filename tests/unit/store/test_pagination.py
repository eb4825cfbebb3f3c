"""Cursors round-trip and refuse anything they did not produce."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from eta.store.errors import InvalidCursorError
from eta.store.repository.pagination import (
    check_limit,
    decode_position_cursor,
    decode_time_id_cursor,
    encode_position_cursor,
    encode_time_id_cursor,
)


def test_time_id_cursor_round_trip() -> None:
    created_at, row_id = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), uuid.uuid4()
    cursor = encode_time_id_cursor(created_at, row_id)
    assert cursor.isascii() and "=" not in cursor
    assert decode_time_id_cursor(cursor) == (created_at, row_id)


def test_position_cursor_round_trip() -> None:
    assert decode_position_cursor(encode_position_cursor(41)) == 41


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "%%%",
        "bm90IGpzb24",  # "not json"
        encode_position_cursor(3),  # another listing's cursor
        "WyJ0IiwieCIsInkiXQ",  # ["t","x","y"]
        "WyJ0IiwiMjAyNi0wMS0wMVQwMDowMDowMCIsIjAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwIl0",  # naive time
    ],
)
def test_time_id_cursor_refuses_foreign_input(cursor: str) -> None:
    with pytest.raises(InvalidCursorError):
        decode_time_id_cursor(cursor)


@pytest.mark.parametrize("cursor", [encode_time_id_cursor(datetime.now(UTC), uuid.uuid4()), "WyJwIiwiMyJd"])
def test_position_cursor_refuses_foreign_input(cursor: str) -> None:
    with pytest.raises(InvalidCursorError):
        decode_position_cursor(cursor)


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_limit_bounds(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        check_limit(limit)
