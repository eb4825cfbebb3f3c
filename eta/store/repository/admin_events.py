"""The administrative event log: appended to by the code that performs each action, in its transaction (an
action and its record commit together or not at all); read newest first with keyset pages."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.store.models import AdminEvent, UTCDateTime, utcnow
from eta.store.repository.pagination import Page, check_limit, decode_time_id_cursor, encode_time_id_cursor
from eta.vocabulary import AdminAction

logger = logging.getLogger(__name__)

# Who acted when no API key did: the operator's command line on the server.
CLI_ACTOR = "cli"


def record_admin_event(*, session: Session, tenant_id: uuid.UUID, action: AdminAction | str,
                       actor_key_id: uuid.UUID | None, actor: str, subject: str | None = None,
                       details: Mapping[str, Any] | None = None) -> AdminEvent:
    """Append one event (flushed, not committed: it commits with the action it records)."""
    event = AdminEvent(tenant_id=tenant_id, action=AdminAction(action).value, actor_key_id=actor_key_id,
                       actor=actor[:200], subject=subject[:300] if subject else None, details=dict(details or {}),
                       created_at=utcnow())
    session.add(event)
    session.flush()
    logger.info("tenant %s: %s %s by %s", tenant_id, event.action, subject or "", actor)
    return event


@dataclass(frozen=True)
class AdminEventFilter:
    action: str | None = None
    actor_key_id: uuid.UUID | None = None
    subject: str | None = None
    created_from: datetime | None = None  # inclusive
    created_before: datetime | None = None  # exclusive


def list_admin_events(*, session: Session, tenant_id: uuid.UUID, filters: AdminEventFilter | None = None,
                      limit: int = 100, cursor: str | None = None) -> Page[AdminEvent]:
    """The tenant's events, newest first, keyset-paginated on (created_at, id).

    Raises:
        InvalidCursorError: `cursor` did not come from a listing like this one.
    """
    check_limit(limit)
    f = filters or AdminEventFilter()
    query = sa.select(AdminEvent).where(AdminEvent.tenant_id == tenant_id)
    if f.action is not None:
        query = query.where(AdminEvent.action == f.action)
    if f.actor_key_id is not None:
        query = query.where(AdminEvent.actor_key_id == f.actor_key_id)
    if f.subject is not None:
        query = query.where(AdminEvent.subject == f.subject)
    if f.created_from is not None:
        query = query.where(AdminEvent.created_at >= f.created_from)
    if f.created_before is not None:
        query = query.where(AdminEvent.created_at < f.created_before)
    if cursor is not None:
        after_created_at, after_id = decode_time_id_cursor(cursor)
        query = query.where(sa.tuple_(AdminEvent.created_at, AdminEvent.id) < sa.tuple_(
            sa.literal(after_created_at, UTCDateTime()), sa.literal(after_id, sa.Uuid())))
    rows = session.scalars(query.order_by(AdminEvent.created_at.desc(), AdminEvent.id.desc()).limit(limit + 1)).all()
    items = list(rows[:limit])
    next_cursor = encode_time_id_cursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)
