"""Per-app state: settings, database sessions, the enqueue function, metrics."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from flask import current_app
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.metrics import ApiMetrics
from eta.settings import Settings

logger = logging.getLogger(__name__)

Enqueue = Callable[[Sequence[uuid.UUID]], None]


def default_enqueue(job_ids: Sequence[uuid.UUID]) -> None:
    """Send the first stage of each job to the broker (the workers package owns the message format)."""
    from workers.enqueue import enqueue_jobs

    enqueue_jobs(job_ids)


@dataclass
class ApiState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    enqueue: Enqueue
    metrics: ApiMetrics

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in a transaction that commits on success and rolls back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session


def state() -> ApiState:
    return current_app.extensions["eta"]
