"""Per-app state: settings, database sessions, the enqueue function, metrics."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import current_app, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.metrics import ApiMetrics
from eta.settings import Settings

logger = logging.getLogger(__name__)

Enqueue = Callable[[Sequence[uuid.UUID]], None]


@dataclass
class ApiState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    metrics: ApiMetrics
    # Sends committed jobs to the workers; None means the broker of `settings` (see `send_to_workers`).
    enqueue_override: Enqueue | None = None
    _celery: Any = None
    _read_sessions: sessionmaker[Session] | None = None
    _rate_limits: Any = None
    _key_cache: Any = None

    def rate_limits(self) -> Any:
        """This app's `api.ratelimit.RateLimits` (built once, when the app is created)."""
        if self._rate_limits is None:
            from api.ratelimit import RateLimits

            self._rate_limits = RateLimits(self.settings)
        return self._rate_limits

    def key_cache(self) -> Any:
        """This app's `api.auth.KeyCache`."""
        if self._key_cache is None:
            from api.auth import KeyCache

            self._key_cache = KeyCache(self.settings.api.auth_cache_s)
        return self._key_cache

    def celery(self) -> Any:
        """A Celery app for this API's settings, built on first use (the API never loads the models)."""
        if self._celery is None:
            from workers.app import create_celery_app

            self._celery = create_celery_app(self.settings)
        return self._celery

    def enqueue(self, job_ids: Sequence[uuid.UUID], *, ahead: int = 0) -> None:
        """Send the first stage of each job (the workers package owns the message format). `ahead`: the
        tenant's other unfinished jobs (their number orders the queues fairly across tenants)."""
        if self.enqueue_override is not None:
            self.enqueue_override(job_ids)
            return
        from workers.enqueue import enqueue_jobs

        enqueue_jobs(job_ids, app=self.celery(), ahead=ahead)

    def session(self) -> Session:
        """This request's session (one connection checkout per request, shared by auth and the view);
        closed when the request ends."""
        session = g.get("db_session")
        if session is None:
            session = g.db_session = self.sessions()
        return session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """This request's session; commits what the block wrote on success, rolls back on any error."""
        session = self.session()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise

    @contextmanager
    def read(self) -> Iterator[Session]:
        """This request's read-only session (on SQLite its transactions never take the write lock); closed
        when the request ends. A view that writes uses `transaction()`, a session of its own."""
        session = g.get("db_read_session")
        if session is None:
            session = g.db_read_session = self.read_sessions()
        yield session

    def read_sessions(self) -> Session:
        """A new read-only session, for a caller that closes it itself."""
        from eta.store.db import read_only_engine

        if self._read_sessions is None:
            self._read_sessions = sessionmaker(bind=read_only_engine(self.engine), expire_on_commit=False)
        return self._read_sessions()


def close_request_session(_exc: BaseException | None = None) -> None:
    for name in ("db_session", "db_read_session"):
        session = g.pop(name, None)
        if session is not None:
            session.close()


def state() -> ApiState:
    return current_app.extensions["eta"]
