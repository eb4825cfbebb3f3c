"""SQL that differs between the two dialects the store runs on (INSERT ... ON CONFLICT), and row counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.orm import DeclarativeBase, Session


def affected_rows(result: Result[Any]) -> int:
    """Rows matched by an UPDATE or DELETE (or inserted by an INSERT ... ON CONFLICT DO NOTHING)."""
    return int(cast(CursorResult[Any], result).rowcount)


def insert_statement(session: Session, model: type[DeclarativeBase]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT of the session's dialect, which knows ON CONFLICT (and `excluded`)."""
    return _insert(session, model)


def _insert(session: Session, model: type[DeclarativeBase]) -> postgresql.Insert | sqlite.Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"the store supports postgresql and sqlite, not {dialect}")


def insert_ignoring_duplicates(
    session: Session,
    model: type[DeclarativeBase],
    values: Mapping[str, Any],
    *,
    conflict_columns: Sequence[str],
) -> bool:
    """Insert one row unless its key exists; True if this call inserted it.

    Race-safe: two sessions inserting the same key both succeed and exactly one row exists after.
    """
    statement = _insert(session, model).values(**values).on_conflict_do_nothing(index_elements=conflict_columns)
    return affected_rows(session.execute(statement)) == 1


def upsert(
    session: Session,
    model: type[DeclarativeBase],
    values: Mapping[str, Any],
    *,
    conflict_columns: Sequence[str],
    update_columns: Sequence[str],
) -> None:
    """Insert one row, or overwrite `update_columns` of the row with the same key."""
    statement = _insert(session, model).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=conflict_columns,
        set_={name: statement.excluded[name] for name in update_columns},
    )
    session.execute(statement)
