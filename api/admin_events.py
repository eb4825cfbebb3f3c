"""The administrative event log, for admin keys: who (key id and prefix, or `cli` for the operator's command
line), when and what (key creation and revocation, callback-secret rotation, preset changes, review
verdicts). Append-only: nothing in the API changes or removes an event."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint
from pydantic import BaseModel, Field
from spectree import Response as Responses

from api.audit.schemas import TimeRange
from api.auth import MANAGE, current_principal, requires
from api.problems import Problem
from api.schemas import Cursor, ProblemOut
from api.spec import spec, validated
from api.state import state
from api.text import SafeText
from eta.store import InvalidCursorError
from eta.store.models import AdminEvent
from eta.store.repository.admin_events import AdminEventFilter, list_admin_events
from eta.vocabulary import AdminAction

logger = logging.getLogger(__name__)

bp = Blueprint("admin_events", __name__, url_prefix="/v1/admin")

_ERRORS = {"HTTP_401": ProblemOut, "HTTP_403": ProblemOut}


class AdminEventQuery(TimeRange):
    action: AdminAction | None = Field(default=None, description="Only events of this kind.")
    actor_key_id: uuid.UUID | None = Field(default=None, description="Only what this key did.")
    subject: SafeText(300) | None = Field(  # type: ignore[valid-type]
        default=None, description="Only events about this subject (a key id, `preset@version`, a job id).")
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: Cursor = Field(default=None, description="`next_cursor` of the previous page.")


class AdminEventOut(BaseModel):
    id: uuid.UUID
    object: Literal["admin_event"] = "admin_event"
    action: AdminAction
    actor_key_id: uuid.UUID | None = Field(description="The key that acted; null for the operator's command line.")
    actor: str = Field(description="The key's visible prefix, or `cli`.")
    subject: str | None
    details: dict[str, Any]
    created_at: datetime


class AdminEventPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdminEventOut]
    next_cursor: str | None


def event_doc(event: AdminEvent) -> dict[str, Any]:
    return {"id": str(event.id), "object": "admin_event", "action": event.action,
            "actor_key_id": str(event.actor_key_id) if event.actor_key_id else None, "actor": event.actor,
            "subject": event.subject, "details": event.details, "created_at": event.created_at.isoformat()}


@bp.get("/events")
@requires(MANAGE)
@spec.validate(query=AdminEventQuery, resp=Responses(HTTP_200=AdminEventPage, HTTP_422=ProblemOut, **_ERRORS),
               tags=["admin"], operation_id="list_admin_events")
def list_events() -> Any:
    """The tenant's administrative events, newest first, keyset-paged (`next_cursor`); admin keys only."""
    query: AdminEventQuery = validated("query")
    filters = AdminEventFilter(action=query.action.value if query.action else None, actor_key_id=query.actor_key_id,
                               subject=query.subject, created_from=query.created_from,
                               created_before=query.created_before)
    with state().read() as session:
        try:
            page = list_admin_events(session=session, tenant_id=current_principal().tenant_id, filters=filters,
                                     limit=query.limit, cursor=query.cursor)
        except InvalidCursorError as exc:
            raise Problem(422, "cursor_invalid", "Invalid cursor", str(exc)) from exc
        return {"object": "list", "data": [event_doc(e) for e in page.items], "next_cursor": page.next_cursor}
