"""Model calls per batch: what the workers' batching across jobs achieved, recorded as data."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from eta.store.models import Batch, utcnow


def add_model_calls(*, session: Session, batch_id: uuid.UUID, stage: str, calls: Mapping[str, int]) -> bool:
    """Add one stage message's model calls (kind -> count) to the batch's totals; False if there is no such batch.

    Locks the batch row for the read-merge-write (workers finishing messages of one batch at once queue here
    for one short transaction each).
    """
    current = session.scalar(sa.select(Batch.model_calls).where(Batch.id == batch_id).with_for_update())
    if current is None and session.scalar(sa.select(Batch.id).where(Batch.id == batch_id)) is None:
        return False
    totals: dict[str, Any] = {name: dict(kinds) for name, kinds in (current or {}).items()}
    per_stage = totals.setdefault(stage, {})
    for kind, n in calls.items():
        per_stage[kind] = int(per_stage.get(kind, 0)) + int(n)
    session.execute(sa.update(Batch).where(Batch.id == batch_id).values(model_calls=totals, updated_at=utcnow()))
    return True


def get_model_calls(*, session: Session, batch_id: uuid.UUID) -> dict[str, dict[str, int]]:
    """The batch's model calls per stage and kind (empty before any stage reported)."""
    return dict(session.scalar(sa.select(Batch.model_calls).where(Batch.id == batch_id)) or {})
