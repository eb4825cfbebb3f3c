"""Per-app state: settings, database sessions, the enqueue function, metrics."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app, g
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.metrics import ApiMetrics
from api.principal import KeyCache
from api.ratelimit import RateLimits
from eta.settings import Settings

if TYPE_CHECKING:
    from workers.enqueue import EtaCelery

logger = logging.getLogger(__name__)

Enqueue = Callable[[Sequence[uuid.UUID]], None]


@dataclass
class ApiState:
    """What every request of one app shares, built whole by the app factory (`api.app.create_app`)."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    metrics: ApiMetrics
    # Per-key and per-address request limits (`api.ratelimit`), and the keys looked up lately (`api.principal`).
    rate_limits: RateLimits
    key_cache: KeyCache
    # The Celery app jobs are enqueued through (built from `settings`; the API never loads the models).
    celery: EtaCelery
    # Read-only sessions (on SQLite their transactions never take the write lock).
    read_only: sessionmaker[Session]
    # Sends committed jobs to the workers instead of `celery` (tests); see `enqueue`.
    enqueue_override: Enqueue | None = None

    @classmethod
    def build(cls, settings: Settings, engine: Engine, *, enqueue: Enqueue | None = None) -> ApiState:
        """Everything an app's requests share, for `settings` and the database of `engine`."""
        from eta.store.db import read_only_engine, session_factory
        from workers.enqueue import client_app

        return cls(settings=settings, engine=engine, sessions=session_factory(engine), metrics=ApiMetrics(),
                   rate_limits=RateLimits(settings), key_cache=KeyCache(settings.api.auth_cache_s),
                   celery=client_app(settings),
                   read_only=sessionmaker(bind=read_only_engine(engine), expire_on_commit=False),
                   enqueue_override=enqueue)

    def enqueue(self, job_ids: Sequence[uuid.UUID], *, ahead: int = 0) -> None:
        """Send the first stage of each job (the workers package owns the message format). `ahead`: the
        tenant's other unfinished jobs (their number orders the queues fairly across tenants)."""
        if self.enqueue_override is not None:
            self.enqueue_override(job_ids)
            return
        from workers.enqueue import enqueue_jobs

        enqueue_jobs(job_ids, app=self.celery, chunk_size=self.settings.workers.chunk_size, ahead=ahead)

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
        return self.read_only()


def close_request_session(_exc: BaseException | None = None) -> None:
    for name in ("db_session", "db_read_session"):
        session = g.pop(name, None)
        if session is not None:
            session.close()


def state() -> ApiState:
    eta_state: ApiState = current_app.extensions["eta"]
    return eta_state
